"""Import and export between raypref's pairs table and public preference datasets.

| fmt            | layout                                                            | ties                         |
|----------------|-------------------------------------------------------------------|------------------------------|
| raypref        | directory of Parquet files in the pairs schema                    | label 0.5                    |
| pickapic       | Pick-a-Pic v2 Parquet: caption, jpg_0, jpg_1, label_0, label_1 ...| label_0 = 0.5                |
| hpdv2          | HPD v2 train.json / test.json + image files                       | equal 'rank' (test layout)   |
| imagereward_db | ImageRewardDB per-image JSON records + image files, by prompt_id  | equal 'rank'                 |
| agfsync        | AGFSync Parquet: caption, good_jpg, bad_jpg                       | none (not representable)     |

Every reader yields pairs-schema tables (scores null, label 1.0 or 0.5, label_source
'human:<fmt>' or 'ai:agfsync'); rankings of k images expand to k(k-1)/2 pairs. Rows that cannot
be used go to a ``Quarantine`` (stage, row = file + index or key, reason), never silently
dropped; a file that is not the format at all (a required column missing) raises FormatError
naming the file and the column. Each module's docstring records what of its layout was verified
against the dataset's card or the code that reads it, and what was not.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from raypref import schema as S
from raypref.formats import agfsync, hpdv2, imagereward_db, pickapic, raypref_pairs
from raypref.formats._common import DEFAULT_BATCH_ROWS, FormatError, Quarantine, concat
from raypref.resume import fingerprint, fingerprints

FORMATS = {
    "raypref": raypref_pairs,
    "pickapic": pickapic,
    "hpdv2": hpdv2,
    "imagereward_db": imagereward_db,
    "agfsync": agfsync,
}

__all__ = ["FORMATS", "FormatError", "Quarantine", "check_format", "check_input", "convert", "first_pairs",
           "input_fingerprint", "input_fingerprints", "iter_pairs", "read_options", "read_pairs", "source_paths", "with_progress", "write_pairs"]


def _module(fmt: str):
    try:
        return FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown pairs format {fmt!r} (known: {sorted(FORMATS)})") from None


def check_input(path, fmt: str) -> None:
    """A look at a dataset before a stage starts Ray, reading no rows: every file's footer has the format's
    columns (Parquet) or a JSON's first records the format's keys; FormatError naming the file and what
    is missing otherwise."""
    _module(fmt).check(path)


def check_format(path, fmt: str, path_key: str, format_key: str) -> None:
    """check_input for a stage, its error naming the config keys that set the path and the format."""
    try:
        check_input(path, fmt)
    except FormatError as e:
        raise FormatError(f"{format_key}: {path_key} does not read as {fmt!r}: {e}") from None


def read_options(fmt: str, opts: dict) -> dict:
    """``opts`` if the reader of ``fmt`` takes them all (HPD v2's image_root), else a ValueError naming
    the first it does not take: an option no reader looks at would be silently ignored."""
    takes = inspect.signature(_module(fmt).iter_read).parameters
    bad = [k for k in opts if k in ("quarantine", "batch_rows") or k not in takes]
    if bad:
        raise ValueError(f"{fmt}: its reader takes no option {bad[0]!r}")
    return opts


def source_paths(path, fmt: str, **opts) -> list[Path]:
    """What a read of ``path`` (with reader options ``opts``) opens: for HPD v2 and ImageRewardDB each
    JSON and the image files its records name (as the reader resolves them); else the input itself,
    a file or a folder read whole."""
    m = _module(fmt)
    read_options(fmt, opts)
    return m.source_paths(path, **opts) if hasattr(m, "source_paths") else [Path(path)]


def _skip(path, stage_dir, output_dir) -> Path | None:
    """What a fingerprint of an input folder walked whole leaves out: the run's ``output_dir``, else the
    stage's ``stage_dir``, unless the input lies in it."""
    here = Path(path).resolve()
    return next((Path(d) for d in (output_dir, stage_dir) if d is not None and not here.is_relative_to(Path(d).resolve())),
                None)


def input_fingerprints(path, fmt: str, stage_dir=None, output_dir=None, **opts) -> tuple[str | None, str | None]:
    """(input_fingerprint, resume.fingerprint of ``path`` alone: what a record made before every file
    the format reads was counted holds). A folder read whole is walked once for both."""
    m = _module(fmt)
    if hasattr(m, "source_paths"):
        return input_fingerprint(path, fmt, stage_dir, output_dir, **opts), fingerprint(str(path))
    read_options(fmt, opts)
    return fingerprints(str(path), _skip(path, stage_dir, output_dir))


def input_fingerprint(path, fmt: str, stage_dir=None, output_dir=None, **opts) -> str | None:
    """A hash of the path, size and modification time of every file a read of ``path`` (with reader
    options ``opts``, e.g. an HPD v2 image_root) opens (stat only, so cheap on a large image folder):
    a file fixed, added or removed in place changes it. Where the input is a folder walked whole, the
    run's ``output_dir`` (else the stage's own ``stage_dir``) is left out unless the input lies in it:
    a stage's writes are no change to it."""
    m = _module(fmt)
    read_options(fmt, opts)
    if not hasattr(m, "source_paths"):  # its own fingerprint, as records made before this hold
        return fingerprint(str(path), _skip(path, stage_dir, output_dir))
    h = hashlib.sha256()
    for f in m.source_paths(path, **opts):
        try:
            st = f.stat()
            h.update(f"{f.absolute()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except FileNotFoundError:  # named but absent: one put there later changes the hash
            h.update(f"{f.absolute()}\0-\n".encode())
    return h.hexdigest()[:16]


def iter_pairs(path, fmt: str, quarantine: Quarantine | None = None, batch_rows: int = DEFAULT_BATCH_ROWS,
               **opts) -> Iterator[pa.Table]:
    """Stream a dataset as pairs tables of about ``batch_rows`` rows each (bad rows to ``quarantine``)."""
    return _module(fmt).iter_read(path, quarantine, batch_rows=batch_rows, **read_options(fmt, opts))


def with_progress(tables: Iterator[pa.Table], desc: str, quarantine: Quarantine | None = None) -> Iterator[pa.Table]:
    """``tables`` passed through under a bar of the pairs read (and set aside) so far: an import
    test-decodes every image, which takes a while on a large dataset."""
    from tqdm import tqdm

    with tqdm(desc=desc, unit=" pairs") as bar:
        for t in tables:
            bar.update(t.num_rows)
            if quarantine is not None:
                bar.set_postfix(quarantined=len(quarantine), refresh=False)
            yield t


def first_pairs(path, fmt: str, quarantine: Quarantine, limit: int | None, desc: str, **opts) -> Iterator[pa.Table]:
    """The first ``limit`` pairs of a dataset (all of them for None), read with reader options
    ``opts``, as non-empty tables, under a progress bar (``desc``), each pair numbered by its place
    among them in import_row: what relabel and the accuracy harness import, and the key they resume by."""
    left, row = limit, 0
    for t in with_progress(iter_pairs(path, fmt, quarantine, **opts), desc, quarantine):
        if left is not None:
            t = t.slice(0, left)
            left -= t.num_rows
        if t.num_rows:
            if S.IMPORT_ROW in t.column_names:  # pairs a relabel wrote: their rows in its import, not in this one
                t = t.drop_columns([S.IMPORT_ROW])
            yield t.append_column(S.IMPORT_ROW, pa.array(np.arange(row, row + t.num_rows, dtype=np.int64)))
            row += t.num_rows
        if left == 0:
            return


def read_pairs(path, fmt: str, quarantine: Quarantine | None = None, **opts) -> pa.Table:
    """Read a dataset in format ``fmt`` as one raypref pairs table. Unusable rows go to
    ``quarantine``; without one they are counted and logged as a warning."""
    q = quarantine if quarantine is not None else Quarantine(f"import:{fmt}")
    table = concat(iter_pairs(path, fmt, q, **opts))
    if quarantine is None:
        q.warn_if_any(f"read_pairs({path}, {fmt!r})")
    return table


def write_pairs(table, path, fmt: str, quarantine: Quarantine | None = None, **opts) -> int:
    """Write a pairs table (or an iterable of them) in format ``fmt``; returns the pairs written.
    Pairs the format cannot hold (a tie in AGFSync or HPD v2's train layout) go to ``quarantine``;
    without one they are counted and logged as a warning."""
    q = quarantine if quarantine is not None else Quarantine(f"export:{fmt}")
    n = _module(fmt).write(table, path, q, **opts)
    if quarantine is None:
        q.warn_if_any(f"write_pairs({path}, {fmt!r})")
    return n


def quarantine_path(dst) -> Path:
    """Where a conversion's quarantine goes: next to its output, <dst>.quarantine.parquet."""
    p = Path(dst)
    return p.with_name(p.name + ".quarantine.parquet")


def convert(src, src_fmt: str, dst, dst_fmt: str, read_opts: dict | None = None, write_opts: dict | None = None,
            batch_rows: int = DEFAULT_BATCH_ROWS) -> dict:
    """Stream ``src`` (format ``src_fmt``) into ``dst`` (format ``dst_fmt``), batch by batch; the rows
    neither side could use are written to <dst>.quarantine.parquet. Returns counts."""
    q_in, q_out = Quarantine(f"import:{src_fmt}"), Quarantine(f"export:{dst_fmt}")
    n = write_pairs(iter_pairs(src, src_fmt, q_in, batch_rows=batch_rows, **(read_opts or {})), dst, dst_fmt, q_out,
                    **(write_opts or {}))
    q_in.extend(q_out)
    where = q_in.write(quarantine_path(dst))
    return {"pairs_written": n, "quarantined": len(q_in), "quarantined_by_reason": q_in.counts(), "quarantine": str(where)}
