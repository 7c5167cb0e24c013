"""ImageRewardDB (Xu et al. 2023) per-prompt image rankings <-> raypref pairs.

Verified layout (dataset card of THUDM/ImageRewardDB on the Hugging Face hub): images live under
images/<split>/<split>_<n>/ (about 500 prompts per folder), each folder with a JSON file of the
same name (images/train/train_1/train_1.json) holding a list of per-image records:
{'image_path': 'images/train/train_1/<uuid>.webp' (relative to the dataset root), 'prompt_id',
'prompt', 'classification', 'image_amount_in_total', 'rank', 'overall_rating',
'image_text_alignment_rating', 'fidelity_rating'}. 'rank' is the image's rank among the prompt's
images, lower is better: ImageReward's own pair builder (THUDM/ImageReward
train/src/rank_pair_dataset.py) makes the lower-ranked image the better one and skips equal ranks.
Images are lossless WebP named by UUID.

Reading: ``path`` is one such JSON file or a directory searched for them (*.json, sorted). The
records of one file are grouped by prompt_id (a prompt's images share a folder); each group
expands to all k(k-1)/2 pairs by rank: the lower rank is chosen (label 1.0); equal ranks are kept
as a tie (label 0.5, the earlier record on the chosen side) where ImageReward's trainer drops
them. image_path is resolved against the JSON's folder and its parents (the dataset root), then
the JSON's folder by file name. Ids: the image path relative to the JSON's folder, without
extension (the UUID for the real data). No generator column (all images come from DiffusionDB).
The ratings are not carried into the pairs. Quarantined, per image record (the group's other
images still pair): record not an object, a missing key (prompt_id, prompt, image_path, rank),
empty prompt, rank not a finite number, missing or undecodable image file, and the one usable
image of a prompt_id (no pair: the prompt has one image in the file, or its others were quarantined).

Writing: one group per pair (prompt_id a hash of the pair), ranks 1 (chosen) and 2 (rejected), a
tie 1 and 1; images as <id>.<ext> (ext from the bytes, bytes as they are) under
<path>/images/<split>/<split>_<n>/ with the JSON <split>_<n>.json beside them,
``groups_per_folder`` groups per folder. classification and the three ratings are written null
(not part of the pairs schema); image_amount_in_total is 2.
"""

from __future__ import annotations

import math

from pathlib import Path
from typing import Iterator

import pyarrow as pa

from raypref import schema as S
from raypref.formats._common import (
    DEFAULT_BATCH_ROWS, TIE, FormatError, JsonListWriter, data_files, Quarantine, as_tables, batched, concat,
    file_name_for, first_json_records, id_from_path, image_file, nonempty_text, pair_row, pairs_table, ranking_pairs,
    read_json_list, replaced_on_success, write_image, writable,
)

NAME = "imagereward_db"
LABEL_SOURCE = "human:imagereward_db"
KEYS = ("prompt_id", "prompt", "image_path", "rank")


def _json_files(path: Path) -> list[Path]:
    return data_files(path, NAME, ".json")


class _Resolver:
    """Finds an image_path's file: against the JSON's folder and its parents (the dataset root,
    found once per file), then the JSON's folder by file name."""

    def __init__(self, json_file: Path):
        self.folder = json_file.parent
        self.bases = [self.folder, *self.folder.parents]
        self.base: Path | None = None

    def __call__(self, rel: str) -> Path:
        if self.base is not None and (self.base / rel).is_file():
            return self.base / rel
        for b in self.bases:
            if (b / rel).is_file():
                self.base = b
                return b / rel
        return self.folder / Path(rel).name

    def image_id(self, f: Path) -> str:
        try:
            return id_from_path(f.relative_to(self.folder).as_posix())
        except ValueError:
            return f.stem


def _checked(rec, where: str, q: Quarantine) -> str | None:
    """The image_path of a usable image record, or None (quarantined): the reader looks for no file of it."""
    if not isinstance(rec, dict):
        q.add(where, f"bad record: expected an object, found {type(rec).__name__}")
        return None
    missing = [k for k in KEYS if k not in rec]
    if missing:
        q.add(where, f"missing key: {missing[0]!r}")
        return None
    if not nonempty_text(rec["prompt"]):
        q.add(where, f"empty caption: {rec['prompt']!r}")
        return None
    rank = rec["rank"]
    if not isinstance(rank, (int, float)) or isinstance(rank, bool) or not math.isfinite(rank):
        q.add(where, f"bad label: rank {rank!r} is not a finite number")  # NaN would pair as a tie with every image
        return None
    if not nonempty_text(rec["image_path"]):
        q.add(where, f"missing key: image_path is empty ({rec['image_path']!r})")
        return None
    return rec["image_path"]


def _image(rec, where: str, resolve: _Resolver, q: Quarantine):
    """(prompt_id, prompt, rank, id, bytes) of one image record, or None (quarantined)."""
    if _checked(rec, where, q) is None:
        return None
    f = resolve(rec["image_path"])
    missing = f"missing image file: {rec['image_path']} (looked under {resolve.folder} and its parents)"
    data = image_file(f, where, q, missing)
    if data is None:
        return None
    return rec["prompt_id"], rec["prompt"], rec["rank"], resolve.image_id(f), data


def _file_pairs(jf: Path, q: Quarantine) -> Iterator[dict]:
    resolve = _Resolver(jf)
    groups: dict = {}
    for i, rec in enumerate(read_json_list(jf, NAME)):
        img = _image(rec, f"{jf.name}[{i}]", resolve, q)
        if img is not None:
            groups.setdefault(str(img[0]), []).append((*img, i))
    for pid, imgs in groups.items():
        if len(imgs) < 2:  # a lone image pairs with nothing; it is set aside, not dropped
            q.add(f"{jf.name}[{imgs[0][5]}]", f"no pair: the only usable image of prompt_id {pid!r} in {jf.name}")
            continue
        prompt = imgs[0][1]
        for c, j, lab in ranking_pairs([im[2] for im in imgs]):
            yield pair_row(prompt, imgs[c][3], imgs[j][3], imgs[c][4], imgs[j][4], lab, LABEL_SOURCE)


def _misfit(rec) -> str | None:
    if not isinstance(rec, dict):
        return f"is not an object (found {type(rec).__name__})"
    missing = [k for k in KEYS if k not in rec]
    return f"has no key {missing[0]!r} (required: {list(KEYS)})" if missing else None


def check(path) -> None:
    """Before a run: each JSON is a list whose first records (one of them at least) are ImageRewardDB
    image records; a bad record further on is the reader's to quarantine."""
    for jf in _json_files(Path(path)):
        recs = first_json_records(jf, NAME)
        if recs and all(_misfit(r) for r in recs):
            raise FormatError(f"{NAME}: {jf} holds no ImageRewardDB records: its first record {_misfit(recs[0])} "
                              f"(as do the first {len(recs)})")


def source_paths(path) -> list[Path]:
    """The files a read opens: each JSON, then the image file of each usable record as the reader
    resolves it (present or not, so one added later counts); no folder around them."""
    files: list[Path] = []
    for jf in _json_files(Path(path)):
        resolve, q = _Resolver(jf), Quarantine(f"fingerprint:{NAME}")  # the same lookups, in the same order
        files.append(jf)
        files += [resolve(rel) for rec in read_json_list(jf, NAME) if (rel := _checked(rec, "", q)) is not None]
    return list(dict.fromkeys(files))


def iter_read(path, quarantine: Quarantine | None = None, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.Table]:
    q = quarantine if quarantine is not None else Quarantine(f"import:{NAME}")
    for jf in _json_files(Path(path)):
        for rows in batched(_file_pairs(jf, q), batch_rows):
            yield pairs_table(rows)


def read(path, quarantine: Quarantine | None = None) -> pa.Table:
    return concat(iter_read(path, quarantine))


def _record(rel: str, group: str, prompt: str, rank: int) -> dict:
    return {"image_path": rel, "prompt_id": group, "prompt": prompt, "classification": None,
            "image_amount_in_total": 2, "rank": rank, "overall_rating": None,
            "image_text_alignment_rating": None, "fidelity_rating": None}


def write(table_or_batches, path, quarantine: Quarantine | None = None, split: str = "train",
          groups_per_folder: int = 500) -> int:
    """Write each pair as a 2-image ranking group in ImageRewardDB's folder layout
    (<path>/images/<split>/<split>_<i>/, each folder with its JSON); returns pairs written. The split
    is written beside its earlier export (<split>.partial) and put in place whole: a failed export
    leaves the earlier one, and a smaller one leaves no folder of it behind."""
    q = quarantine if quarantine is not None else Quarantine(f"export:{NAME}")
    written: set = set()
    out, folder_idx, n = None, 0, 0
    with replaced_on_success(Path(path) / "images" / split) as staging:
        staging.mkdir(parents=True)  # an empty export is an empty split
        try:
            for t in as_tables(table_or_batches):
                t = writable(t, q, NAME)
                cols = t.select([S.PROMPT, S.CHOSEN_ID, S.REJECTED_ID, S.CHOSEN_IMAGE, S.REJECTED_IMAGE, S.LABEL]).to_pydict()
                for k in range(t.num_rows):
                    if n % groups_per_folder == 0:  # a new folder with its own JSON, as the real dataset is cut
                        if out is not None:
                            out.__exit__(None, None, None)
                        folder_idx += 1
                        folder = f"{split}_{folder_idx}"
                        out = JsonListWriter(staging / folder / f"{folder}.json")
                    prompt = cols[S.PROMPT][k]
                    group = S.stable_id(NAME, prompt, cols[S.CHOSEN_ID][k], cols[S.REJECTED_ID][k])
                    ranks = (1, 1) if cols[S.LABEL][k] == TIE else (1, 2)
                    for side, rank in zip((S.CHOSEN_ID, S.REJECTED_ID), ranks):
                        data = cols[S.CHOSEN_IMAGE if side == S.CHOSEN_ID else S.REJECTED_IMAGE][k]
                        name = file_name_for(cols[side][k], data)
                        write_image(staging, f"{folder}/{name}", data, written)
                        out.add(_record(f"images/{split}/{folder}/{name}", group, prompt, rank))  # as it will be
                    n += 1
        except BaseException as e:  # the open folder's JSON writer goes with its staging
            if out is not None:
                out.__exit__(type(e), e, e.__traceback__)
            raise
        if out is not None:
            out.__exit__(None, None, None)
    return n
