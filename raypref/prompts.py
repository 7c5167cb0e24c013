"""Read a prompts file (.txt, .jsonl, .parquet) into the prompts table, with row-naming errors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raypref import schema as S


class PromptsError(ValueError):
    """A prompts file is missing or has a row that cannot be used; the message names it."""


def _rows(path: Path) -> list[tuple[str, dict]]:
    """(where, record) for each row; 'where' names the file and line/row for errors."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        while lines and not lines[-1].strip():  # trailing blank lines are not prompts
            lines.pop()
        return [(f"{path}:{i + 1}", {S.PROMPT: line}) for i, line in enumerate(lines)]
    if suffix in (".jsonl", ".json"):
        out = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptsError(f"{path}:{i + 1}: not valid JSON: {e}") from e
            if not isinstance(rec, dict) or S.PROMPT not in rec:
                raise PromptsError(f"{path}:{i + 1}: expected an object with a {S.PROMPT!r} key")
            out.append((f"{path}:{i + 1}", rec))
        return out
    if suffix == ".parquet":
        table = pq.read_table(path)
        if S.PROMPT not in table.column_names:
            raise PromptsError(f"{path}: no {S.PROMPT!r} column (columns: {table.column_names})")
        return [(f"{path} row {i}", rec) for i, rec in enumerate(table.to_pylist())]
    raise PromptsError(f"{path}: unsupported prompts format {suffix!r} (use .txt, .jsonl or .parquet)")


SHAPES_SOURCE = "shapes:"  # 'shapes:<split>[+<split>...]' reads shapes-world splits (train, align, eval, heldout)


def _shapes_rows(ref: str) -> list[tuple[str, dict]]:
    from raypref.shapes.world import SPLITS, TEMPLATES, prompts

    union = ref[len(SHAPES_SOURCE):]
    for split in union.split("+"):
        if split not in SPLITS:
            raise PromptsError(f"prompts {ref!r}: unknown shapes split {split!r} (known: {list(SPLITS)})")
    # Round-robin over the templates, each in a fixed hash order, so that build.limit / eval.limit
    # take a balanced, unbiased subset (the relation template alone holds most prompts). A union
    # of splits that overlap ('heldout+eval') lists each prompt once (world.prompts).
    by_template = [sorted(prompts(union, templates=[t]), key=lambda p: S.stable_id("order", p)) for t in TEMPLATES]
    ordered = [p for group in itertools.zip_longest(*by_template) for p in group if p is not None]
    return [(f"{ref} #{i}", {S.PROMPT: p, S.SOURCE: ref}) for i, p in enumerate(ordered)]


def read_prompts(path: str | Path, limit: int | None = None, source: str | None = None,
                 quarantine: list | None = None) -> pa.Table:
    """The prompts table (schema.PROMPTS_SCHEMA). An empty prompt is an error naming the row, or,
    when a ``quarantine`` list is given, a quarantine note appended to it (the build's way).

    ``path`` is a .txt / .jsonl / .parquet file, or 'shapes:<split>' for a shapes-world split.

    A prompt that repeats an earlier one is dropped: its prompt_id (a hash of the text) would
    collide, and resume keys on prompt_id. The count is returned in the table metadata.
    """
    if str(path).startswith(SHAPES_SOURCE):
        rows, name = _shapes_rows(str(path)), str(path)
    else:
        path = Path(path)
        if not str(path) or not path.is_file():
            raise PromptsError(f"prompts file not found: {path}")
        rows, name = _rows(path), path.name
    seen: set[str] = set()
    records, duplicates = [], 0
    for where, rec in rows:
        text = rec.get(S.PROMPT)
        if not isinstance(text, str) or not text.strip():
            if quarantine is None:
                raise PromptsError(f"{where}: empty prompt")
            quarantine.append({S.STAGE: "prompts", S.ROW: where, S.REASON: "empty prompt"})
            continue
        text = text.strip()
        pid = S.prompt_id(text)
        if pid in seen:
            duplicates += 1
            continue
        seen.add(pid)
        label = rec.get(S.CLASS_LABEL)
        records.append(
            {
                S.PROMPT_ID: pid,
                S.PROMPT: text,
                S.SOURCE: rec.get(S.SOURCE) or source or name,
                S.CLASS_LABEL: None if label is None else str(label),
            }
        )
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise PromptsError(f"{path}: no prompts")
    table = pa.Table.from_pylist(records, schema=S.PROMPTS_SCHEMA)
    return table.replace_schema_metadata({b"duplicates_dropped": str(duplicates).encode()})


def write_prompt_shards(table: pa.Table, out_dir: str | Path, shard_size: int) -> list[Path]:
    """Write the prompts table as shard files, so Ray Data reads them in parallel blocks."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("shard-*.parquet"):
        old.unlink()
    paths = []
    for k, start in enumerate(range(0, table.num_rows, shard_size)):
        p = out / f"shard-{k:05d}.parquet"
        pq.write_table(table.slice(start, shard_size), p)
        paths.append(p)
    return paths
