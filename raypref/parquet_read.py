"""Ray Data Parquet reads, with Ray Data's reader chosen by the input's size.

Ray 2.60's V2 Parquet reader starts a footer-reader actor (a new process) for every read, about
0.8 s on a 2-core machine even for a table of a few rows; the V1 reader starts none but plans
large inputs more slowly (benchmarks/parquet_read.py). Most of a stage's reads are small (prompt
shards, stored groups, a run's pairs), so local inputs under ``ray.v1_read_max_mb`` go through
V1 and everything else through the DataContext's own choice.
"""

from __future__ import annotations

import os
from pathlib import Path

_ENV = "RAYPREF_V1_READ_MAX_MB"  # set in the driver by raypref.session.set_data_context


def parquet_mb(paths, stop_above: float | None = None) -> float | None:
    """Size in MiB of the Parquet files at ``paths`` (files, or dirs searched recursively), or None
    when one is not on local disk. With ``stop_above``, counting stops once the total passes it (a
    table of many files is not walked whole to learn that it is large)."""
    total = 0
    for p in map(Path, [paths] if isinstance(paths, (str, Path)) else paths):
        if "://" in str(p) or not p.exists():
            return None
        for f in [p] if p.is_file() else p.rglob("*.parquet"):
            total += f.stat().st_size
            if stop_above is not None and total > stop_above * 2**20:
                return total / 2**20
    return total / 2**20


def read_parquet(paths, **kwargs):
    """``ray.data.read_parquet(paths, **kwargs)``, through the V1 reader when ``paths`` are local and
    under ``ray.v1_read_max_mb`` in all (the reader is fixed when the dataset is made)."""
    import ray.data
    from ray.data import DataContext

    ctx = DataContext.get_current()
    limit = float(os.environ.get(_ENV, "0") or 0)
    if not (ctx.use_datasource_v2 and limit > 0):
        return ray.data.read_parquet(paths, **kwargs)
    mb = parquet_mb(paths, stop_above=limit)
    if mb is None or mb > limit:
        return ray.data.read_parquet(paths, **kwargs)
    ctx.use_datasource_v2 = False
    try:
        return ray.data.read_parquet(paths, **kwargs)
    finally:
        ctx.use_datasource_v2 = True
