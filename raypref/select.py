"""Exact global top-p selection of preference pairs by a quality metric, streaming over shards.

``rank_pairs`` computes a quality metric (``raypref.quality``) for every pair of a Parquet
dataset of any number of shards, keeps exactly the best K = ceil(p * n_valid) pairs over the
WHOLE dataset (n_valid: pairs whose quality is not NaN), and writes them, quality filled in.

Order (a strict total order, so "the best K" is one well-defined set):
    quality descending, then chosen_id, rejected_id ascending (byte order), then shard, row.
Quality is compared as stored (float32), so sorting the output by these keys reproduces the
ranking. Ties at the cut are broken by the ids, so exactly K pairs are kept and the choice does
not depend on how the data is split into shards; (shard, row) only orders exact duplicate pairs.
NaN quality is never selected and is counted. p = 1 keeps every valid pair; any p > 0 keeps at
least one pair when there is one; K = 0 only when no pair has a valid quality.

Streaming, memory bounded (O(K) for the ranking, one batch of rows for the data):
  0. count rows from the Parquet footers (no data read);
  1. stream the metric's input columns and the id keys shard by shard; keep the best
     K_max = ceil(p * n_rows) candidates (quality, ids, shard, row) in a buffer merged now and
     then; rows that cannot beat the buffer's current K_max-th are dropped at once. After the
     pass, n_valid is known and the K-th candidate is the exact cut;
  2. stream the shards again, recompute the metric (it is row-wise and deterministic), write
     the rows at or above the cut. The kept count is checked against K.
Batches are sized from the footers' uncompressed column sizes to about ``batch_mb`` each.

Why in-process pyarrow and not Ray Data: the global cut is one O(K) reduction that needs every
pair's quality; the metric is vectorised numpy (tens of ns a pair), so the cost is Parquet
decoding, which pyarrow already runs on all cores of the machine. A Ray Data map would move
every batch through the object store to get the same numbers back to one place. On a cluster
with thousands of shards on object storage, pass 2 (filter each shard by a known cut, write it)
is the embarrassingly parallel part to spread as one Ray task per shard.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raypref import quality as Q
from raypref import schema as S
from raypref.metrics import json_text
from raypref.resume import put_back, swap_in

_SHARD, _ROW, _Q = "_shard", "_row", "_quality"
ORDER = [(_Q, "descending"), (S.CHOSEN_ID, "ascending"), (S.REJECTED_ID, "ascending"), (_SHARD, "ascending"), (_ROW, "ascending")]
MAX_BATCH_ROWS = 1 << 20
MIN_MERGE_ROWS = 1 << 16


@dataclass(frozen=True)
class Cut:
    """The K-th best pair in the order above: a pair is kept iff it is at or above it."""

    quality: float
    chosen_id: str
    rejected_id: str
    shard: int
    row: int


def top_k_count(top_p: float, n: int) -> int:
    """K = ceil(p * n), computed on the decimal value of p (0.0533 * 10000 is 533, not 534)."""
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"rank.top_p must be in (0, 1], got {top_p}")
    return math.ceil(Fraction(repr(float(top_p))) * n)  # the top p% (OpenReview YfxGcOjpiJ keeps p = 5.33%)


def rank_value(q: np.ndarray) -> np.ndarray:
    """The value pairs are ranked by: the quality as the pairs table stores it (float32)."""
    return np.asarray(q, dtype=np.float64).astype(np.float32)


def _ids(batch, name: str) -> pa.Array:
    col = batch.column(name)
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return pc.fill_null(col.cast(pa.string()), "")


def beats(q32: np.ndarray, chosen: pa.Array, rejected: pa.Array, shard: int, rows: np.ndarray, cut: Cut, or_equal: bool) -> np.ndarray:
    """Rows ordered before ``cut`` (or equal to it, with ``or_equal``); NaN never is."""
    out = q32 > np.float32(cut.quality)
    tied = np.flatnonzero(q32 == np.float32(cut.quality))
    if tied.size:
        idx = pa.array(tied)
        c, r = chosen.take(idx), rejected.take(idx)
        tr = rows[tied]
        pos = (tr <= cut.row) if or_equal else (tr < cut.row)
        pos = (shard < cut.shard) | ((shard == cut.shard) & pos)
        c_lt = pc.less(c, cut.chosen_id).to_numpy(zero_copy_only=False)
        c_eq = pc.equal(c, cut.chosen_id).to_numpy(zero_copy_only=False)
        r_lt = pc.less(r, cut.rejected_id).to_numpy(zero_copy_only=False)
        r_eq = pc.equal(r, cut.rejected_id).to_numpy(zero_copy_only=False)
        out[tied] = c_lt | (c_eq & (r_lt | (r_eq & pos)))
    return out


class TopK:
    """The best ``k`` candidates seen so far, in ORDER, with a buffer merged when it is full."""

    def __init__(self, k: int):
        self.k = k
        self.best: pa.Table | None = None
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.cut: Cut | None = None  # the k-th best so far, once there are k

    def offer(self, q32, chosen, rejected, shard: int, rows: np.ndarray) -> None:
        mask = ~np.isnan(q32)
        if self.cut is not None:
            mask &= beats(q32, chosen, rejected, shard, rows, self.cut, or_equal=False)
        idx = np.flatnonzero(mask)
        if not idx.size or self.k == 0:
            return
        take = pa.array(idx)
        self.pending.append(
            pa.table(
                {
                    _Q: pa.array(q32[idx]),
                    S.CHOSEN_ID: chosen.take(take),
                    S.REJECTED_ID: rejected.take(take),
                    _SHARD: pa.array(np.full(idx.size, shard, np.int32)),
                    _ROW: pa.array(rows[idx]),
                }
            )
        )
        self.pending_rows += idx.size
        if self.pending_rows >= max(self.k, MIN_MERGE_ROWS):
            self.merge()

    def merge(self) -> None:
        if not self.pending:
            return
        t = pa.concat_tables(([self.best] if self.best is not None else []) + self.pending)
        self.pending, self.pending_rows = [], 0
        order = pc.sort_indices(t, sort_keys=ORDER)
        self.best = t.take(order[: self.k])
        if self.best.num_rows == self.k:
            self.cut = self.nth(self.k - 1)

    def nth(self, i: int) -> Cut:
        r = self.best.slice(i, 1).to_pylist()[0]
        return Cut(float(r[_Q]), r[S.CHOSEN_ID], r[S.REJECTED_ID], int(r[_SHARD]), int(r[_ROW]))


def _files(src: str) -> tuple[pafs.FileSystem, list[str]]:
    """The *.parquet files under ``src`` (or ``src`` itself), sorted, that belong to its dataset (formats'
    in_dataset: not in an export's staging dir, nor hidden or private)."""
    from raypref.formats._common import in_dataset

    if "://" not in src and not Path(src).exists():
        raise FileNotFoundError(f"rank.input: no pairs at {src}")
    fs, root = _out_fs(src)
    if fs.get_file_info(root).type == pafs.FileType.File:
        return fs, [root]
    files = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                   if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                   and in_dataset(i.path[len(root):].strip("/").split("/")))
    if not files:
        raise FileNotFoundError(f"rank.input: no Parquet files under {src}")
    return fs, files


def _parquet(path: str, fs: pafs.FileSystem) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"rank.input: {path} is not a readable Parquet file: {e}") from None


def _out_fs(dst: str) -> tuple[pafs.FileSystem, str]:
    if "://" in dst:
        return pafs.FileSystem.from_uri(dst)
    return pafs.LocalFileSystem(), str(Path(dst).resolve())


def _batch_rows(md: pq.FileMetaData, columns: list[str] | None, batch_mb: float) -> int:
    """Rows per batch so that one batch of these columns is about batch_mb (uncompressed)."""
    if md.num_rows == 0:
        return 1
    wanted = None if columns is None else set(columns)
    size = 0
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        for j in range(rg.num_columns):
            cc = rg.column(j)
            if wanted is None or cc.path_in_schema.split(".")[0] in wanted:
                size += cc.total_uncompressed_size
    per_row = max(1.0, size / md.num_rows)
    return int(min(MAX_BATCH_ROWS, max(1, batch_mb * 2**20 // per_row)))


def _bar(items, desc: str, progress: bool):
    if not progress:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit="shard", leave=False)


def _output_schema(schema: pa.Schema) -> pa.Schema:
    field = pa.field(S.QUALITY, pa.float32())
    schema = schema.remove_metadata()
    i = schema.get_field_index(S.QUALITY)
    return schema.set(i, field) if i >= 0 else schema.append(field)


def _with_quality(batch: pa.RecordBatch, q32: np.ndarray, schema: pa.Schema, path: str) -> pa.Table:
    """The batch with QUALITY set (added if absent), in the output schema."""
    t = pa.Table.from_batches([batch])
    arr = pa.array(q32, pa.float32())
    i = t.schema.get_field_index(S.QUALITY)
    t = t.set_column(i, S.QUALITY, arr) if i >= 0 else t.append_column(S.QUALITY, arr)
    missing = [n for n in schema.names if n not in t.schema.names]
    if missing:
        raise ValueError(f"rank: shard {path} lacks columns {missing} that the first shard has")
    try:
        return t.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise ValueError(f"rank: shard {path} does not match the first shard's schema: {e}") from None


def rank_pairs(
    input_dir: str | Path,
    output_dir: str | Path,
    metric: str = "margin",
    metric_args: dict | None = None,
    top_p: float = 0.0533,
    batch_mb: float = 256.0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Keep the global top ``top_p`` of the pairs under ``input_dir`` by ``metric``; write them,
    with the QUALITY column filled in, as Parquet under ``output_dir`` (one file per input shard
    that keeps a row; one empty file if none does). Returns the summary (see the keys below)."""
    args = dict(metric_args or {})
    fn = Q.resolve_metric(metric)
    Q.check_args(fn, args, metric)
    src, dst = str(input_dir), str(output_dir)
    t0 = time.time()
    in_fs, files = _files(src)
    out_fs, out_root = _out_fs(dst)
    if isinstance(in_fs, pafs.LocalFileSystem) and isinstance(out_fs, pafs.LocalFileSystem):
        i, o = Path(src).resolve(), Path(out_root)
        if o == i or i in o.parents or o in i.parents:
            raise ValueError(f"rank: output {o} and input {i} overlap; write the selection elsewhere")
    if isinstance(out_fs, pafs.LocalFileSystem):
        put_back(Path(out_root))  # a selection a crash left aside is the one there
    if out_fs.get_file_info(out_root).type != pafs.FileType.NotFound and not overwrite:
        if out_fs.get_file_info(pafs.FileSelector(out_root, recursive=False)):
            raise ValueError(f"rank: output {dst} exists and is not empty (pass overwrite=True to replace it)")

    # 0. counts, schema and the metric's columns from the footers; nothing is written before this
    first = _parquet(files[0], in_fs).schema_arrow
    out_schema = _output_schema(first)
    need = Q.needed_columns(fn, first.names, args)
    read = None if need is None else sorted(set(need) | {S.CHOSEN_ID, S.REJECTED_ID})
    metas = []
    for path in files:
        f = _parquet(path, in_fs)
        absent = [c for c in (read or [S.CHOSEN_ID, S.REJECTED_ID]) if c not in f.schema_arrow.names]
        if absent:
            raise ValueError(f"rank: shard {path} has no column {absent} (metric {metric!r} with {args} reads {read})")
        metas.append(f.metadata)
    n_rows = sum(m.num_rows for m in metas)
    # parts go to a staging dir beside the output and replace it only once the selection is whole:
    # a crash or an error mid-way leaves the previous selection as it was, never a part of a new one
    staging = out_root + ".partial"
    out_fs.delete_dir_contents(staging, missing_dir_ok=True)
    out_fs.create_dir(staging, recursive=True)
    t_count = time.time()
    try:
        # 1. quality of every pair -> the best K_max candidates -> the exact cut
        top = TopK(top_k_count(top_p, n_rows) if n_rows else 0)
        n_nan = n_seen = 0
        for shard, path in _bar(list(enumerate(files)), "rank 1/2 quality", progress):
            f = pq.ParquetFile(path, filesystem=in_fs)
            offset = 0
            for batch in f.iter_batches(batch_size=_batch_rows(metas[shard], read, batch_mb), columns=read):
                q32 = rank_value(Q.compute(fn, batch, args, metric))
                rows = np.arange(offset, offset + batch.num_rows, dtype=np.int64)
                offset += batch.num_rows
                n_nan += int(np.isnan(q32).sum())
                top.offer(q32, _ids(batch, S.CHOSEN_ID), _ids(batch, S.REJECTED_ID), shard, rows)
            n_seen += offset
        top.merge()
        if n_seen != n_rows:
            raise ValueError(f"rank: the footers count {n_rows} pairs but {n_seen} were read (did a shard change?)")
        n_valid = n_rows - n_nan
        k = top_k_count(top_p, n_valid) if n_valid else 0
        cut = top.nth(k - 1) if k else None
        t_pass1 = time.time()

        # 2. stream again, keep the rows at or above the cut
        n_kept = n_tied = tied_kept = written = 0
        q_sum, q_min, q_max = 0.0, math.inf, -math.inf
        for shard, path in _bar(list(enumerate(files)), "rank 2/2 write", progress):
            f = pq.ParquetFile(path, filesystem=in_fs)
            writer = None
            offset = 0
            if cut is not None:
                for batch in f.iter_batches(batch_size=_batch_rows(metas[shard], None, batch_mb)):
                    q32 = rank_value(Q.compute(fn, batch, args, metric))
                    rows = np.arange(offset, offset + batch.num_rows, dtype=np.int64)
                    offset += batch.num_rows
                    keep = beats(q32, _ids(batch, S.CHOSEN_ID), _ids(batch, S.REJECTED_ID), shard, rows, cut, or_equal=True)
                    tied = q32 == np.float32(cut.quality)
                    n_tied += int(tied.sum())
                    tied_kept += int((tied & keep).sum())
                    if not keep.any():
                        continue
                    qk = q32[keep]
                    kept = _with_quality(batch.filter(pa.array(keep)), qk, out_schema, path)
                    qk = qk.astype(np.float64)
                    q_sum, q_min, q_max = q_sum + qk.sum(), min(q_min, qk.min()), max(q_max, qk.max())
                    n_kept += kept.num_rows
                    if writer is None:
                        writer = pq.ParquetWriter(f"{staging}/part-{shard:05d}.parquet", out_schema, filesystem=out_fs)
                    writer.write_table(kept)
            if writer is not None:
                writer.close()
                written += 1
        if written == 0:  # an empty selection is still a readable dataset with the schema
            pq.write_table(out_schema.empty_table(), f"{staging}/part-empty.parquet", filesystem=out_fs)
        if n_kept != k:
            raise RuntimeError(
                f"rank: kept {n_kept} pairs, expected exactly {k}: metric {metric!r} gave different values in the two "
                "passes (a metric must be row-wise and deterministic)"
            )
    except BaseException:
        # an error or interrupt mid-way leaves no half-written staging dir behind
        out_fs.delete_dir(staging)
        raise
    if isinstance(out_fs, pafs.LocalFileSystem):  # renamed whole: a crash leaves one selection, never a part of one
        swap_in(Path(staging), Path(out_root))
    else:  # an object store renames no directory: the parts move one by one
        out_fs.delete_dir_contents(out_root, missing_dir_ok=True)
        out_fs.create_dir(out_root, recursive=True)
        for info in out_fs.get_file_info(pafs.FileSelector(staging)):
            out_fs.move(info.path, f"{out_root}/{info.base_name}")
        out_fs.delete_dir(staging)
    t_end = time.time()
    return {
        "input": src,
        "output": dst,
        "metric": metric,
        "metric_args": args,
        "top_p": top_p,
        "shards": len(files),
        "files_written": max(written, 1),
        "n_in": n_rows,
        "n_nan": n_nan,
        "n_valid": n_valid,
        "k": k,
        "n_kept": n_kept,
        "threshold": asdict(cut) if cut else None,
        "tied_at_threshold": n_tied,
        "tied_kept": tied_kept,
        "quality_kept": {"min": q_min, "mean": q_sum / n_kept, "max": q_max} if n_kept else None,
        "seconds": {
            "count": round(t_count - t0, 3),
            "pass1": round(t_pass1 - t_count, 3),
            "pass2": round(t_end - t_pass1, 3),
            "total": round(t_end - t0, 3),
        },
        "pairs_per_s": round(n_rows / max(t_end - t0, 1e-9), 1),
    }


def summary_line(s: dict, where: str) -> str:
    cut = s["threshold"]
    at = (
        f"cut at quality {cut['quality']:.6g} ({s['tied_kept']} of the {s['tied_at_threshold']} pairs of that quality kept, ties broken by id)"
        if cut
        else "no pair has a valid quality"
    )
    return (
        f"[rank] {s['metric']}: {s['n_in']} pairs ({s['n_nan']} NaN quality, never kept) -> top {100 * s['top_p']:.4g}% "
        f"of {s['n_valid']} = {s['n_kept']} kept, {at}, in {s['seconds']['total']}s "
        f"({s['pairs_per_s']:.0f} pairs/s) -> {where}"
    )


def run_rank(cfg) -> dict:
    """The rank stage: <output_dir>/rank/{<rank.output>, summary.json, config.yaml, run_meta.json}."""
    from raypref.config import check_scorer_args, write_run_meta

    r = cfg.rank
    src = r.input or str(cfg.stage_dir("build") / "pairs")
    check_scorer_args(cfg, "rank")  # write_run_meta's check, before the selection is made
    dst = cfg.stage_dir("rank") / r.output
    s = rank_pairs(src, dst, r.metric, r.metric_args, r.top_p, batch_mb=r.batch_mb, overwrite=True)
    # after rank_pairs, which checks its input before it writes: a refused run leaves output_dir as it was
    out = write_run_meta(cfg, cfg.stage_dir("rank"), "rank")
    (out / "summary.json").write_text(json_text(s))
    print(summary_line(s, str(dst)), flush=True)
    return s
