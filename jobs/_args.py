"""Shared argument parsing for the job entry points."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from raypref.config import Config, load_config

# set by Ray's job supervisor in a submitted job's driver: the job's runtime_env among it
_JOB_CONFIG = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def _in_working_dir(environ) -> bool:
    job = environ.get(_JOB_CONFIG)
    return bool(job and (json.loads(job).get("runtime_env") or {}).get("working_dir"))


# the stages (a job's module name, a sweep's stage) that write an export_dir of their own, outside output_dir
EXPORTS = {"train_reward": "reward", "train_pcclip": "pcclip", "pretrain_t2i": "pretrain.t2i",
           "pretrain_clip": "pretrain.clip"}


def _relative_dirs(cfg: Config, stages) -> list[tuple[str, str]]:
    """(key, value) of the keys that name where ``stages`` write, where the value is a relative path:
    output_dir, and the export_dir of each of them that exports (a section they do not run is not read)."""
    keys = [("output_dir", cfg.output_dir)]
    for section in (EXPORTS[s] for s in stages if s in EXPORTS):
        conf = cfg
        for part in section.split("."):
            conf = getattr(conf, part)
        keys.append((f"{section}.export_dir", conf.export_dir))
    return [(k, v) for k, v in keys if v is not None and not Path(v).is_absolute()]


def check_output_dir(cfg: Config, stages=(), environ=os.environ) -> None:
    """Under `ray job submit` with a working_dir, the driver runs in the job's unpacked copy of it, a
    temporary directory Ray deletes: a relative output_dir, or export_dir of one of the ``stages`` the job
    runs, would be written there (and, on several nodes, on each node's own copy). Refused before anything
    is written."""
    if not _in_working_dir(environ):
        return
    for key, value in _relative_dirs(cfg, stages):
        raise ValueError(f"{key}: {value!r} is relative, and this job runs in its uploaded working_dir, a "
                         "temporary directory Ray deletes; give an absolute path on storage every node mounts, "
                         f"e.g. {key}=/mnt/raypref/{value}")


def check_point_dirs(cfg: Config, environ=os.environ) -> None:
    """check_output_dir for every point of a sweep, for its sweep.stages: sweep.set and the grid may set an
    export_dir too. The error names the point by number and grid keys (sweep.point_label), never by its values."""
    if not _in_working_dir(environ):
        return
    from raypref.sweep import point_configs, point_label

    points = point_configs(cfg)
    for i, (_, point, pcfg) in enumerate(points, 1):
        for key, _ in _relative_dirs(pcfg, cfg.sweep.stages):
            where = "sweep.grid" if key in point else "sweep.set" if key in cfg.sweep.set else "the config"
            raise ValueError(f"{point_label(i, len(points), point)}: {key} (from {where}) is relative, and this job "
                             "runs in its uploaded working_dir, a temporary directory Ray deletes; give an absolute "
                             "path on storage every node mounts, or one under '{point}', the point's own output_dir")


def parse_config(description: str, argv: list[str] | None = None, prog: str | None = None, stages=()) -> Config:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", "-c", default=None, help="YAML config (default: the embedded demo config)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")
    a = p.parse_args(argv)
    cfg = load_config(a.config, a.overrides)
    check_output_dir(cfg, stages)
    return cfg


def run_job(main, description: str, argv: list[str] | None = None) -> None:
    """A job's entry point: parse the config and run ``main`` on it, ending as the raypref CLI does
    (cli.exit_status): a config or input error with its message alone, which names the key, file or row
    and is what a `ray job submit` log should show."""
    import sys

    from raypref.cli import exit_status

    spec = getattr(sys.modules["__main__"], "__spec__", None)
    prog = f"python -m {spec.name}" if spec else None  # not the file name argparse would print
    # jobs.train_reward (or jobs/train_reward.py run as a file) runs train_reward
    stage = spec.name.rsplit(".", 1)[-1] if spec else Path(sys.argv[0]).stem
    sys.exit(exit_status(prog or "job", lambda: main(parse_config(description, argv, prog, [stage]))))
