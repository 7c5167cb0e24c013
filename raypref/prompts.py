"""Read a prompts file (.txt, .jsonl, .parquet) into the prompts table, with row-naming errors."""

from __future__ import annotations

import codecs
import itertools
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raypref import schema as S


class PromptsError(ValueError):
    """A prompts file is missing or has a row that cannot be used; the message names it."""


def _lines(path: Path) -> list[str | UnicodeDecodeError]:
    """A text file's lines, each decoded on its own: a line that is not UTF-8 is its error, so it is
    one bad row, not a bad file. A leading byte-order mark (Windows editors write one) is not text."""
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    out = []
    for raw in data.splitlines():
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            out.append(e)
    return out


def _rows(path: Path) -> list[tuple[str, dict | str]]:
    """(where, record, or why the row cannot be used) for each row; 'where' names the file and line/row."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        lines = _lines(path)
        while lines and isinstance(lines[-1], str) and not lines[-1].strip():  # trailing blank lines are not prompts
            lines.pop()
        return [(f"{path}:{i + 1}", {S.PROMPT: line} if isinstance(line, str) else _not_utf8(line))
                for i, line in enumerate(lines)]
    if suffix in (".jsonl", ".json"):
        out = []
        for i, line in enumerate(_lines(path)):
            if isinstance(line, UnicodeDecodeError):
                out.append((f"{path}:{i + 1}", _not_utf8(line)))
                continue
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


def _not_utf8(e: UnicodeDecodeError) -> str:
    return f"not valid UTF-8: byte {e.object[e.start]:#04x} at column {e.start + 1}"


def _problem(rec: dict | str) -> str | None:
    """Why a row gives no prompt (None: it does)."""
    if isinstance(rec, str):
        return rec
    text = rec.get(S.PROMPT)
    if text is not None and not isinstance(text, str):
        return f"prompt is not text: {type(text).__name__}"
    return None if text and text.strip() else "empty prompt"


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
                 quarantine: list | None = None, key: str | None = None) -> pa.Table:
    """_read_prompts, its errors led by the config ``key`` that named ``path`` (build.prompts, say)."""
    try:
        return _read_prompts(path, limit, source, quarantine)
    except PromptsError as e:
        if key is None or str(e).startswith(key):
            raise
        raise PromptsError(f"{key}: {e}") from None


def _read_prompts(path: str | Path, limit: int | None = None, source: str | None = None,
                  quarantine: list | None = None) -> pa.Table:
    """The prompts table (schema.PROMPTS_SCHEMA). A row without a prompt (empty, not text, or a line that
    is not UTF-8) is an error naming the row, or, when a ``quarantine`` list is given, a quarantine note
    appended to it (the build's way), as is a repeated prompt.

    ``path`` is a .txt / .jsonl / .parquet file, or 'shapes:<split>' for a shapes-world split.

    A prompt that repeats an earlier one is dropped: its prompt_id (a hash of the text) would
    collide, and resume keys on prompt_id. The count is returned in the table metadata.
    """
    if str(path).startswith(SHAPES_SOURCE):
        rows, name = _shapes_rows(str(path)), str(path)
    else:
        if not str(path):  # Path("") would be the current dir, '.'
            raise PromptsError("prompts file not set")
        path = Path(path)
        if not path.is_file():
            raise PromptsError(f"prompts file not found: {path}")
        rows, name = _rows(path), path.name
    seen: dict[str, str] = {}
    records, duplicates = [], 0
    for where, rec in rows:
        problem = _problem(rec)
        if problem:
            if quarantine is None:
                raise PromptsError(f"{where}: {problem}")
            quarantine.append({S.STAGE: "prompts", S.ROW: where, S.REASON: problem})
            continue
        text = rec[S.PROMPT].strip()
        pid = S.prompt_id(text)
        if pid in seen:
            duplicates += 1
            if quarantine is not None:  # counted either way; written aside where rows are
                quarantine.append({S.STAGE: "prompts", S.ROW: where, S.REASON: f"duplicate prompt: as {seen[pid]}"})
            continue
        seen[pid] = where
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
