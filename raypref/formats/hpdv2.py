"""HPD v2 (Human Preference Dataset v2, Wu et al. 2023) JSON + image files <-> raypref pairs.

Verified layout (dataset card of ymhao/HPDv2, and the HPSv2 training code that reads it,
tgxs002/HPSv2 hpsv2/src/training/data.py): train.json is a list of
{'human_preference': list[int] (1 marks the preferred image), 'prompt': str, 'file_path': list[str]};
test.json is a list of {'prompt': str, 'image_path': list[str], 'rank': list[int] (averaged rank of
the image at the same index), 'raw_annotations': list[{'rank', 'user_hash'}]}. A lower rank is
better (HPSv2's evaluation ranks images by descending score, best = 0, and compares with 'rank').
Image paths are relative to an image folder given separately to HPSv2; the hub ships the images
as train.tar.gz / test.tar.gz, and the HPSv2 README gives the unpacked layout: HPD/train/ and
HPD/test/ hold the images, beside HPD/train.json and HPD/test.json. So the image root defaults to
<json dir>/<json stem>/ (train.json -> train/) when it exists, else the JSON's own folder; pass
``image_root`` otherwise. (That README spells the per-annotator key 'raw_annotation'; the reader
ignores it either way.)

Reading: ``path`` is a JSON file, or a directory holding train.json and/or test.json. A record
with 'human_preference' (train) gives one pair per non-preferred image (preferred chosen,
label 1.0); a record with 'rank' (test) expands to all k(k-1)/2 pairs by rank: the lower rank is
chosen (1.0), equal ranks are a tie (label 0.5, the earlier image in image_path on the chosen
side). 'image_path' and 'file_path' are both accepted in either kind of record. Ids are the
image paths without extension (the source's own names); the JSON has no generator. Quarantined:
record not an object, missing 'prompt' / image list / label key, empty prompt,
human_preference not marking exactly one image with 1, rank list of the wrong length or not
finite numbers, fewer than two images listed (no pair: an empty list, or one image), and (per image;
the record's other images still pair) a missing or undecodable file.

Writing: <path>/<split>.json plus the images under <path>/<split>/, named <id>.<ext> (ext from the
image bytes, bytes as they are). split='train' writes one pairwise record per pair
(human_preference [1, 0], chosen first); it has no ties, so a label-0.5 pair goes to the
quarantine. split='test' writes one ranking record per pair (rank [1, 2], a tie [1, 1],
raw_annotations []), which keeps ties. Scores and generators are not part of the format.
"""

from __future__ import annotations

import math

from pathlib import Path
from typing import Iterator

import pyarrow as pa

from raypref import schema as S
from raypref.formats._common import (
    DEFAULT_BATCH_ROWS, STRICT, TIE, FormatError, JsonListWriter, Quarantine, as_tables, batched, concat,
    file_name_for, first_json_records, id_from_path, nonempty_text, pair_row, pairs_table, ranking_pairs, read_image,
    read_json_list, replaced_on_success, write_image, writable,
)

NAME = "hpdv2"
LABEL_SOURCE = "human:hpdv2"
SPLITS = ("train", "test")


def _json_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [path / f"{s}.json" for s in SPLITS if (path / f"{s}.json").is_file()]
        if files:
            return files
        raise FormatError(f"{NAME}: {path} holds neither train.json nor test.json")
    raise FileNotFoundError(f"{NAME}: no such file or directory: {path}")


def _image_root(json_file: Path, image_root) -> Path:
    if image_root is not None:
        return Path(image_root)
    d = json_file.parent / json_file.stem
    return d if d.is_dir() else json_file.parent


def _order(rec: dict, n: int, where: str, q: Quarantine) -> list[tuple[int, int, float]] | None:
    """(chosen index, rejected index, label) for one record, or None if its label is unusable."""
    if "human_preference" in rec:
        pref = rec["human_preference"]
        if not isinstance(pref, list) or len(pref) != n or any(p not in (0, 1) for p in pref) or sum(pref) != 1:
            q.add(where, f"bad label: human_preference {pref!r} must mark exactly one of {n} images with 1")
            return None
        w = pref.index(1)
        return [(w, j, STRICT) for j in range(n) if j != w]
    ranks = rec["rank"]
    if (not isinstance(ranks, list) or len(ranks) != n
            or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) for r in ranks)):
        # json reads NaN and Infinity as floats; NaN compares false both ways and would pair as a tie
        q.add(where, f"bad label: rank {ranks!r} must be {n} finite numbers")
        return None
    return ranking_pairs(ranks)


def _record_pairs(rec, where: str, root: Path, q: Quarantine) -> list[dict]:
    if not isinstance(rec, dict):
        q.add(where, f"bad record: expected an object, found {type(rec).__name__}")
        return []
    if "prompt" not in rec:
        q.add(where, "missing key: 'prompt'")
        return []
    if "human_preference" not in rec and "rank" not in rec:
        q.add(where, "missing key: neither 'human_preference' (train.json) nor 'rank' (test.json)")
        return []
    key = next((k for k in ("file_path", "image_path") if k in rec), None)
    if key is None or not isinstance(rec[key], list):
        q.add(where, "missing key: 'file_path' / 'image_path' (a list of image paths)")
        return []
    if not nonempty_text(rec["prompt"]):
        q.add(where, f"empty caption: {rec['prompt']!r}")
        return []
    paths = rec[key]
    if len(paths) < 2:  # passes every other check, yet gives no pair
        q.add(where, f"no pair: {key} lists {len(paths)} image(s); a pair needs two")
        return []
    order = _order(rec, len(paths), where, q)
    if order is None:
        return []
    images = [read_image(root, p, f"{where}.{key}[{k}]", q) for k, p in enumerate(paths)]
    return [
        pair_row(rec["prompt"], id_from_path(paths[c]), id_from_path(paths[j]), images[c], images[j], lab, LABEL_SOURCE)
        for c, j, lab in order if images[c] is not None and images[j] is not None
    ]


def _misfit(rec) -> str | None:
    """What an HPD v2 record lacks, or None."""
    if not isinstance(rec, dict):
        return f"is not an object (found {type(rec).__name__})"
    if "prompt" not in rec:
        return "has no key 'prompt'"
    if "human_preference" not in rec and "rank" not in rec:
        return "has neither 'human_preference' (train.json) nor 'rank' (test.json)"
    if not any(isinstance(rec.get(k), list) for k in ("file_path", "image_path")):
        return "has no 'file_path' / 'image_path' list of image paths"
    return None


def check(path) -> None:
    """Before a run: each JSON is a list whose first records (one of them at least) are HPD v2 records; a
    bad record further on is the reader's to quarantine."""
    for jf in _json_files(Path(path)):
        recs = first_json_records(jf, NAME)
        if recs and all(_misfit(r) for r in recs):
            raise FormatError(f"{NAME}: {jf} holds no HPD v2 records: its first record {_misfit(recs[0])} "
                              f"(as do the first {len(recs)})")


def source_paths(path, image_root=None) -> list[Path]:
    """The files a read opens: each JSON, then the image files its records name, under the image
    root the reader uses (present or not, so one added later counts); no folder around them."""
    files: list[Path] = []
    for jf in _json_files(Path(path)):
        root = _image_root(jf, image_root)
        files.append(jf)
        for rec in read_json_list(jf, NAME):
            key = next((k for k in ("file_path", "image_path") if k in rec), None) if isinstance(rec, dict) else None
            if key is not None and isinstance(rec[key], list):
                files += [root / p for p in rec[key] if nonempty_text(p)]
    return list(dict.fromkeys(files))  # an image in many train records counts once


def iter_read(path, quarantine: Quarantine | None = None, batch_rows: int = DEFAULT_BATCH_ROWS,
              image_root=None) -> Iterator[pa.Table]:
    q = quarantine if quarantine is not None else Quarantine(f"import:{NAME}")
    for jf in _json_files(Path(path)):
        root = _image_root(jf, image_root)
        records = read_json_list(jf, NAME)
        pairs = (p for i, rec in enumerate(records) for p in _record_pairs(rec, f"{jf.name}[{i}]", root, q))
        for rows in batched(pairs, batch_rows):
            yield pairs_table(rows)


def read(path, quarantine: Quarantine | None = None, image_root=None) -> pa.Table:
    return concat(iter_read(path, quarantine, image_root=image_root))


def write(table_or_batches, path, quarantine: Quarantine | None = None, split: str = "train") -> int:
    """Write pairs as <path>/<split>.json + <path>/<split>/ images; returns the number of pairs written.
    Both are written beside the earlier export's and put in place on success (the JSON, then the
    images, two renames apart): a failed export leaves the earlier one, and no stale image stays."""
    if split not in SPLITS:
        raise ValueError(f"{NAME}: split must be one of {SPLITS}, got {split!r}")
    q = quarantine if quarantine is not None else Quarantine(f"export:{NAME}")
    root = Path(path)
    written: set = set()
    with replaced_on_success(root / split) as img_dir, JsonListWriter(root / f"{split}.json") as out:
        img_dir.mkdir(parents=True)  # an export of no pairs has an empty image folder
        for t in as_tables(table_or_batches):
            t = writable(t, q, NAME, allow_ties=split == "test")
            cols = t.select([S.PROMPT, S.CHOSEN_ID, S.REJECTED_ID, S.CHOSEN_IMAGE, S.REJECTED_IMAGE, S.LABEL]).to_pydict()
            for k in range(t.num_rows):
                files = [file_name_for(cols[S.CHOSEN_ID][k], cols[S.CHOSEN_IMAGE][k]),
                         file_name_for(cols[S.REJECTED_ID][k], cols[S.REJECTED_IMAGE][k])]
                write_image(img_dir, files[0], cols[S.CHOSEN_IMAGE][k], written)
                write_image(img_dir, files[1], cols[S.REJECTED_IMAGE][k], written)
                if split == "train":
                    out.add({"human_preference": [1, 0], "prompt": cols[S.PROMPT][k], "file_path": files})
                else:
                    rank = [1, 1] if cols[S.LABEL][k] == TIE else [1, 2]
                    out.add({"prompt": cols[S.PROMPT][k], "image_path": files, "rank": rank, "raw_annotations": []})
    return out.n
