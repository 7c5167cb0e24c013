"""Ray Data Parquet reads, with Ray Data's reader chosen by the input's size.

Ray 2.60's V2 Parquet reader starts a footer-reader actor (a new process) for every read; the V1
reader starts none but plans inputs of many files more slowly. On a 2-core machine read -> map ->
write of a 0.2 MiB table took 1.16 s with V2 and 0.55 s with V1, and of 16 files (46.5 MiB) 1.34 s
and 1.41 s (benchmarks/parquet_read.py). Most of a stage's reads are small (prompt shards, stored
groups, a run's pairs), so local inputs under ``ray.v1_read_max_mb`` go through V1 and everything
else through the DataContext's own choice.
"""

from __future__ import annotations

import os
from pathlib import Path

V1_READ_MAX_MB = 32.0  # RayConf.v1_read_max_mb's default, and the limit where no stage has set one
_ENV = "RAYPREF_V1_READ_MAX_MB"  # set in the driver by raypref.session.set_data_context
# read_parquet arguments V1 does not take, or that name another filesystem than the local disk
_NOT_LOCAL_V1 = ("filesystem", "catalog", "ignore_missing_paths", "skip_paths")


def parquet_mb(paths, stop_above: float | None = None) -> float | None:
    """Size in MiB of the Parquet files at ``paths`` (files, or dirs searched recursively), or None
    when one is not on local disk (or cannot be read). With ``stop_above``, counting stops once the
    total passes it (a table of many files is not walked whole to learn that it is large)."""
    total = 0
    for raw in [paths] if isinstance(paths, (str, Path)) else paths:
        if "://" in str(raw):  # before Path(), which folds 's3://b' into 's3:/b'
            return None
        p = Path(raw)
        if not p.exists():
            return None
        try:
            for f in [p] if p.is_file() else p.rglob("*.parquet"):
                total += f.stat().st_size
                if stop_above is not None and total > stop_above * 2**20:
                    return total / 2**20
        except OSError:  # a file gone while walking, a broken link: Ray Data's listing decides
            return None
    return total / 2**20


def read_parquet(paths, **kwargs):
    """``ray.data.read_parquet(paths, **kwargs)``, through the V1 reader when ``paths`` are local and
    under ``ray.v1_read_max_mb`` in all (the reader is fixed when the dataset is made)."""
    import ray.data
    from ray.data import DataContext

    ctx = DataContext.get_current()
    limit = float(os.environ.get(_ENV) or V1_READ_MAX_MB)
    if not ctx.use_datasource_v2 or limit <= 0 or any(k in kwargs for k in _NOT_LOCAL_V1):
        return ray.data.read_parquet(paths, **kwargs)
    mb = parquet_mb(paths, stop_above=limit)
    if mb is None or mb > limit:
        return ray.data.read_parquet(paths, **kwargs)
    ctx.use_datasource_v2 = False
    try:
        return ray.data.read_parquet(paths, **kwargs)
    finally:
        ctx.use_datasource_v2 = True


def check_columns(names: list[str], needed, key: str, where) -> None:
    """A table at ``where`` (schema ``names``) that lacks a column of ``needed``: an error naming ``key``, the
    table, the columns it lacks and those it has; a training loop that reads one would fail only inside Ray
    Train, in Arrow's words."""
    missing = [c for c in needed if c not in names]
    if missing:
        raise ValueError(f"{key}: {where} has no column(s) {missing} (has {names})")
