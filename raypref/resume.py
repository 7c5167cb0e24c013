"""What lets a stage resume, and survive a crash: checkpointed writes, outputs put in place whole,
and fingerprints of local model files.

A stage that writes with ``checkpointed`` on skips, on a rerun, every row whose id a finished
block already wrote. ``write_atomic`` and ``swap_in`` put a file or a directory in place whole, so
a crash leaves the earlier one or the new one. A stage that keeps earlier scores records the
fingerprint of each model it scored with, so a model re-exported under the same path is noticed
and scored again.
"""

from __future__ import annotations

import hashlib
import shutil
from contextlib import contextmanager
from pathlib import Path


def is_torn(f: Path) -> bool:
    """Whether a Parquet file's footer cannot be read: a kill cut its write short (Ray Data writes a file
    in place), so none of its rows was checkpointed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(f)
    except (pa.ArrowInvalid, OSError):
        return True
    return False


def set_aside_torn(directory: Path) -> list[Path]:
    """Move the Parquet files under ``directory`` whose footer cannot be read (a kill cut their write
    short: Ray Data writes a file in place) to <directory>.torn/, and say so; returns where they went.
    Their rows were not checkpointed, so the rerun writes them again; left in place, they would stop
    every later read of the directory."""
    directory = Path(directory)
    moved = []
    for f in sorted(directory.rglob("*.parquet")) if directory.is_dir() else []:
        if is_torn(f):
            dest = directory.with_name(directory.name + ".torn") / f.relative_to(directory)
            dest.parent.mkdir(parents=True, exist_ok=True)
            f.replace(dest)
            moved.append(dest)
    if moved:
        print(f"[resume] {len(moved)} file(s) in {directory} a crash left half-written moved to "
              f"{directory.with_name(directory.name + '.torn')}; their rows are written again", flush=True)
    return moved


# Ray Data 2.60 (checkpoint_writer.PENDING_CHECKPOINT_SUFFIX + ".parquet"): spelled out, as importing
# ray.data for it would cost a run that stops before Ray seconds
PENDING = ".pending.parquet"


def uncommitted(output_dir: Path, checkpoint_dir: Path) -> set[Path]:
    """The Parquet files under ``output_dir`` whose block's checkpoint in ``checkpoint_dir`` is still
    pending. Ray Data records a block's ids as <id>.pending.parquet before it writes the block's files
    (named <id>...) and commits them once the files are whole; a rerun deletes such files, whole or not,
    and writes their rows again, so they hold no stored row."""
    checkpoint_dir, output_dir = Path(checkpoint_dir), Path(output_dir)
    ids = tuple(f.name[:-len(PENDING)] for f in checkpoint_dir.glob("*" + PENDING)) if checkpoint_dir.is_dir() else ()
    if not ids or not output_dir.is_dir():
        return set()
    return {f for f in output_dir.rglob("*.parquet") if f.name.startswith(ids)}


FILTER_ACTORS = 1  # Ray Data's checkpoint filter actors on a rerun (build.CHECKPOINT_FILTER_CPUS each)


@contextmanager
def checkpointed(id_column: str, checkpoint_dir: Path, output_dir: Path | None = None):
    """Ray Data checkpointing, keyed on ``id_column`` and kept in ``checkpoint_dir``, for the
    datasets written inside (to ``output_dir``); kept after success, so a finished stage's rerun writes
    nothing again. Files a crash left half-written in either are set aside first (set_aside_torn)."""
    from ray.data import DataContext
    from ray.data.checkpoint import CheckpointConfig

    for d in (checkpoint_dir, output_dir):
        if d is not None:
            set_aside_torn(Path(d))

    ctx = DataContext.get_current()
    before = ctx.checkpoint_config
    config = CheckpointConfig(id_column=id_column, checkpoint_path=str(Path(checkpoint_dir).resolve()),
                              delete_checkpoint_on_success=False)
    # one filter actor, as build.check_pools_fit counts: Ray Data grows the pool to 10 by default, and
    # actors it cannot place behind the stage's pools kept the filter from finishing, so a rerun waited for ever
    config.checkpoint_actor_pool_max_size = FILTER_ACTORS
    ctx.checkpoint_config = config
    try:
        yield
    finally:
        ctx.checkpoint_config = before


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole: beside it first, then renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def put_back(target: Path) -> None:
    """Undo a swap_in a crash cut between its two renames: the earlier ``target``, moved aside to
    <target>.old, goes back in place. Writers call it before they look at what ``target`` holds."""
    old = target.with_name(target.name + ".old")
    if old.is_dir() and not target.exists():
        old.rename(target)


def swap_in(staging: Path, target: Path) -> None:
    """Put the directory ``staging`` in place of ``target`` (which may not exist): the earlier one is
    moved aside (<target>.old) and removed only once the new one is in, so a crash leaves one whole.
    A crash between the two renames leaves the earlier one in <target>.old (see put_back)."""
    put_back(target)
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _local_files(model: str | None) -> tuple[Path, list[Path]] | None:
    """The path ``model`` names and its files (itself, or every file under it), or None where it names
    no local file."""
    if not model:
        return None
    try:
        p = Path(model.removeprefix("local-dir:")).expanduser()
        if not p.exists():
            return None
    except (OSError, ValueError, RuntimeError):  # not a path at all (a long text, a NUL byte, ~user unknown)
        return None
    return p, [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())


def _entry(p: Path, f: Path) -> bytes:
    st = f.stat()
    return f"{f.relative_to(p) if f != p else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()


def _digest(entries) -> str:
    h = hashlib.sha256()
    for e in entries:
        h.update(e)
    return h.hexdigest()[:16]


def _outside(files: list[Path], skip: Path | None) -> list[Path]:
    if skip is None:
        return files
    skip = Path(skip).resolve()
    return [f for f in files if not f.resolve().is_relative_to(skip)]


def fingerprint(model: str | None, skip: Path | None = None) -> str | None:
    """For a local file or directory, a hash of each file's path in it, size and modification time:
    a re-export changes it, without reading gigabytes of weights. None for anything else (a hub
    name, tiny:*, shapes:*), which the settings name as they are. Files under ``skip`` (a stage's own
    output inside the directory) are left out."""
    found = _local_files(model)
    if found is None:
        return None
    p, files = found
    return _digest(_entry(p, f) for f in _outside(files, skip))


def fingerprints(model: str | None, skip: Path | None) -> tuple[str | None, str | None]:
    """(fingerprint(model, skip), fingerprint(model)) from one walk of a directory, each file stat'ed once."""
    found = _local_files(model)
    if found is None:
        return None, None
    p, files = found
    entries = {f: _entry(p, f) for f in files}
    return _digest(entries[f] for f in _outside(files, skip)), _digest(entries.values())


_FILE_FIELDS = ("model", "pretrained", "lora", "unet")  # generator and scorer fields that may name local files
_NOT_READ_BY_ACTORS = {"pool", "weight", "normalize", "value_range"}  # pool sizes and how the build aggregates


def untracked_args(conf) -> tuple[str, ...]:
    """The dotted ``args`` paths (e.g. "http.max_retries") that a generator's or scorer's class lists in
    ``untracked_args``: settings that do not change its output (retries, timeouts, a log it writes)."""
    from raypref.registry import resolve

    return tuple(getattr(resolve(conf.cls), "untracked_args", ()))


def untracked_keys(conf, prefix: str) -> tuple[str, ...]:
    """untracked_args as the dotted keys of a stage's settings record, each under ``prefix`` (the key of
    the conf's args there, e.g. "build.scorers.0.args"): what a stage neither compares nor records."""
    return tuple(f"{prefix}.{a}" for a in untracked_args(conf))


def local_files(conf, skip: Path | None = None) -> dict:
    """The fingerprints of the local files a generator or scorer names: its model, pretrained weights,
    LoRA, UNet, and any ``args`` value that is a path, less its untracked_args.
    Hub names and tiny:*/shapes:* refs name no local file and are left out (their name is in the config)."""
    d = conf.model_dump(mode="json")
    untracked = untracked_args(conf)
    files = {k: fingerprint(d[k], skip) for k in _FILE_FIELDS if isinstance(d.get(k), str)}
    files.update({f"args.{k}": fingerprint(v, skip) for k, v in (d.get("args") or {}).items()
                  if isinstance(v, str) and k not in untracked})
    return {k: v for k, v in files.items() if v}


def actor_settings(conf) -> dict:
    """What decides a generator's or scorer's output: its config, less the pool, the aggregation
    settings its actor never sees and its class's ``untracked_args`` (dotted args paths), with the
    fingerprints of the local files it names (local_files). A stage that compares it with a record
    made before an arg was untracked ignores untracked_keys(conf, "config.args")."""
    d = conf.model_dump(mode="json")
    config = {k: v for k, v in d.items() if k not in _NOT_READ_BY_ACTORS}
    for path in untracked_args(conf):
        *head, last = path.split(".")
        node = config.get("args")
        for h in head:
            node = node.get(h) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return {"config": config, "files": local_files(conf)}
