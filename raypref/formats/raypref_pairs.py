"""raypref's own pairs table: a directory of Parquet files in the pairs schema (schema.py).

Reading: a directory (every *.parquet under it, sorted) or one file, in batches. Required: the
non-nullable pairs columns (prompt_id, prompt, chosen_id, rejected_id, chosen_image,
rejected_image); a missing one is a FormatError naming the file and the column. Missing
nullable columns are filled with nulls, except label: pairs written before the label column
existed were all strict preferences, so it is filled with 1.0. Extra columns (per-scorer
chosen_/rejected_ scores, source_label) are kept. Quarantined: empty prompt, undecodable image
bytes, label not in {0.5, 1.0}.

Writing: <path>/part-00000.parquet, ... (earlier part files there are replaced), one row group
per input batch, a new file every ``rows_per_file`` rows when given (the unit Ray Data reads in
parallel).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from raypref import schema as S
from raypref.resume import put_back, swap_in
from raypref.formats._common import (
    DEFAULT_BATCH_ROWS, STRICT, TIE, Quarantine, as_tables, check_parquet, concat, image_problem, nonempty_text,
    parquet_files, require_columns,
)

NAME = "raypref"
REQUIRED = tuple(f.name for f in S.PAIRS_SCHEMA if not f.nullable)


def _bad_row(prompt, chosen, rejected, label) -> str | None:
    if not nonempty_text(prompt):
        return f"empty caption: {prompt!r}"
    if label not in (STRICT, TIE):
        return f"bad label: {label!r} not in {{0.5, 1.0}}"
    for col, data in ((S.CHOSEN_IMAGE, chosen), (S.REJECTED_IMAGE, rejected)):
        problem = image_problem(data)
        if problem:
            return f"undecodable image: {col} ({problem})"
    return None


def _conform(batch: pa.Table) -> pa.Table:
    """The pairs columns first (typed, missing nullable ones filled), then any extra columns."""
    n = batch.num_rows
    cols, fields = [], []
    for f in S.PAIRS_SCHEMA:
        if f.name in batch.column_names:
            cols.append(batch.column(f.name).cast(f.type))
        elif f.name == S.LABEL:
            cols.append(pa.array([STRICT] * n, f.type))
        else:
            cols.append(pa.nulls(n, f.type))
        fields.append(f)
    for name in batch.column_names:
        if name not in S.PAIRS_SCHEMA.names:
            cols.append(batch.column(name))
            fields.append(batch.schema.field(name))
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))


def iter_read(path, quarantine: Quarantine | None = None, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.Table]:
    q = quarantine if quarantine is not None else Quarantine(f"import:{NAME}")
    for f in parquet_files(path, NAME):
        pf = pq.ParquetFile(f)
        require_columns(pf.schema_arrow.names, REQUIRED, f, NAME)
        offset = 0
        for batch in pf.iter_batches(batch_size=batch_rows):
            t = _conform(pa.table(batch))
            keep = []
            for k, vals in enumerate(zip(*(t.column(c).to_pylist() for c in (S.PROMPT, S.CHOSEN_IMAGE, S.REJECTED_IMAGE, S.LABEL)))):
                reason = _bad_row(*vals)
                if reason:
                    q.add(f"{f.name}[{offset + k}]", reason)
                else:
                    keep.append(k)
            offset += t.num_rows
            if keep:
                yield t if len(keep) == t.num_rows else t.take(pa.array(keep, pa.int64()))


def check(path) -> None:
    """Before a run: every file's footer has the format's columns (a FormatError naming the file and the
    columns it lacks)."""
    check_parquet(path, NAME, REQUIRED)


def read(path, quarantine: Quarantine | None = None) -> pa.Table:
    return concat(iter_read(path, quarantine))


def write(table_or_batches, path, quarantine: Quarantine | None = None, rows_per_file: int | None = None) -> int:
    """Write pairs to <path>/part-NNNNN.parquet; returns the number of rows written. ``path`` is replaced
    whole once every part is written, so it must hold nothing but earlier parts. (``quarantine`` is
    unused: every pairs row can be written; it is accepted so all writers share one signature.)"""
    root = Path(path)
    put_back(root)  # parts a crash left aside are the ones there
    if root.is_file():
        raise ValueError(f"pairs output {root} is a file; raypref pairs are written to a directory")
    other = sorted(p.name for p in root.iterdir() if not p.match("part-*.parquet")) if root.is_dir() else []
    if other:
        raise ValueError(f"pairs output {root} holds {other[0]!r} beside earlier pairs parts; it would be replaced "
                         "with the new parts: write raypref pairs to a directory of their own")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.with_name(root.name + ".partial")  # the new parts replace the old ones only when all are written
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    writer, schema, in_file, n_files, n = None, None, 0, 0, 0
    try:
        for t in as_tables(table_or_batches):
            if schema is None:
                schema = t.schema
            t = t.cast(schema)
            start = 0
            while start < t.num_rows:
                if writer is None or (rows_per_file and in_file >= rows_per_file):
                    if writer is not None:
                        writer.close()
                    writer = pq.ParquetWriter(staging / f"part-{n_files:05d}.parquet", schema)
                    n_files, in_file = n_files + 1, 0
                take = t.num_rows - start if not rows_per_file else min(t.num_rows - start, rows_per_file - in_file)
                writer.write_table(t.slice(start, take), row_group_size=take)
                start, in_file, n = start + take, in_file + take, n + take
    except BaseException:
        if writer is not None:
            writer.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if writer is not None:
        writer.close()
    if n_files == 0:  # no rows: an empty file keeps the directory readable as a (empty) pairs table
        pq.write_table((schema or S.PAIRS_SCHEMA).empty_table(), staging / "part-00000.parquet")
    swap_in(staging, root)  # renamed whole: a crash leaves the earlier parts or the new ones, never a mix
    return n
