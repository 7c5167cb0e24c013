"""Plumbing shared by raypref's Ray Train runs: checkpoints, the optimizer's resume, and caching
small training data.

Every checkpoint holds train_state.json (where to resume), metrics.jsonl (every step's metrics
since step 1, so a resumed run's history is whole; strict JSON, a NaN metric as null) and whatever
the loop's writer adds. Rank 0 writes; every rank reports, as Ray Train requires.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable

from raypref.metrics import strict_json
from raypref.parquet_read import parquet_mb

STATE_FILE = "train_state.json"
METRICS_FILE = "metrics.jsonl"
REPORT_EVERY = 25  # ray.train.report waits for the controller to poll (~1 s): once a step would throttle training


_RESUME_COPIES: list[str] = []  # this worker's private checkpoint copies, removed when its loop ends
COPY_PREFIX = "raypref-resume-"  # + the pid of the worker that made the copy (or the checkpoint it reports)


def remove_orphaned_copies(tmp: Path) -> int:
    """Remove the checkpoint copies in ``tmp`` whose worker is gone without removing its own (Ray
    ends the other workers of a group that failed, or one killed mid-report); returns how many.
    Copies of live workers stay."""
    removed = 0
    for d in tmp.glob(f"{COPY_PREFIX}*-*"):
        pid = d.name[len(COPY_PREFIX):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
            removed += 1
        except PermissionError:  # a live process of another user
            pass
    return removed


def _removing_resume_copies(loop: Callable) -> Callable:
    """``loop``, removing the checkpoint copies it resumed from when it returns or fails. Ray Train
    ends its workers without running atexit, so each resume would otherwise leave a whole
    checkpoint (model and optimizer) in the worker's temp dir."""

    @functools.wraps(loop)
    def run(config):
        # the module's own list, not the copy of it that cloudpickle ships with this closure
        from raypref import train_checkpoint

        try:
            return loop(config)
        finally:
            while train_checkpoint._RESUME_COPIES:
                shutil.rmtree(train_checkpoint._RESUME_COPIES.pop(), ignore_errors=True)

    return run


def history_line(metrics: dict) -> str:
    """One step's metrics as a line of strict JSON, NaN and infinities as null: json.dumps would write
    a bare NaN (a loss over no pair, say), which jq and other strict readers reject."""
    return strict_json(metrics) + "\n"


def read_history(path: Path) -> list[dict]:
    """The steps of a metrics.jsonl, a null metric read back as NaN: the loops and the summaries
    compute with NaN as they had it, and a mean over a None would fail. A step's metrics are flat and
    numeric (every null is a number that was not finite); keep them so."""
    return [{k: float("nan") if v is None else v for k, v in json.loads(x).items()}
            for x in path.read_text().splitlines() if x]


def load_state(ckpt) -> tuple[dict, list[dict], str | None]:
    """(state, metric history, local checkpoint dir) of the checkpoint to resume from, or empties."""
    remove_orphaned_copies(Path(tempfile.gettempdir()))  # a fresh run too: an earlier one's workers may have been ended
    if ckpt is None:
        return {}, [], None
    # A private local copy per worker: with to_directory()'s shared default dir, a worker that
    # takes the download lock after another finished copies the files again while that one reads.
    d = tempfile.mkdtemp(prefix=f"{COPY_PREFIX}{os.getpid()}-")
    _RESUME_COPIES.append(d)
    atexit.register(shutil.rmtree, d, True)  # for a loop run outside fit_and_export
    ckpt.to_directory(d)
    state = json.loads((Path(d) / STATE_FILE).read_text())
    return state, read_history(Path(d) / METRICS_FILE), d


def report_step(rank: int, metrics: dict, history: list[dict], state: dict,
                write: Callable[[str], None] | None) -> None:
    """Report this step to Ray Train every REPORT_EVERY steps, or with a checkpoint when ``write``
    is given (rank 0 writes it). Every step's metrics stay in ``history`` all the same; rank 0
    writes a progress line to stdout whenever it reports."""
    import ray.train

    step = metrics.get("step", 0)
    if write is None and step % REPORT_EVERY:
        return
    if rank == 0:
        # not print(): in a Ray Train worker it is Train's, which logs the line to a console handler and, as
        # Ray has replaced sys.stdout, also prints it, so the driver showed every progress line twice
        sys.stdout.write(history_line(metrics))
        sys.stdout.flush()
    if write is None:
        ray.train.report(metrics)
        return
    # named as the resume copies are: if Ray ends this worker while report() uploads it, the next
    # run's remove_orphaned_copies finds it
    with tempfile.TemporaryDirectory(prefix=f"{COPY_PREFIX}{os.getpid()}-") as tmp:
        if rank == 0:
            write(tmp)
            (Path(tmp) / STATE_FILE).write_text(json.dumps(state))
            (Path(tmp) / METRICS_FILE).write_text("".join(map(history_line, history)))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None)


RUN_FILE = "raypref_run.json"  # beside a Ray Train run's checkpoints: the settings they were trained with
# what a rerun may change and still resume the same run: its budget, its scale and how a step is
# computed (precision, micro-batches, recomputation, the order pairs arrive in), where it exports
# and what it measures; the data, the model and the objective make it another run
RESUMABLE = frozenset({"max_steps", "vae_steps", "unet_steps", "steps", "checkpoint_every", "eval_every",
                       "num_workers", "cpus_per_worker", "use_gpu", "max_failures", "precision", "grad_accum_steps",
                       "gradient_checkpointing", "shuffle_buffer", "prompt_shuffle_buffer", "cache_pairs_max_mb",
                       "cache_samples_max_mb",
                       "export_dir", "eval_images", "comparatives_per_class", "comparative_alpha"})


# the settings that name data dirs, by config section, with their default under <output_dir>: a rerun
# compares the dirs they resolve to, so spelling the default out, or a path another way, is the same data
DATA_DIRS = {"train": {"pairs": "build/pairs", "samples": "build/samples", "refl.pretrain_samples": "build/samples"},
             "reward": {"pairs": "build/pairs"}, "pcclip": {"samples": "build/samples"}}


def data_dirs(value, default: Path) -> list[str]:
    """The dirs a data setting names (None: ``default``; a list: each, in order), resolved as the stages
    resolve them; a URI as it is."""
    given = value if isinstance(value, list) else [value or str(default)]
    return [p if "://" in p else str(Path(p).resolve()) for p in given]


def _spelled_as_recorded(record: Path, section: str, settings: dict, output_dir: Path) -> dict:
    """``settings`` with each DATA_DIRS value that names the same dirs as ``record`` holds spelled as there."""
    if not record.is_file():
        return settings
    recorded = json.loads(record.read_text())
    settings = json.loads(json.dumps(settings))  # a copy: the caller's dict stays as it is
    for key, default in DATA_DIRS.get(section, {}).items():
        *parents, leaf = key.split(".")
        d = settings
        for p in parents:
            d = d.get(p) if isinstance(d, dict) else None
        flat = f"{section}.{key}"
        if isinstance(d, dict) and leaf in d and flat in recorded and recorded[flat] != d[leaf] \
                and data_dirs(recorded[flat], output_dir / default) == data_dirs(d[leaf], output_dir / default):
            d[leaf] = recorded[flat]
    return settings


def guard_resume(out: Path, name: str, section: str, settings: dict, ignore=(), write: bool = True) -> None:
    """Before a training stage writes anything: a rerun resumes the checkpoints under <out>/ray/<name>
    only if they were trained with the same ``settings`` (the config ``section``'s values, less
    RESUMABLE, the keys in ``ignore``, and hflip_swap where hflip is 0, which this run does not read;
    compared with the record less the same keys; the DATA_DIRS keys as the dirs they name, ``out``
    being <output_dir>/<stage>); otherwise it would continue,
    or re-export, another run's model under this config. Records the settings for the next rerun, unless
    not ``write`` (the same refusal, early, writing nothing)."""
    from raypref.config import guard_rerun

    run = out / "ray" / name
    settings = _spelled_as_recorded(run / RUN_FILE, section, settings, out.parent)
    skip = RESUMABLE | set(ignore) | ({"hflip_swap"} if settings.get("hflip") == 0 else set())  # no mirroring: words unread
    # neither recorded nor compared, in an earlier run's record too (it mirrored, or the key was read then)
    guard_rerun(run / RUN_FILE, {section: settings}, any(run.glob("checkpoint_*")),
                f"{name}: {run} holds checkpoints trained with other settings ({{changed}}); a rerun resumes only "
                f"the same run. Use another output_dir, or delete {run} to train from scratch",
                ignore=[f"{section}.{k}" for k in skip], write=write)


def check_workers_fit(scale, datasets: dict, section: str, name: str) -> None:
    """Before Ray Train starts: its workers hold their CPUs for the whole run, and a dataset that is not
    materialised runs Ray Data read tasks (a CPU each) beside them as it is read; on a Ray with fewer CPUs
    than both, the workers wait for ever for their first batch, Ray Data saying only that it is
    backpressured. Measured on a 2-CPU local Ray (Ray 2.60, the tests' tiny configs): pcclip, reward and
    dpo streaming with 2 workers x 1 CPU never reached a step in 180 s, pcclip with 2 x 0.75 neither in
    240 s; with 1 worker each finished, and materialised each finished with 2 workers. Workers that
    alone do not fit (3 x 1) never start: Ray Train retries their start every 60 s without end. Ray
    Train's controller (Train V2, Ray 2.60's default), its dataset manager and Ray Data's split coordinator
    ask for no CPU. With ``use_gpu`` each worker holds a GPU: more workers than GPUs never start either.
    An error on a Ray raypref started here (session.started_here); a warning elsewhere: a joined cluster's
    autoscaler may add nodes. ``section`` names the config keys in the message."""
    import ray
    from ray.data.dataset import MaterializedDataset

    from raypref.build import READ_TASK_CPUS
    from raypref.session import refuse_or_warn

    streamed = sorted(k for k, ds in datasets.items() if not isinstance(ds, MaterializedDataset))
    need = scale.num_workers * scale.cpus_per_worker + (READ_TASK_CPUS if streamed else 0.0)
    resources = ray.cluster_resources()
    have, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if getattr(scale, "use_gpu", False) and scale.num_workers > gpus + 1e-9:
        refuse_or_warn(f"{name}: {section}.use_gpu gives each of the {section}.num_workers = {scale.num_workers} "
                       f"workers a GPU, where this Ray has {gpus:g}: they would never start, and Ray Train would "
                       f"wait for them for ever. Lower {section}.num_workers, or set {section}.use_gpu=false")
    if need <= have + 1e-9:
        return
    workers = (f"{section}.num_workers x {section}.cpus_per_worker = {scale.num_workers} x "
               f"{scale.cpus_per_worker:g}")
    if streamed:
        what = (f"the training workers and the data they stream need {need:g} CPUs at once ({workers}, and a "
                f"read task {READ_TASK_CPUS:g} for the dataset{'s' * (len(streamed) > 1)} {', '.join(streamed)}, "
                f"read from the files as training goes) where this Ray has {have:g}: the workers would wait for "
                "ever for data")
    else:
        what = (f"the training workers need {need:g} CPUs at once ({workers}) where this Ray has {have:g}: "
                "they would never start, and Ray Train would wait for them for ever")
    cache = [f"{section}.{k}" for k in getattr(type(scale), "model_fields", {})
             if k.startswith("cache_") and k.endswith("_max_mb")]
    msg = (f"{name}: {what}. Lower {section}.num_workers or {section}.cpus_per_worker (fractions are fine), or "
           "raise ray.num_cpus (logical slots: more than the machine's cores oversubscribes it, as the shipped "
           "configs do)" + (f"; or, for data on local disk, raise {cache[0]} above its size, so that it is read once "
                            "into Ray's object store" if streamed and cache else ""))
    refuse_or_warn(msg)


def ingest_options():
    """Ray Data's options for the training datasets' shards: what Ray Train's DataConfig.default_ingest_options
    reads from this driver's DataContext, less ``exclude_resources``. Ray 2.60's default copies that field through
    its deprecated setter, so Ray Train without a dataset_config warned "ExecutionOptions.exclude_resources is
    deprecated" in every run with datasets; raypref never sets it, and label_selector replaces it."""
    from ray.data import DataContext, ExecutionOptions

    now = DataContext.get_current().execution_options
    return ExecutionOptions(resource_limits=now.resource_limits, preserve_order=now.preserve_order,
                            verbose_progress=now.verbose_progress)


def fit_and_export(loop, scale, loop_cfg: dict, out: Path, name: str, subdir: str, export: Path,
                   datasets: dict | None = None, *, section: str) -> list[dict]:
    """Run ``loop`` in a TorchTrainer scaled by ``scale`` (num_workers, use_gpu, cpus_per_worker; max_failures
    restarts from the latest checkpoint),
    with checkpoints under <out>/ray so that a rerun resumes from them; then copy the final
    checkpoint's ``subdir`` to ``export`` (replacing it) and its metric history to
    <out>/metrics.jsonl. Returns the history. ``section``: the config section ``scale`` is, which
    check_workers_fit's message names."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    check_export_dir(export, out.parent)  # before training, not after it
    warn_if_another_run(export, name, "export_dir" in getattr(type(scale), "model_fields", {}))
    check_workers_fit(scale, datasets or {}, section, name)

    trainer = TorchTrainer(
        _removing_resume_copies(loop),
        train_loop_config=loop_cfg,
        scaling_config=ScalingConfig(
            num_workers=scale.num_workers, use_gpu=scale.use_gpu, resources_per_worker={"CPU": scale.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=name, storage_path=str((out / "ray").resolve()), checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=getattr(scale, "max_failures", 0)),
        ),
        datasets=datasets or {},
        dataset_config=DataConfig(execution_options=ingest_options()),
    )
    try:
        result = trainer.fit()
    except TrainingFailedError as e:  # a worker's input error (bad rows, a bad key) reads as the CLI's other errors
        bad = [(r, x) for r, x in sorted(getattr(e, "worker_failures", {}).items())
               if isinstance(x, (ValueError, FileNotFoundError))]
        if not bad:
            raise
        raise ValueError(f"{name}, worker {bad[0][0]}: {bad[0][1]}") from e
    if result.checkpoint is None:
        raise RuntimeError(f"{name}: the run finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        export_dir(Path(d) / subdir, export, out.parent, name)
        shutil.copy2(Path(d) / METRICS_FILE, out / METRICS_FILE)
    return read_history(out / METRICS_FILE)


EXPORT_MARK = ".raypref-export"  # in every export dir: a re-export may replace it, and no other dir; names the run


def exported_by(export: Path) -> str | None:
    """The run (dpo, sft, refl, reward, ...) whose export ``export`` holds, as its EXPORT_MARK records it;
    None where there is no mark or it records no run (an export from before the record)."""
    try:
        mark = json.loads((export / EXPORT_MARK).read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):  # ValueError: an earlier mark, a line of text
        return None
    return mark.get("run") if isinstance(mark, dict) else None


def warn_if_another_run(export: Path, name: str, has_export_dir: bool) -> None:
    """Say so before training when ``export`` holds another run's export, which this ``name`` run's
    will replace: the train methods share <output_dir>/train/lora (or unet), and what reads it (eval)
    would then get the last method's model."""
    other = exported_by(export)
    if other is None or other == name:
        return
    print(f"[train] warning: {export} holds the {other} run's export; this {name} run replaces it when it "
          f"finishes, so what loads it afterwards (raypref eval, a scorer) gets the {name} model. To keep "
          f"both, copy {export} elsewhere first, or run {name} with another output_dir"
          + (" or export_dir" if has_export_dir else ""), flush=True)


def check_export_dir(export: Path, run_root: Path, key: str = "export_dir") -> None:
    """A directory that is not empty may be replaced by an export only if raypref exported it (it
    holds EXPORT_MARK) or it lies under ``run_root`` (the run's own dirs): never a user's folder.
    ``key`` names the setting in the error."""
    export = export.resolve()
    if export.exists() and any(export.iterdir()) and not (export / EXPORT_MARK).exists() \
            and not export.is_relative_to(run_root.resolve()):
        raise ValueError(f"{key}: {export} is a directory raypref did not export to, and it is not empty; "
                         "name a new or empty directory")


def _same_file(a: Path, b: Path) -> bool:
    """Byte for byte, or for safetensors the same tensors: a finished run's rerun saves the same weights
    under other header metadata."""
    import filecmp

    if filecmp.cmp(a, b, shallow=False):
        return True
    if a.suffix != ".safetensors":
        return False
    import torch
    from safetensors import safe_open

    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        keys = set(fa.keys())
        return keys == set(fb.keys()) and all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in keys)


def _same_export(src: Path, export: Path) -> bool:
    """Whether ``export`` already holds ``src``'s files (_same_file), its mark aside."""
    if not (export / EXPORT_MARK).is_file():
        return False
    mine = sorted(f.relative_to(src) for f in src.rglob("*") if f.is_file())
    theirs = sorted(f.relative_to(export) for f in export.rglob("*") if f.is_file() and f.name != EXPORT_MARK)
    return mine == theirs and all(_same_file(src / f, export / f) for f in mine)


def export_dir(src: Path, export: Path, run_root: Path, run: str | None = None) -> None:
    """Copy ``src`` to ``export`` (see check_export_dir), replacing an earlier export whole: the new
    copy is made beside it and renamed into place, so a crash leaves the old export or the new one,
    never a mix or nothing. Its EXPORT_MARK records ``run``, the run exporting. An export that already
    holds the same files is left as it is: a rerun of a finished run changes nothing, so what scored
    it (eval, accuracy: they key on the files' times) keeps its scores."""
    from raypref.resume import swap_in

    check_export_dir(export, run_root)
    export = export.resolve()
    if _same_export(src, export):
        print(f"[train] {export} already holds these weights; left as it is", flush=True)
        return
    new = export.with_name(export.name + ".new")
    shutil.rmtree(new, ignore_errors=True)  # from a crash mid-export
    shutil.copytree(src, new)
    (new / EXPORT_MARK).write_text(json.dumps({"exported_by": "raypref", "run": run,
                                               "note": "a re-export replaces this directory"}) + "\n")
    swap_in(new, export)


TREND_STEPS = 20  # first_last_means' window


def first_last_means(values: list[float], n: int = TREND_STEPS) -> list[float] | None:
    """[mean of the first n, mean of the last n] (of all, where fewer): a loss trend that one noisy step
    cannot fake."""
    if not values:
        return None
    return [sum(values[:n]) / len(values[:n]), sum(values[-n:]) / len(values[-n:])]


def mean_of(steps: int) -> str:
    """What each of first_last_means' two numbers averages, in a run of ``steps`` steps (for summary lines)."""
    n = min(TREND_STEPS, steps)
    return f"mean of {n} step{'s' * (n != 1)}"


def scheduled_optimizer(params, lr: float, schedule: str, warmup: int, total: int, ckpt_dir: str | None, step: int,
                        optim_file: str = "optimizer.pt", kind: str = "adamw", weight_decay: float = 0.01):
    """An optimizer (``kind``: torch's AdamW, or transformers' Adafactor at a fixed learning rate, as
    Wallace et al. run it for SDXL) under one of diffusers' learning-rate schedules; resuming from
    ``ckpt_dir``, the optimizer's state comes back and the schedule is replayed to ``step``.
    (optimizer, schedule)."""
    import torch
    from diffusers.optimization import get_scheduler

    if kind == "adafactor":
        from transformers.optimization import Adafactor

        opt = Adafactor(params, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False,
                        clip_threshold=1.0, weight_decay=weight_decay)
    elif kind == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer: {kind!r} is not one of adamw, adafactor")
    sched = get_scheduler(schedule, opt, num_warmup_steps=warmup, num_training_steps=total)
    if ckpt_dir is not None:
        # read onto the CPU: load_state_dict moves each state to its parameter's device (a checkpoint written on a
        # GPU resumes on a CPU, and GPU workers of one node do not all read onto cuda:0)
        opt.load_state_dict(torch.load(Path(ckpt_dir) / optim_file, map_location="cpu", weights_only=True))
        with warnings.catch_warnings():  # torch warns of a schedule stepped before its optimizer: here on purpose
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            for _ in range(step):  # the schedule is a function of the step
                sched.step()
    return opt, sched


def cosine_adamw(params, lr: float, warmup: int, total: int, ckpt_dir: str | None, step: int,
                 optim_file: str = "optimizer.pt", weight_decay: float = 0.1):
    """AdamW under diffusers' cosine schedule with warmup (scheduled_optimizer). (optimizer, schedule)."""
    return scheduled_optimizer(params, lr, "cosine", warmup, total, ckpt_dir, step, optim_file, "adamw", weight_decay)


def materialize_if_small(ds, dirs, max_mb: float, share: float = 1.0):
    """``ds`` read once into Ray's object store when the Parquet files under ``dirs`` (local dirs)
    times ``share`` (the part of them the dataset keeps) total under ``max_mb``: each epoch of a
    small dataset would otherwise restart the streaming read. Data not on local disk streams."""
    mb = parquet_mb(dirs)
    return ds.materialize() if mb is not None and mb * share < max_mb else ds



def check_rows_per_worker(rows: int, what: str, workers: int, key: str, per_worker: int = 1, why: str = "") -> None:
    """Before Ray Train starts: it gives each worker an equal share of a dataset (the remainder is
    left out), and a worker whose share is under ``per_worker`` rows would fail only once it runs."""
    share = rows // max(workers, 1)
    if share < per_worker:
        fix = f"lower {key}, or train on more data" if workers > 1 else "train on more data"
        need = f"{per_worker} rows" if per_worker > 1 else "one row"
        raise ValueError(f"{key}={workers}: {rows} {what} give each worker {share}, and each needs at least "
                         f"{need}{why}; {fix}")
