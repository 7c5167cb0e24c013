"""AGFSync (An et al., AAAI 2025) preference Parquet <-> raypref pairs.

Verified layout (dataset card of JingkunAn/AGFSync on the Hugging Face hub, its
``dataset_info.features``): one row per pair with caption (string), good_jpg (image),
bad_jpg (image); Parquet shards data/train-000NN-of-00025.parquet. A Hugging Face ``image``
feature is stored in Parquet as a struct {bytes: binary, path: string} (with the features
declared in the file's b"huggingface" schema metadata); plain binary columns are accepted too.
The pairs carry no ids, no generator column and no ties: the card says every image comes from
SDXL and every preference from AI feedback (VQA + CLIP + aesthetic scores), so imported pairs get
label_source 'ai:agfsync' and label 1.0.

Reading: caption, good_jpg, bad_jpg are required (a file without one is a FormatError naming the
file and the column); files are read in batches. Ids are hashes of the image bytes. Quarantined:
empty caption, undecodable image bytes.

Writing: good_jpg = chosen, bad_jpg = rejected, as {bytes, path=null} structs with the Hugging
Face features metadata, bytes as they are. AGFSync has no ties: a pair with label 0.5 cannot be
written and goes to the quarantine (reason 'tie not representable'). Scores, ids and generators
are not part of the format and are lost.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from raypref import schema as S
from raypref.formats._common import (
    check_parquet, iter_parquet_pairs,
    DEFAULT_BATCH_ROWS, STRICT, Quarantine, as_tables, concat, content_id, image_problem, nonempty_text,
    pair_row, replaced_on_success, writable,
)

NAME = "agfsync"
LABEL_SOURCE = "ai:agfsync"
REQUIRED = ("caption", "good_jpg", "bad_jpg")
_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_HF_FEATURES = {"caption": {"dtype": "string", "_type": "Value"}, "good_jpg": {"_type": "Image"}, "bad_jpg": {"_type": "Image"}}
SCHEMA = pa.schema([("caption", pa.string()), ("good_jpg", _IMAGE), ("bad_jpg", _IMAGE)],
                   metadata={b"huggingface": json.dumps({"info": {"features": _HF_FEATURES}}).encode()})


def _bytes(v):
    return v.get("bytes") if isinstance(v, dict) else v


def _pair(r: dict, where: str, q: Quarantine) -> dict | None:
    if not nonempty_text(r["caption"]):
        q.add(where, f"empty caption: {r['caption']!r}")
        return None
    good, bad = _bytes(r["good_jpg"]), _bytes(r["bad_jpg"])
    for col, data in (("good_jpg", good), ("bad_jpg", bad)):
        problem = image_problem(data)
        if problem:
            q.add(where, f"undecodable image: {col} ({problem})")
            return None
    return pair_row(r["caption"], content_id(good), content_id(bad), good, bad, STRICT, LABEL_SOURCE)


def iter_read(path, quarantine: Quarantine | None = None, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.Table]:
    q = quarantine if quarantine is not None else Quarantine(f"import:{NAME}")
    yield from iter_parquet_pairs(path, NAME, REQUIRED, (), lambda r, where: _pair(r, where, q), batch_rows)


def check(path) -> None:
    """Before a run: every file's footer has the format's columns (a FormatError naming the file and the
    columns it lacks)."""
    check_parquet(path, NAME, REQUIRED)


def read(path, quarantine: Quarantine | None = None) -> pa.Table:
    return concat(iter_read(path, quarantine))


def _image_column(col: pa.ChunkedArray) -> pa.StructArray:
    b = col.combine_chunks()
    return pa.StructArray.from_arrays([b, pa.nulls(len(b), pa.string())], fields=list(_IMAGE))


def write(table_or_batches, path, quarantine: Quarantine | None = None) -> int:
    """Write strict pairs to one Parquet file in AGFSync columns; ties go to the quarantine."""
    q = quarantine if quarantine is not None else Quarantine(f"export:{NAME}")
    path = Path(path)
    n = 0
    with replaced_on_success(path) as staging, pq.ParquetWriter(staging, SCHEMA) as w:
        for t in as_tables(table_or_batches):
            t = writable(t, q, NAME, allow_ties=False)
            if t.num_rows:
                out = pa.Table.from_arrays(
                    [t.column(S.PROMPT).combine_chunks(), _image_column(t.column(S.CHOSEN_IMAGE)),
                     _image_column(t.column(S.REJECTED_IMAGE))], schema=SCHEMA)
                w.write_table(out, row_group_size=t.num_rows)
                n += t.num_rows
    return n
