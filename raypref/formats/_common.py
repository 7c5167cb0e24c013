"""Shared pieces of the format readers and writers: the quarantine collector, image checks, stable
ids, the pairs-row builder and file discovery."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import shutil
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
from PIL import Image

from raypref import quarantine as Q
from raypref import schema as S
from raypref.metrics import strict_json
from raypref.resume import swap_in

log = logging.getLogger(__name__)

STRICT, TIE = S.STRICT, S.TIE  # the formats' modules import the labels from here
DEFAULT_BATCH_ROWS = 64  # a Pick-a-Pic row holds two ~0.5-1 MB JPEGs
_EXT = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


class FormatError(ValueError):
    """A file cannot be read as the format asked for at all; the message names the file and what is missing."""


class Quarantine:
    """Collects the rows a reader or writer could not use: where they were (file + row index or
    key) and why, as raypref.quarantine notes. A reason starts with its kind, then ': ' and details
    ("undecodable image: jpg_0 ..."), so ``counts()`` groups them by kind.
    """

    def __init__(self, stage: str):
        self.stage = stage
        self.rows: list[dict] = []

    def add(self, row: str, reason: str) -> None:
        self.rows.append(Q.note(self.stage, row, reason))

    def extend(self, other: "Quarantine") -> None:
        self.rows.extend(other.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def counts(self) -> dict[str, int]:
        return dict(Counter(r[S.REASON].split(":", 1)[0] for r in self.rows))

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=S.QUARANTINE_SCHEMA)

    def write(self, path: str | Path) -> Path:
        Q.write(self.table(), Path(path))
        return Path(path)

    def warn_if_any(self, what: str) -> None:
        if self.rows:
            log.warning("%s: %d rows quarantined %s (first: %s: %s)", what, len(self.rows), self.counts(),
                        self.rows[0][S.ROW], self.rows[0][S.REASON])


def image_problem(data) -> str | None:
    """None when ``data`` decodes as an image, else why not. JPEGs decode at 1/8 scale (draft mode):
    that still reads every scan, so truncated files fail, at a fraction of the cost of a full decode."""
    if not isinstance(data, (bytes, bytearray)) or not data:
        return "no image bytes"
    try:
        im = Image.open(io.BytesIO(data))
        if im.format == "JPEG":
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
        im.load()
    except Exception as e:  # PIL raises many types for bad data
        return f"{type(e).__name__}: " + re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e))
    return None


def image_ext(data: bytes) -> str:
    """File extension for encoded image bytes, from their own header ('.bin' if unknown)."""
    try:
        return _EXT.get(Image.open(io.BytesIO(data)).format, ".bin")
    except Exception:
        return ".bin"


def content_id(data: bytes) -> str:
    """Stable id of an image that has no id in its source: a hash of its bytes."""
    return S.stable_id("image", hashlib.sha256(data).hexdigest())


def file_name_for(image_id: str, data: bytes) -> str:
    """Relative file name for an image written by an exporter: its id when the id is a safe relative
    path (so the id survives the round trip as the file stem), else a hash of the id."""
    safe = _SAFE_ID.match(image_id or "") and ".." not in image_id.split("/")
    return (image_id if safe else S.stable_id("file", image_id)) + image_ext(data)


def id_from_path(rel: str) -> str:
    """An image's id from its path in the source: the path without its extension (posix)."""
    p = Path(rel)
    return p.with_suffix("").as_posix()


def pair_row(prompt: str, chosen_id: str, rejected_id: str, chosen_image: bytes, rejected_image: bytes,
             label: float, label_source: str, chosen_generator=None, rejected_generator=None) -> dict:
    """One imported pairs row: scores unknown (null), prompt id from the prompt text so prompts join
    across datasets."""
    return {
        S.PROMPT_ID: S.prompt_id(prompt),
        S.PROMPT: prompt,
        S.CHOSEN_ID: chosen_id,
        S.REJECTED_ID: rejected_id,
        S.CHOSEN_IMAGE: chosen_image,
        S.REJECTED_IMAGE: rejected_image,
        S.CHOSEN_SCORE: None,
        S.REJECTED_SCORE: None,
        S.MARGIN: None,
        S.QUALITY: None,
        S.LABEL_SOURCE: label_source,
        S.LABEL: label,
        S.CHOSEN_GENERATOR: chosen_generator,
        S.REJECTED_GENERATOR: rejected_generator,
    }


def pairs_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=S.PAIRS_SCHEMA)


def ranking_pairs(ranks) -> list[tuple[int, int, float]]:
    """All pairs (i, j, label) of one ranking, i < j in source order; a lower rank is better.
    Unequal ranks: the better image is chosen (label 1.0). Equal ranks: a tie, label 0.5, the
    earlier image (source order) on the chosen side. k images give k(k-1)/2 pairs."""
    out = []
    for i in range(len(ranks)):
        for j in range(i + 1, len(ranks)):
            if ranks[i] < ranks[j]:
                out.append((i, j, STRICT))
            elif ranks[i] > ranks[j]:
                out.append((j, i, STRICT))
            else:
                out.append((i, j, TIE))
    return out


def nonempty_text(x) -> bool:
    return isinstance(x, str) and bool(x.strip())


def data_files(path: str | Path, what: str, suffix: str) -> list[Path]:
    """A file, or every *<suffix> file under a directory (sorted)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        # an export's staging dirs (<dir>.partial, <dir>.old) are never part of a dataset
        files = sorted(f for f in p.rglob("*" + suffix) if f.is_file() and in_dataset(f.relative_to(p).parts))
        if files:
            return files
        raise FormatError(f"{what}: no {suffix} files under {p}")
    raise FileNotFoundError(f"{what}: no such file or directory: {p}")


def parquet_files(path: str | Path, what: str) -> list[Path]:
    return data_files(path, what, ".parquet")


def require_columns(names, required, file, what: str) -> None:
    missing = [c for c in required if c not in names]
    if missing:
        more = f"missing: {missing}; " if len(missing) > 1 else ""
        raise FormatError(f"{what}: {file} has no column {missing[0]!r} ({more}required: {list(required)}; "
                          f"columns there: {list(names)})")


def check_parquet(path, what: str, required) -> None:
    """A format check that reads no rows: every Parquet file's footer holds the required columns, as a
    later file without them would otherwise fail mid-read (inside Ray). (parquet_files: the files
    in_dataset, or an error naming the path where there are none.)"""
    for f, names in footer_names(parquet_files(path, what), what):
        require_columns(names, required, f, what)


def ray_parquet_files(path: Path) -> list[Path]:
    """The Parquet files Ray Data's read_parquet reads at ``path`` (a file, or the *.parquet files under a
    dir), sorted; [] where there are none. Its listing leaves out a file whose path below ``path`` starts
    with '.' or '_' (a '_checkpoint' dir, a macOS '._' copy), and only then: unlike Arrow's, and so
    in_dataset's, a deeper part so named is read (ray.data's _expand_directory, Ray 2.60)."""
    if path.is_file():
        return [path]
    return sorted(f for f in path.rglob("*.parquet") if f.is_file() and not f.relative_to(path).parts[0].startswith((".", "_")))


def footer_names(files, what: str) -> list[tuple[Path, list[str]]]:
    """(file, its column names) for each file, in order, from the footers alone; a file whose footer
    cannot be read raises a FormatError naming it. Footers are read by a few threads, as a table of
    thousands of files (on a network disk) would take long one footer at a time."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    def names(f):
        try:
            return f, pq.read_schema(f).names
        except (OSError, pa.ArrowInvalid) as e:
            raise FormatError(f"{what}: {f} is not a readable Parquet file ({e})") from None

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(names, files))


def iter_parquet_pairs(path, what: str, required, optional, to_pair, batch_rows: int) -> Iterator[pa.Table]:
    """Pairs tables from a Parquet layout, one per batch of ``batch_rows`` rows (files are never
    loaded whole): ``to_pair(row dict, where)`` returns a pair row, or None for a quarantined one,
    where = '<file name>[<row index>]'."""
    import pyarrow.parquet as pq

    for f in parquet_files(path, what):
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        require_columns(names, required, f, what)
        cols = [c for c in list(required) + list(optional) if c in names]
        offset = 0
        for batch in pf.iter_batches(batch_size=batch_rows, columns=cols):
            d = batch.to_pydict()
            rows = [p for k in range(batch.num_rows)
                    if (p := to_pair({c: d[c][k] for c in cols}, f"{f.name}[{offset + k}]")) is not None]
            offset += batch.num_rows
            if rows:
                yield pairs_table(rows)


def read_json_list(file: Path, what: str) -> list:
    try:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FormatError(f"{what}: {file} is not valid JSON: {e}") from None
    if not isinstance(data, list):
        raise FormatError(f"{what}: {file} must hold a JSON list of records, found {type(data).__name__}")
    return data


def first_json_records(file: Path, what: str, n: int = 20) -> list:
    """The first ``n`` records (fewer in a shorter list) of a file holding a JSON list, parsed from the
    file's start only, so a check before a run need not parse a large file whole."""
    dec, size = json.JSONDecoder(), 1 << 16
    while True:
        with open(file, encoding="utf-8") as f:
            text = f.read(size)
        whole = len(text) < size
        try:
            return _json_head(text, dec, n, file, what)
        except (IndexError, json.JSONDecodeError) as e:  # cut off at the end of what was read
            if whole:
                why = e if isinstance(e, json.JSONDecodeError) else "it ends before its list does"
                raise FormatError(f"{what}: {file} is not valid JSON: {why}") from None
            size *= 4


def _json_head(text: str, dec: json.JSONDecoder, n: int, file, what: str) -> list:
    def ws(i):
        while text[i] in " \t\r\n":
            i += 1
        return i

    i = ws(0)
    if text[i] != "[":
        raise FormatError(f"{what}: {file} must hold a JSON list of records (it starts with {text[i:i + 20]!r})")
    i, records = ws(i + 1), []
    while text[i] != "]" and len(records) < n:
        rec, i = dec.raw_decode(text, i)
        records.append(rec)
        i = ws(i)
        if text[i] == ",":
            i = ws(i + 1)
        elif text[i] != "]":
            raise json.JSONDecodeError("expected ',' or ']'", text, i)
    return records


def batched(rows: Iterable[dict], n: int) -> Iterator[list[dict]]:
    buf = []
    for r in rows:
        buf.append(r)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf


def as_tables(table_or_batches) -> Iterator[pa.Table]:
    """A writer's input: one table or an iterable of tables (streamed, written batch by batch)."""
    if isinstance(table_or_batches, (pa.Table, pa.RecordBatch)):
        yield pa.table(table_or_batches) if isinstance(table_or_batches, pa.RecordBatch) else table_or_batches
    else:
        yield from table_or_batches


def concat(batches: Iterable[pa.Table], empty_schema: pa.Schema = S.PAIRS_SCHEMA) -> pa.Table:
    tables = list(batches)
    if not tables:
        return empty_schema.empty_table()
    return pa.concat_tables(tables, promote_options="default")


def write_image(root: Path, rel: str, data: bytes, written: set) -> None:
    """Write one image file under root; an image shared by several pairs is written once per export
    (``written`` holds the names this export wrote; a file left by an earlier export is replaced)."""
    if rel in written:
        return
    f = root / rel
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(data)
    written.add(rel)


def read_image(root: Path, rel, where: str, q: Quarantine) -> bytes | None:
    """Bytes of an image file named in a JSON record, or None (quarantined, with the reason)."""
    if not nonempty_text(rel):
        q.add(where, f"missing key: image path is empty or not a string ({rel!r})")
        return None
    return image_file(root / rel, where, q)


def image_file(f: Path, where: str, q: Quarantine, missing: str | None = None) -> bytes | None:
    """Bytes of an image file that exists and decodes, or None (quarantined; ``missing`` words the
    absent-file reason where the caller knows more than the path)."""
    if not f.is_file():
        q.add(where, missing or f"missing image file: {f}")
        return None
    data = f.read_bytes()
    problem = image_problem(data)
    if problem:
        q.add(where, f"undecodable image: {f} ({problem})")
        return None
    return data


def writable(t: pa.Table, q: Quarantine, what: str, allow_ties: bool = True) -> pa.Table:
    """The rows of a pairs table an exporter can write: label 1.0 (and 0.5 when the format has
    ties). Other rows go to the quarantine, named by prompt and ids."""
    labels = t.column(S.LABEL).to_pylist() if S.LABEL in t.column_names else [STRICT] * t.num_rows
    keep = []
    for i, lab in enumerate(labels):
        if lab == STRICT or (lab == TIE and allow_ties):
            keep.append(i)
            continue
        row = f"{what}: pair {t.column(S.CHOSEN_ID)[i].as_py()} > {t.column(S.REJECTED_ID)[i].as_py()} ({t.column(S.PROMPT)[i].as_py()!r})"
        if lab == TIE:
            q.add(row, f"tie not representable: {what} has no way to write label 0.5")
        else:
            q.add(row, f"bad label: {lab!r} not in {{0.5, 1.0}}")
    return t if len(keep) == t.num_rows else t.take(pa.array(keep, pa.int64()))


STAGING_SUFFIXES = (".partial", ".old")


def in_dataset(parts) -> bool:
    """Whether a file, by the parts of its path below a dataset's root, belongs to the dataset: not in an
    export's staging dir, and, as Arrow and Ray Data ignore them, no part hidden ('.', a macOS '._' copy)
    or private ('_', a '_checkpoint' dir)."""
    parts = list(parts)
    return not any(d.endswith(STAGING_SUFFIXES) for d in parts[:-1]) and not any(x.startswith((".", "_")) for x in parts)


@contextmanager
def replaced_on_success(path: Path):
    """A staging path beside ``path`` (<path>.partial) to write a file or a directory to: on success it
    replaces ``path`` whole (a directory through swap_in), on an error it is removed, so a failed
    export leaves the earlier output as it was, never a readable part of a new one."""
    staging = path.with_name(path.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True) if staging.is_dir() else staging.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True) if staging.is_dir() else staging.unlink(missing_ok=True)
        raise
    if staging.is_dir():
        swap_in(staging, path)
    else:
        staging.replace(path)


class JsonListWriter:
    """Writes a JSON list one record at a time, so an export never holds all records in memory; the
    file appears whole when the writer closes without an error (see replaced_on_success)."""

    def __init__(self, path: Path):
        self._staged = replaced_on_success(path)
        self.f = open(self._staged.__enter__(), "w", encoding="utf-8")
        self.f.write("[")
        self.n = 0

    def add(self, record: dict) -> None:
        # strict JSON, as raypref's other files: a bare NaN is no JSON (jq and JavaScript reject the file)
        self.f.write(("," if self.n else "") + "\n" + strict_json(record, ensure_ascii=False))
        self.n += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.f.write("\n]\n")
        self.f.close()
        self._staged.__exit__(*exc)
