"""Checkpoint plumbing shared by raypref's Ray Train loops.

Every checkpoint holds train_state.json (where to resume), metrics.jsonl (every step's metrics
since step 1, so a resumed run's history is whole) and whatever the loop's writer adds. Rank 0
writes; every rank reports, as Ray Train requires.
"""

from __future__ import annotations

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
    d = ckpt.to_directory()  # a local copy that outlives this call, whatever the storage
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


def fit(loop, loop_cfg: dict, out: Path, name: str, num_workers: int, use_gpu: bool, cpus_per_worker: float,
        datasets: dict | None = None):
    """Run ``loop`` in a TorchTrainer whose checkpoints go to <out>/ray; a rerun resumes from them."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_cfg,
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=RunConfig(
            name=name, storage_path=str((out / "ray").resolve()), checkpoint_config=CheckpointConfig(num_to_keep=2)
        ),
        datasets=datasets or {},
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{name}: the run finished without a checkpoint")
    return result


def export_from_checkpoint(result, subdir: str, export: Path, out: Path) -> list[dict]:
    """Copy <checkpoint>/<subdir> to ``export`` (replacing it) and the metric history to
    <out>/metrics.jsonl; return the history."""
    with result.checkpoint.as_directory() as d:
        if export.exists():
            shutil.rmtree(export)
        shutil.copytree(Path(d) / subdir, export)
        shutil.copy2(Path(d) / METRICS_FILE, out / METRICS_FILE)
    return [json.loads(x) for x in (out / METRICS_FILE).read_text().splitlines() if x]
