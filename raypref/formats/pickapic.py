"""Pick-a-Pic v2 (Kirstain et al. 2023) Parquet <-> raypref pairs.

Verified layout (dataset card of yuvalkirstain/pickapic_v2 on the Hugging Face hub, its
``dataset_info.features``): one row per comparison with the columns, in this order,
are_different (bool), best_image_uid (string), caption (string), created_at (timestamp[ns]),
has_label (bool), image_0_uid, image_0_url, image_1_uid, image_1_url (string), jpg_0, jpg_1
(binary: the encoded images), label_0, label_1 (float64), model_0, model_1 (string),
ranking_id, user_id, num_example_per_prompt, __index_level_0__ (int64). Splits are sharded
Parquet files (train-00000-of-NNNNN.parquet ...). label_0 is 1 when image 0 won, 0 when image 1
won, 0.5 for a tie (PickScore's loss trains a tie towards equal scores; Diffusion-DPO's training
script drops those rows as no-decisions), and label_1 = 1 - label_0.

Reading: the required columns are caption, jpg_0, jpg_1, label_0 (a file without one of them is
a FormatError naming the file and the column); label_1, image_*_uid, model_*, has_label are used
when present. Files are read in batches (ParquetFile.iter_batches), never whole. Tie rule: a tie
keeps label 0.5 with image 0 on the chosen side (source order). Ids: image_0_uid / image_1_uid,
or a hash of the image bytes where those are missing. Generators: model_0 / model_1.
Quarantined (counted, written aside, never silently dropped): empty caption, has_label false,
label_0 not in {0, 0.5, 1}, label_0 + label_1 != 1, undecodable image bytes.

Writing: as in Pick-a-Pic, the winner is on either side: a seeded coin per strict pair (a hash of
its two ids, so the same on every run) puts the chosen image in jpg_0 with label_0 = 1.0 or in
jpg_1 with label_0 = 0.0, image_*_uid and model_* following it; a tie keeps label 0.5 with the
chosen image in jpg_0, so reading the export back gives the same pairs. Image
bytes are written as they are (a PNG stays a PNG although the column is named jpg: decoders read
the format from the bytes). num_example_per_prompt is the number of rows with the same caption in
the file, as in Pick-a-Pic (PickScore weights each example's loss by its inverse). Columns the
pairs schema does not carry are written null (created_at, urls, ranking_id, user_id); best_image_uid is the chosen id
for a strict preference and null for a tie (what Pick-a-Pic itself stores for a tie is not
verified). Output is one Parquet file, one row group per input batch.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raypref import schema as S
from raypref.formats._common import (
    check_parquet, iter_parquet_pairs,
    DEFAULT_BATCH_ROWS, STRICT, TIE, Quarantine, as_tables, concat, content_id, image_problem,
    nonempty_text, pair_row, replaced_on_success, writable,
)

NAME = "pickapic"
LABEL_SOURCE = "human:pickapic"
REQUIRED = ("caption", "jpg_0", "jpg_1", "label_0")
OPTIONAL = ("label_1", "image_0_uid", "image_1_uid", "model_0", "model_1", "has_label")

SCHEMA = pa.schema([
    ("are_different", pa.bool_()), ("best_image_uid", pa.string()), ("caption", pa.string()),
    ("created_at", pa.timestamp("ns")), ("has_label", pa.bool_()),
    ("image_0_uid", pa.string()), ("image_0_url", pa.string()), ("image_1_uid", pa.string()), ("image_1_url", pa.string()),
    ("jpg_0", pa.binary()), ("jpg_1", pa.binary()), ("label_0", pa.float64()), ("label_1", pa.float64()),
    ("model_0", pa.string()), ("model_1", pa.string()), ("ranking_id", pa.int64()), ("user_id", pa.int64()),
    ("num_example_per_prompt", pa.int64()), ("__index_level_0__", pa.int64()),
])


def _pair(r: dict, where: str, q: Quarantine) -> dict | None:
    if not nonempty_text(r["caption"]):
        q.add(where, f"empty caption: {r['caption']!r}")
        return None
    if r.get("has_label") is False:
        q.add(where, "no label: has_label is false")
        return None
    l0 = r["label_0"]
    if l0 not in (0.0, 0.5, 1.0):
        q.add(where, f"bad label: label_0={l0!r} not in {{0, 0.5, 1}}")
        return None
    if r.get("label_1") is not None and r["label_1"] + l0 != 1.0:
        q.add(where, f"bad label: label_0 + label_1 = {l0} + {r['label_1']} != 1")
        return None
    for col in ("jpg_0", "jpg_1"):
        problem = image_problem(r[col])
        if problem:
            q.add(where, f"undecodable image: {col} ({problem})")
            return None
    ids = [r.get(f"image_{k}_uid") or content_id(r[f"jpg_{k}"]) for k in (0, 1)]
    c, j = (1, 0) if l0 == 0.0 else (0, 1)  # a tie (0.5) keeps source order: image 0 chosen
    return pair_row(r["caption"], ids[c], ids[j], r[f"jpg_{c}"], r[f"jpg_{j}"], TIE if l0 == 0.5 else STRICT,
                    LABEL_SOURCE, r.get(f"model_{c}"), r.get(f"model_{j}"))


def iter_read(path, quarantine: Quarantine | None = None, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.Table]:
    """Pairs tables, one per Parquet batch of ``batch_rows`` rows (files are never loaded whole)."""
    q = quarantine if quarantine is not None else Quarantine(f"import:{NAME}")
    yield from iter_parquet_pairs(path, NAME, REQUIRED, OPTIONAL, lambda r, where: _pair(r, where, q), batch_rows)


def check(path) -> None:
    """Before a run: every file's footer has the format's columns (a FormatError naming the file and the
    columns it lacks)."""
    check_parquet(path, NAME, REQUIRED)


def read(path, quarantine: Quarantine | None = None) -> pa.Table:
    return concat(iter_read(path, quarantine))


def _to_pickapic(t: pa.Table, start: int) -> pa.Table:
    n = t.num_rows
    tie = pc.equal(t.column(S.LABEL), TIE)
    # Pick-a-Pic's winners sit on either side; an export with every winner in jpg_0 would teach a
    # model that sees the pair in order to pick image 0. A seeded coin per pair (the same on every
    # run) puts the winner of about half the strict pairs in jpg_1; a tie keeps source order.
    coin = [S.unit_hash("pickapic-side", c, r) < 0.5 for c, r in
            zip(t.column(S.CHOSEN_ID).to_pylist(), t.column(S.REJECTED_ID).to_pylist())]
    swap = pc.and_(pc.invert(tie), pa.array(coin, pa.bool_()))
    label_0 = pc.if_else(tie, 0.5, pc.if_else(swap, 0.0, 1.0)).cast(pa.float64())

    def side(first: str, second: str):
        return pc.if_else(swap, t.column(second), t.column(first))

    nulls = {typ: pa.nulls(n, typ) for typ in (pa.string(), pa.int64(), pa.timestamp("ns"))}
    cols = {
        "are_different": pc.not_equal(t.column(S.CHOSEN_IMAGE), t.column(S.REJECTED_IMAGE)),
        "best_image_uid": pc.if_else(tie, None, t.column(S.CHOSEN_ID)),
        "caption": t.column(S.PROMPT),
        "created_at": nulls[pa.timestamp("ns")],
        "has_label": pa.array(np.ones(n, bool)),
        "image_0_uid": side(S.CHOSEN_ID, S.REJECTED_ID),
        "image_0_url": nulls[pa.string()],
        "image_1_uid": side(S.REJECTED_ID, S.CHOSEN_ID),
        "image_1_url": nulls[pa.string()],
        "jpg_0": side(S.CHOSEN_IMAGE, S.REJECTED_IMAGE),
        "jpg_1": side(S.REJECTED_IMAGE, S.CHOSEN_IMAGE),
        "label_0": label_0,
        "label_1": pc.subtract(1.0, label_0),
        "model_0": side(S.CHOSEN_GENERATOR, S.REJECTED_GENERATOR),
        "model_1": side(S.REJECTED_GENERATOR, S.CHOSEN_GENERATOR),
        "ranking_id": nulls[pa.int64()],
        "user_id": nulls[pa.int64()],
        "num_example_per_prompt": nulls[pa.int64()],
        "__index_level_0__": pa.array(np.arange(start, start + n, dtype=np.int64)),
    }
    return pa.table(cols).cast(SCHEMA)


def write(table_or_batches, path, quarantine: Quarantine | None = None) -> int:
    """Write pairs (a table, or an iterable of tables written one row group each) to one Parquet
    file in Pick-a-Pic v2 columns; returns the number of rows written."""
    q = quarantine if quarantine is not None else Quarantine(f"export:{NAME}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # num_example_per_prompt is the caption's row count in the whole file (PickScore weights each
    # example's loss by its inverse), known only once every pair is seen: the rows go to a first
    # file, then are copied row group by row group with the counts filled in
    uncounted = path.with_name(path.name + ".uncounted")
    captions: Counter[str] = Counter()
    n = 0
    try:
        with pq.ParquetWriter(uncounted, SCHEMA) as w:
            for t in as_tables(table_or_batches):
                t = writable(t, q, NAME)
                if t.num_rows:
                    w.write_table(_to_pickapic(t, n), row_group_size=t.num_rows)
                    captions.update(t.column(S.PROMPT).to_pylist())
                    n += t.num_rows
        keys = pa.array(list(captions), pa.string())
        counts = pa.array(list(captions.values()), pa.int64())
        col = SCHEMA.get_field_index("num_example_per_prompt")
        f = pq.ParquetFile(uncounted)
        with replaced_on_success(path) as staging, pq.ParquetWriter(staging, SCHEMA) as w:
            for g in range(f.num_row_groups):
                t = f.read_row_group(g)
                per = pc.take(counts, pc.index_in(t.column("caption"), value_set=keys))
                w.write_table(t.set_column(col, "num_example_per_prompt", per), row_group_size=t.num_rows)
    finally:
        uncounted.unlink(missing_ok=True)
    return n
