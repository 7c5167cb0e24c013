"""Plumbing shared by raypref's Ray Train runs: checkpoints, the optimizer's resume, and caching
small training data.

Every checkpoint holds train_state.json (where to resume), metrics.jsonl (every step's metrics
since step 1, so a resumed run's history is whole) and whatever the loop's writer adds. Rank 0
writes; every rank reports, as Ray Train requires.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

STATE_FILE = "train_state.json"
METRICS_FILE = "metrics.jsonl"
REPORT_EVERY = 25  # ray.train.report waits for the controller to poll (~1 s): once a step would throttle training


def load_state(ckpt) -> tuple[dict, list[dict], str | None]:
    """(state, metric history, local checkpoint dir) of the checkpoint to resume from, or empties."""
    if ckpt is None:
        return {}, [], None
    # A private local copy per worker: with to_directory()'s shared default dir, a worker that
    # takes the download lock after another finished copies the files again while that one reads.
    d = tempfile.mkdtemp(prefix="raypref-resume-")
    atexit.register(shutil.rmtree, d, True)
    ckpt.to_directory(d)
    state = json.loads((Path(d) / STATE_FILE).read_text())
    history = [json.loads(x) for x in (Path(d) / METRICS_FILE).read_text().splitlines() if x]
    return state, history, d


def report_step(rank: int, metrics: dict, history: list[dict], state: dict,
                write: Callable[[str], None] | None) -> None:
    """Report this step to Ray Train every REPORT_EVERY steps, or with a checkpoint when ``write``
    is given (rank 0 writes it). Every step's metrics stay in ``history`` all the same; rank 0
    prints a progress line whenever it reports."""
    import ray.train

    step = metrics.get("step", 0)
    if write is None and step % REPORT_EVERY:
        return
    if rank == 0:
        print(json.dumps(metrics), flush=True)
    if write is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if rank == 0:
            write(tmp)
            (Path(tmp) / STATE_FILE).write_text(json.dumps(state))
            (Path(tmp) / METRICS_FILE).write_text("".join(json.dumps(h) + "\n" for h in history))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None)


def fit_and_export(loop, scale, loop_cfg: dict, out: Path, name: str, subdir: str, export: Path,
                   datasets: dict | None = None) -> list[dict]:
    """Run ``loop`` in a TorchTrainer scaled by ``scale`` (num_workers, use_gpu, cpus_per_worker),
    with checkpoints under <out>/ray so that a rerun resumes from them; then copy the final
    checkpoint's ``subdir`` to ``export`` (replacing it) and its metric history to
    <out>/metrics.jsonl. Returns the history."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_cfg,
        scaling_config=ScalingConfig(
            num_workers=scale.num_workers, use_gpu=scale.use_gpu, resources_per_worker={"CPU": scale.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=name, storage_path=str((out / "ray").resolve()), checkpoint_config=CheckpointConfig(num_to_keep=2)
        ),
        datasets=datasets or {},
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{name}: the run finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        if export.exists():
            shutil.rmtree(export)
        shutil.copytree(Path(d) / subdir, export)
        shutil.copy2(Path(d) / METRICS_FILE, out / METRICS_FILE)
    return [json.loads(x) for x in (out / METRICS_FILE).read_text().splitlines() if x]


def first_last_means(values: list[float], n: int = 20) -> list[float] | None:
    """[mean of the first n, mean of the last n]: a loss trend that one noisy step cannot fake."""
    if not values:
        return None
    return [sum(values[:n]) / len(values[:n]), sum(values[-n:]) / len(values[-n:])]


def cosine_adamw(params, lr: float, warmup: int, total: int, ckpt_dir: str | None, step: int,
                 optim_file: str = "optimizer.pt", weight_decay: float = 0.1):
    """AdamW under diffusers' cosine schedule with warmup; resuming from ``ckpt_dir``, the
    optimizer's state comes back and the schedule is replayed to ``step``. (optimizer, schedule)."""
    import torch
    from diffusers.optimization import get_scheduler

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = get_scheduler("cosine", opt, num_warmup_steps=warmup, num_training_steps=total)
    if ckpt_dir is not None:
        opt.load_state_dict(torch.load(Path(ckpt_dir) / optim_file, weights_only=True))
        for _ in range(step):
            sched.step()
    return opt, sched


def parquet_mb(dirs) -> float | None:
    """Size in MiB of the Parquet files under ``dirs``, or None when one is not a local dir."""
    local = [Path(d) for d in dirs]
    if not all(p.exists() for p in local):
        return None
    return sum(f.stat().st_size for p in local for f in p.rglob("*.parquet")) / 2**20


def materialize_if_small(ds, dirs, max_mb: float, share: float = 1.0):
    """``ds`` read once into Ray's object store when the Parquet files under ``dirs`` (local dirs)
    times ``share`` (the part of them the dataset keeps) total under ``max_mb``: each epoch of a
    small dataset would otherwise restart the streaming read. Data not on local disk streams."""
    mb = parquet_mb(dirs)
    return ds.materialize() if mb is not None and mb * share < max_mb else ds

