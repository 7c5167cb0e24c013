"""Ray Data's Parquet reader with 32 footer-reader actors (Ray 2.60's default), 4, 1 (raypref's
default, ``ray.parquet_footer_actors``), and the V1 reader (``ray.data_context.use_datasource_v2: false``).

Every stage reads Parquet with Ray Data. Its V2 reader lists the files in a task that starts
RAY_DATA_PARQUET_FOOTER_NUM_ACTORS footer-reader actors for every read. This script writes a
table of ``--files`` files, then times the same pipeline, read -> map_batches -> write_parquet,
``--repeats`` times under each setting in one local Ray, and prints the median seconds and the
ratio to Ray's default, the baseline, all measured in this run.

    .venv/bin/python benchmarks/parquet_read.py --files 8 --rows 2000 --repeats 5
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SETTINGS = [  # (label, use_datasource_v2, footer actors)
    ("V2, 32 footer actors (Ray's default)", True, 32),
    ("V2, 4 footer actors", True, 4),
    ("V2, 1 footer actor (raypref's default)", True, 1),
    ("V1", False, 1),
]


def write_table(root: Path, files: int, rows: int, image_bytes: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    for f in range(files):
        blobs = [rng.bytes(image_bytes) for _ in range(rows)]
        pq.write_table(pa.table({"pair_id": [f"{f}-{i}" for i in range(rows)], "chosen_image": blobs,
                                 "margin": rng.random(rows)}), root / f"part-{f:03d}.parquet")


def one_run(src: Path, dst: Path) -> float:
    import ray

    t = time.perf_counter()
    ds = ray.data.read_parquet(str(src)).map_batches(lambda b: b, batch_format="pyarrow")
    ds.write_parquet(str(dst))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--rows", type=int, default=2000, help="rows per file")
    ap.add_argument("--image-bytes", type=int, default=1500, help="bytes of each row's image column")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--num-cpus", type=int, default=8)
    args = ap.parse_args()

    import ray
    from ray.data import DataContext

    work = Path(tempfile.mkdtemp(prefix="parquet-read-"))
    started = False  # shut down only the Ray this run started (main() may run inside a process that has one)
    try:
        (work / "src").mkdir()
        write_table(work / "src", args.files, args.rows, args.image_bytes)
        mb = sum(p.stat().st_size for p in (work / "src").iterdir()) / 2**20
        # worker logs stay off: V2 kills its footer actors after each read, and their tracebacks are noise
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        started = True
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        print(f"{args.files} files, {args.files * args.rows} rows, {mb:.1f} MiB; read -> map_batches -> write_parquet, "
              f"median of {args.repeats} after one warm-up, one local Ray of {args.num_cpus} CPUs")
        medians = {}
        for label, v2, actors in SETTINGS:
            ctx.use_datasource_v2 = v2
            # read by the footer indexer when each read is planned, in this process
            os.environ["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] = str(actors)
            times = [one_run(work / "src", work / f"out-{len(medians)}-{i}") for i in range(args.repeats + 1)][1:]
            medians[label] = statistics.median(times)
        base = medians[SETTINGS[0][0]]
        print("| reader | s / run (median) | vs Ray's default |")
        print("|---|---:|---:|")
        for label, s in medians.items():
            print(f"| {label} | {s:.2f} | {s / base:.2f}x |")
    finally:  # a crash, or Ctrl-C, must not leave the table in the temp dir
        if started:
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
