"""Import/export of public preference formats (round trips, hand-written real layouts, quarantine)
and AI re-labelling of imported pairs through Ray."""

from __future__ import annotations

import json
from typing import get_args

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raypref import images as I
from raypref import schema as S
from raypref.formats import FORMATS, FormatError, Quarantine, convert, iter_pairs, read_pairs, write_pairs
from raypref.formats._common import content_id, image_problem, ranking_pairs


def flat(color, size=16, fmt="PNG") -> bytes:
    return I.encode(Image.new("RGB", (size, size), color), fmt)


def noise(seed, size=16) -> bytes:
    rng = np.random.default_rng(seed)
    return I.encode(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)), "PNG")


RED, GREEN, BLUE_JPEG, NOISE, GRAY = flat((255, 0, 0)), flat((0, 255, 0)), flat((0, 0, 255), fmt="JPEG"), noise(0), flat((128, 128, 128))


def pairs_table(rows) -> pa.Table:
    """rows: (prompt, chosen_id, rejected_id, chosen bytes, rejected bytes, label, chosen gen, rejected gen)."""
    out = []
    for p, ci, ri, cb, rb, lab, cg, rg in rows:
        out.append({S.PROMPT_ID: S.prompt_id(p), S.PROMPT: p, S.CHOSEN_ID: ci, S.REJECTED_ID: ri, S.CHOSEN_IMAGE: cb,
                    S.REJECTED_IMAGE: rb, S.CHOSEN_SCORE: 2.0, S.REJECTED_SCORE: 1.0, S.MARGIN: 1.0, S.QUALITY: 1.0,
                    S.LABEL_SOURCE: "ai:test", S.LABEL: lab, S.CHOSEN_GENERATOR: cg, S.REJECTED_GENERATOR: rg})
    return pa.Table.from_pylist(out, schema=S.PAIRS_SCHEMA)


SOURCE = pairs_table([
    ("a red circle", "s-red", "s-green", RED, GREEN, 1.0, "g1", "g2"),
    ("a blue square", "s-blue", "s-noise", BLUE_JPEG, NOISE, 1.0, "g2", "g1"),
    ("two stars", "s-gray", "s-red", GRAY, RED, 0.5, "g1", "g1"),  # a tie
])


def rows(t: pa.Table, *cols) -> list[tuple]:
    d = t.select(list(cols)).to_pydict()
    return sorted(zip(*(d[c] for c in cols)))


def target(tmp_path, fmt):
    return tmp_path / ("out.parquet" if fmt in ("pickapic", "agfsync") else "out")


# fmt, write options, keeps ids, keeps generators, keeps ties
ROUND_TRIPS = [
    ("raypref", {}, True, True, True),
    ("pickapic", {}, True, True, True),
    ("hpdv2", {"split": "test"}, True, False, True),
    ("imagereward_db", {}, True, False, True),
    ("agfsync", {}, False, False, False),
]


@pytest.mark.parametrize("fmt,opts,keeps_ids,keeps_gens,keeps_ties", ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS])
def test_round_trip(tmp_path, fmt, opts, keeps_ids, keeps_gens, keeps_ties):
    out = target(tmp_path, fmt)
    q_out, q_in = Quarantine("export"), Quarantine("import")
    n = write_pairs(SOURCE, out, fmt, q_out, **opts)
    back = read_pairs(out, fmt, q_in)
    expected = SOURCE if keeps_ties else SOURCE.filter(pa.compute.equal(SOURCE.column(S.LABEL), 1.0))
    assert n == back.num_rows == expected.num_rows and len(q_in) == 0
    assert len(q_out) == SOURCE.num_rows - expected.num_rows
    if not keeps_ties:
        assert q_out.counts() == {"tie not representable": 1} and "two stars" in q_out.rows[0][S.ROW]
    # prompts, image bytes (so pixels too), labels and ties survive
    cols = (S.PROMPT, S.CHOSEN_IMAGE, S.REJECTED_IMAGE, S.LABEL)
    assert rows(back, *cols) == rows(expected, *cols)
    assert back.schema.field(S.LABEL).type == pa.float32()
    if keeps_ids:
        assert rows(back, S.PROMPT, S.CHOSEN_ID, S.REJECTED_ID) == rows(expected, S.PROMPT, S.CHOSEN_ID, S.REJECTED_ID)
    else:  # no ids in the format: a hash of the image bytes
        assert set(back.column(S.CHOSEN_ID).to_pylist()) == {content_id(b) for b in expected.column(S.CHOSEN_IMAGE).to_pylist()}
    if keeps_gens:
        assert rows(back, S.PROMPT, S.CHOSEN_GENERATOR, S.REJECTED_GENERATOR) == rows(
            expected, S.PROMPT, S.CHOSEN_GENERATOR, S.REJECTED_GENERATOR)
    assert all(p == S.prompt_id(t) for p, t in zip(back.column(S.PROMPT_ID).to_pylist(), back.column(S.PROMPT).to_pylist()))


@pytest.mark.parametrize("fmt,opts,keeps_ids,keeps_gens,keeps_ties", ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS])
def test_a_failed_export_leaves_the_earlier_one(tmp_path, fmt, opts, keeps_ids, keeps_gens, keeps_ties):
    out = target(tmp_path, fmt)
    strict = SOURCE.slice(0, 2)
    write_pairs(strict.slice(0, 1), out, fmt, Quarantine("export"), **opts)

    def failing():  # an input that breaks after its first batch, as a bad shard would
        yield strict.slice(1, 1)
        raise FormatError("shard 2: broken")

    with pytest.raises(FormatError, match="shard 2: broken"):
        write_pairs(failing(), out, fmt, Quarantine("export"), **opts)
    assert read_pairs(out, fmt).column(S.PROMPT).to_pylist() == ["a red circle"]  # the earlier export, whole
    assert not [p for p in out.parent.rglob("*") if p.name.endswith(".partial")]  # no staging left behind


def test_raypref_pairs_replace_the_earlier_parts_whole(tmp_path, monkeypatch):
    import raypref.formats.raypref_pairs as RP
    import raypref.resume

    out = tmp_path / "pairs"
    assert write_pairs(SOURCE, out, "raypref", rows_per_file=1) == SOURCE.num_rows > 2
    before = sorted(p.name for p in out.iterdir())
    seen = []

    def swap(staging, target):  # the earlier parts are all there until the new ones, whole, are renamed over them
        seen.append((sorted(p.name for p in target.iterdir()), sorted(p.name for p in staging.iterdir())))
        raypref.resume.swap_in(staging, target)

    monkeypatch.setattr(RP, "swap_in", swap)
    assert write_pairs(SOURCE.slice(0, 2), out, "raypref", rows_per_file=1) == 2
    assert seen == [(before, ["part-00000.parquet", "part-00001.parquet"])]
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]  # no stale part
    # a crash between swap_in's two renames leaves the earlier parts aside in <out>.old: the next write puts them
    # back before anything else, so a write that then fails leaves them where they were
    out.rename(out.with_name("pairs.old"))

    def failing():
        yield SOURCE.slice(0, 1)
        raise FormatError("broken")

    with pytest.raises(FormatError):
        write_pairs(failing(), out, "raypref")
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert not (tmp_path / "pairs.old").exists() and read_pairs(out, "raypref").num_rows == 2
    (out / "notes.txt").write_text("mine")  # a directory holding anything else is not replaced
    with pytest.raises(ValueError, match=r"pairs output .*pairs holds 'notes.txt' beside earlier pairs parts"):
        write_pairs(SOURCE, out, "raypref")
    assert (out / "notes.txt").read_text() == "mine" and len(seen) == 1


@pytest.mark.parametrize("fmt", ["hpdv2", "imagereward_db"])
def test_a_smaller_export_leaves_no_file_of_the_earlier_one(tmp_path, fmt):
    out = tmp_path / "out"
    strict = SOURCE.filter(pa.compute.equal(SOURCE.column(S.LABEL), 1.0))
    opts = {"groups_per_folder": 1} if fmt == "imagereward_db" else {}  # a folder a pair
    assert write_pairs(strict, out, fmt, Quarantine("export"), **opts) == strict.num_rows > 1
    assert write_pairs(strict.slice(0, 1), out, fmt, Quarantine("export"), **opts) == 1
    assert read_pairs(out, fmt).column(S.CHOSEN_ID).to_pylist() == strict.column(S.CHOSEN_ID).to_pylist()[:1]
    assert len([f for f in out.rglob("*.png")]) == 2  # the one pair's two images, no stale one
    assert not list(tmp_path.glob("*.partial"))


def test_hpdv2_train_layout_has_no_ties_and_convert_writes_quarantine_beside_output(tmp_path):
    src = tmp_path / "pap.parquet"
    write_pairs(SOURCE, src, "pickapic")
    s = convert(src, "pickapic", tmp_path / "hpd", "hpdv2", write_opts={"split": "train"})
    assert s["pairs_written"] == 2 and s["quarantined_by_reason"] == {"tie not representable": 1}
    q = pq.read_table(tmp_path / "hpd.quarantine.parquet")
    assert q.column(S.STAGE).to_pylist() == ["export:hpdv2"] and "two stars" in q.column(S.ROW)[0].as_py()
    train = json.loads((tmp_path / "hpd" / "train.json").read_text())
    assert [r["human_preference"] for r in train] == [[1, 0], [1, 0]]
    assert all((tmp_path / "hpd" / "train" / f).is_file() for r in train for f in r["file_path"])


# ---- hand-written files in each dataset's real layout ----

def write_pickapic_file(path, rows, row_group_size=None, **overrides):
    """rows: (caption, jpg_0, jpg_1, label_0, uid_0, uid_1, model_0, model_1); the real Pick-a-Pic v2 columns
    (``overrides``: whole columns to replace)."""
    n = len(rows)
    cols = {
        "are_different": [r[1] != r[2] for r in rows], "best_image_uid": [r[4] if r[3] == 1 else r[5] for r in rows],
        "caption": [r[0] for r in rows], "created_at": pa.array([None] * n, pa.timestamp("ns")), "has_label": [True] * n,
        "image_0_uid": [r[4] for r in rows], "image_0_url": [f"https://x/{r[4]}.png" for r in rows],
        "image_1_uid": [r[5] for r in rows], "image_1_url": [f"https://x/{r[5]}.png" for r in rows],
        "jpg_0": pa.array([r[1] for r in rows], pa.binary()), "jpg_1": pa.array([r[2] for r in rows], pa.binary()),
        "label_0": pa.array([r[3] for r in rows], pa.float64()),
        "label_1": pa.array([None if r[3] is None else 1 - r[3] for r in rows], pa.float64()),
        "model_0": [r[6] for r in rows], "model_1": [r[7] for r in rows], "ranking_id": list(range(n)), "user_id": [7] * n,
        "num_example_per_prompt": [1] * n, "__index_level_0__": list(range(n)),
    }
    cols.update(overrides)
    pq.write_table(pa.table(cols), path, row_group_size=row_group_size)


def test_reads_pickapic_v2_layout_in_batches(tmp_path):
    f = tmp_path / "train-00000-of-00001.parquet"
    write_pickapic_file(f, [
        ("a cat", RED, GREEN, 1.0, "u0", "u1", "sdxl", "sd15"),
        ("a dog", BLUE_JPEG, NOISE, 0.0, "u2", "u3", "sdxl", "sd15"),
        ("a cow", GRAY, RED, 0.5, "u4", "u5", "sd15", "sdxl"),
    ], row_group_size=2)
    batches = list(iter_pairs(f, "pickapic", batch_rows=2))
    assert [b.num_rows for b in batches] == [2, 1]  # streamed batch by batch, never the whole file
    t = pa.concat_tables(batches)
    assert rows(t, S.PROMPT, S.CHOSEN_ID, S.REJECTED_ID, S.LABEL, S.CHOSEN_GENERATOR, S.LABEL_SOURCE) == [
        ("a cat", "u0", "u1", 1.0, "sdxl", "human:pickapic"),
        ("a cow", "u4", "u5", 0.5, "sd15", "human:pickapic"),  # tie: image 0 chosen (source order)
        ("a dog", "u3", "u2", 1.0, "sd15", "human:pickapic"),  # label_0 = 0: image 1 won
    ]
    dog = t.filter(pa.compute.equal(t.column(S.PROMPT), "a dog"))
    assert dog.column(S.CHOSEN_IMAGE)[0].as_py() == NOISE and dog.column(S.CHOSEN_SCORE).null_count == 1


def test_pickapic_writer_writes_row_groups_in_the_real_columns(tmp_path):
    out = tmp_path / "w.parquet"
    # the third batch repeats the first's caption: its count spans row groups
    write_pairs([SOURCE.slice(0, 2), SOURCE.slice(2), SOURCE.slice(0, 1)], out, "pickapic")
    f = pq.ParquetFile(out)
    assert f.num_row_groups == 3
    assert f.schema_arrow.names == ["are_different", "best_image_uid", "caption", "created_at", "has_label", "image_0_uid",
                                    "image_0_url", "image_1_uid", "image_1_url", "jpg_0", "jpg_1", "label_0", "label_1",
                                    "model_0", "model_1", "ranking_id", "user_id", "num_example_per_prompt", "__index_level_0__"]
    t = f.read()
    assert t.column("caption").to_pylist() == ["a red circle", "a blue square", "two stars", "a red circle"]
    label_0 = t.column("label_0").to_pylist()
    assert label_0[2] == 0.5 and {label_0[0], label_0[1]} <= {0.0, 1.0} and label_0[3] == label_0[0]  # the same pair, the same side
    assert [a + b for a, b in zip(label_0, t.column("label_1").to_pylist())] == [1.0] * 4
    # the winner's id, bytes and model sit on the side label_0 names
    won = {1.0: "0", 0.0: "1"}
    d = t.to_pydict()
    for i, (cid, img, gen) in enumerate([("s-red", RED, "g1"), ("s-blue", BLUE_JPEG, "g2"), (None, None, None), ("s-red", RED, "g1")]):
        if cid is not None:
            k = won[label_0[i]]
            assert (d[f"image_{k}_uid"][i], d[f"jpg_{k}"][i], d[f"model_{k}"][i]) == (cid, img, gen)
    assert (d["image_0_uid"][2], d["jpg_0"][2]) == ("s-gray", GRAY)  # a tie keeps the chosen image in jpg_0
    assert t.column("best_image_uid").to_pylist() == ["s-red", "s-blue", None, "s-red"]
    # as in Pick-a-Pic: each row's caption count in the file (PickScore divides its loss by it)
    assert t.column("num_example_per_prompt").to_pylist() == [2, 1, 1, 2]
    assert t.column("__index_level_0__").to_pylist() == [0, 1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.parquet"]  # no first-pass file left


def test_pickapic_writer_puts_winners_on_both_sides(tmp_path):
    # 200 strict pairs: a seeded coin per pair, so about half the winners are in jpg_1 (binomial
    # 200, 1/2: 70..130 fails with probability below 1e-4), the same on a second export
    many = pairs_table([(f"p{i}", f"c{i}", f"r{i}", RED, GREEN, 1.0, "g1", "g2") for i in range(200)])
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    write_pairs(many, a, "pickapic")
    write_pairs(many, b, "pickapic")
    label_0 = pq.read_table(a).column("label_0").to_pylist()
    assert 70 <= label_0.count(0.0) <= 130 and label_0.count(0.0) + label_0.count(1.0) == 200
    assert pq.read_table(b).column("label_0").to_pylist() == label_0
    back = read_pairs(a, "pickapic")
    assert rows(back, S.CHOSEN_ID, S.REJECTED_ID, S.CHOSEN_IMAGE) == rows(many, S.CHOSEN_ID, S.REJECTED_ID, S.CHOSEN_IMAGE)


def test_reads_hpdv2_layout(tmp_path):
    for split, files in (("train", {"a.jpg": RED, "b.jpg": GREEN}), ("test", {"c.png": GRAY, "d.png": NOISE, "e.png": BLUE_JPEG})):
        for name, data in files.items():
            (tmp_path / split).mkdir(exist_ok=True)
            (tmp_path / split / name).write_bytes(data)
    (tmp_path / "train.json").write_text(json.dumps([{"human_preference": [0, 1], "prompt": "p1", "file_path": ["a.jpg", "b.jpg"]}]))
    (tmp_path / "test.json").write_text(json.dumps([{"prompt": "p2", "image_path": ["c.png", "d.png", "e.png"], "rank": [2, 1, 2],
                                                      "raw_annotations": [{"rank": [2, 1, 2], "user_hash": "h"}]}]))
    t = read_pairs(tmp_path, "hpdv2")
    # test ranks [2, 1, 2]: d beats c and e (lower rank is better), c and e tie (c first in image_path)
    assert rows(t, S.PROMPT, S.CHOSEN_ID, S.REJECTED_ID, S.LABEL) == [
        ("p1", "b", "a", 1.0), ("p2", "c", "e", 0.5), ("p2", "d", "c", 1.0), ("p2", "d", "e", 1.0)]
    assert set(t.column(S.LABEL_SOURCE).to_pylist()) == {"human:hpdv2"}
    assert t.filter(pa.compute.equal(t.column(S.CHOSEN_ID), "b")).column(S.CHOSEN_IMAGE)[0].as_py() == GREEN


def test_ranking_expansion_by_hand():
    # ranks of 4 images, lower is better; equal ranks tie with the earlier image chosen
    assert ranking_pairs([3, 1, 2, 1]) == [(1, 0, 1.0), (2, 0, 1.0), (3, 0, 1.0), (1, 2, 1.0), (1, 3, 0.5), (3, 2, 1.0)]


def webp(color) -> bytes:
    buf = I.encode(Image.new("RGB", (8, 8), color), "WEBP")
    assert Image.open(__import__("io").BytesIO(buf)).format == "WEBP"
    return buf


def write_imagereward_folder(root, records_and_images):
    folder = root / "images" / "train" / "train_1"
    folder.mkdir(parents=True)
    recs = []
    for rec, data in records_and_images:
        if data is not None:
            (root / rec["image_path"]).write_bytes(data)
        recs.append(rec)
    (folder / "train_1.json").write_text(json.dumps(recs))
    return folder / "train_1.json"


def ir_record(uuid, prompt_id, prompt, rank, n):
    return {"image_path": f"images/train/train_1/{uuid}.webp", "prompt_id": prompt_id, "prompt": prompt, "classification": "People",
            "image_amount_in_total": n, "rank": rank, "overall_rating": 4, "image_text_alignment_rating": 3, "fidelity_rating": 4}


def test_reads_imagereward_db_layout(tmp_path):
    w = [webp((i * 40, 0, 0)) for i in range(5)]
    write_imagereward_folder(tmp_path, [
        (ir_record("u1", "000864-0061", "a holy woman", 1, 3), w[0]),
        (ir_record("v1", "000001-0001", "a castle", 2, 2), w[3]),
        (ir_record("u2", "000864-0061", "a holy woman", 2, 3), w[1]),
        (ir_record("u3", "000864-0061", "a holy woman", 2, 3), w[2]),
        (ir_record("v2", "000001-0001", "a castle", 1, 2), w[4]),
    ])
    t = read_pairs(tmp_path, "imagereward_db")  # the dataset root: its JSON files are found below it
    assert rows(t, S.PROMPT, S.CHOSEN_ID, S.REJECTED_ID, S.LABEL) == [
        ("a castle", "v2", "v1", 1.0),
        ("a holy woman", "u1", "u2", 1.0), ("a holy woman", "u1", "u3", 1.0), ("a holy woman", "u2", "u3", 0.5)]
    assert t.filter(pa.compute.equal(t.column(S.CHOSEN_ID), "v2")).column(S.CHOSEN_IMAGE)[0].as_py() == w[4]


def test_reads_agfsync_layout(tmp_path):
    img = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    t = pa.table({"caption": ["a lighthouse", "a fox"],
                  "good_jpg": pa.array([{"bytes": RED, "path": "g0.jpg"}, {"bytes": NOISE, "path": "g1.jpg"}], img),
                  "bad_jpg": pa.array([{"bytes": GREEN, "path": "b0.jpg"}, {"bytes": GRAY, "path": "b1.jpg"}], img)})
    pq.write_table(t, tmp_path / "train-00000-of-00025.parquet")
    back = read_pairs(tmp_path, "agfsync")
    assert rows(back, S.PROMPT, S.CHOSEN_ID, S.REJECTED_ID, S.LABEL, S.LABEL_SOURCE) == [
        ("a fox", content_id(NOISE), content_id(GRAY), 1.0, "ai:agfsync"),
        ("a lighthouse", content_id(RED), content_id(GREEN), 1.0, "ai:agfsync")]


# ---- bad rows: counted, quarantined with the reason and where, never a crash ----

def test_pickapic_bad_rows_are_quarantined(tmp_path):
    f = tmp_path / "bad.parquet"
    write_pickapic_file(f, [
        ("ok", RED, GREEN, 1.0, "a", "b", "m", "m"),
        ("bytes", b"not an image", GREEN, 1.0, "c", "d", "m", "m"),
        ("", RED, GREEN, 1.0, "e", "f", "m", "m"),
        ("half", RED, GREEN, 0.3, "g", "h", "m", "m"),
        ("truncated", RED, NOISE[: len(NOISE) // 2], 0.0, "i", "j", "m", "m"),
        ("unlabelled", RED, GREEN, 1.0, "k", "l", "m", "m"),
        ("sum", RED, GREEN, 1.0, "n", "o", "m", "m"),
    ], has_label=[True] * 5 + [False, True], label_1=pa.array([0.0, 0.0, 0.0, 0.7, 1.0, 0.0, 1.0], pa.float64()))
    q = Quarantine("import:pickapic")
    t = read_pairs(f, "pickapic", q)
    assert t.column(S.PROMPT).to_pylist() == ["ok"]
    assert q.counts() == {"undecodable image": 2, "empty caption": 1, "bad label": 2, "no label": 1}
    by_row = {r[S.ROW]: r[S.REASON] for r in q.rows}
    assert by_row["bad.parquet[1]"].startswith("undecodable image: jpg_0")
    assert by_row["bad.parquet[3]"] == "bad label: label_0=0.3 not in {0, 0.5, 1}"
    assert by_row["bad.parquet[4]"].startswith("undecodable image: jpg_1 (OSError: image file is truncated")
    assert by_row["bad.parquet[6]"] == "bad label: label_0 + label_1 = 1.0 + 1.0 != 1"
    assert q.table().schema.equals(S.QUARANTINE_SCHEMA)


def test_wholly_wrong_files_name_the_file_and_column(tmp_path):
    f = tmp_path / "nolabel.parquet"
    pq.write_table(pa.table({"caption": ["x"], "jpg_0": [RED], "jpg_1": [GREEN]}), f)
    with pytest.raises(FormatError, match=r"nolabel\.parquet has no column 'label_0'"):
        read_pairs(f, "pickapic")
    g = tmp_path / "agf.parquet"
    pq.write_table(pa.table({"caption": ["x"], "good_jpg": [RED]}), g)
    with pytest.raises(FormatError, match=r"agf\.parquet has no column 'bad_jpg'"):
        read_pairs(g, "agfsync")
    h = tmp_path / "pairs.parquet"
    pq.write_table(SOURCE.drop_columns([S.CHOSEN_IMAGE]), h)
    with pytest.raises(FormatError, match=r"pairs\.parquet has no column 'chosen_image'"):
        read_pairs(h, "raypref")
    with pytest.raises(ValueError, match="unknown pairs format 'parquet'"):
        read_pairs(h, "parquet")


def test_agfsync_and_raypref_bad_rows(tmp_path):
    pq.write_table(pa.table({"caption": ["ok", "  ", "broken"], "good_jpg": [RED, RED, RED],
                             "bad_jpg": [GREEN, GREEN, GREEN[:20]]}), tmp_path / "a.parquet")
    q = Quarantine("import:agfsync")
    assert read_pairs(tmp_path / "a.parquet", "agfsync", q).num_rows == 1
    assert q.counts() == {"empty caption": 1, "undecodable image": 1} and q.rows[1][S.ROW] == "a.parquet[2]"
    bad = pairs_table([("p", "x", "y", RED, GREEN, 0.3, None, None), ("p", "x", "z", RED, GREEN, 0.5, None, None)])
    pq.write_table(bad, tmp_path / "r.parquet")
    q = Quarantine("import:raypref")
    assert read_pairs(tmp_path / "r.parquet", "raypref", q).column(S.LABEL).to_pylist() == [0.5]
    assert q.rows == [{S.STAGE: "import:raypref", S.ROW: "r.parquet[0]", S.REASON: "bad label: 0.30000001192092896 not in {0.5, 1.0}"}]


def test_accuracy_stages_the_first_pairs_and_keeps_no_stale_quarantine(tmp_path):
    from raypref.pref_accuracy import stage_pairs

    bad = pairs_table([("p", "x", "y", RED, GREEN, 0.3, None, None), ("p", "x", "z", RED, GREEN, 0.5, None, None),
                       ("q", "u", "v", RED, GREEN, 1.0, None, None)])
    pq.write_table(bad, tmp_path / "r.parquet")
    qfile = tmp_path / "acc" / "quarantine.parquet"
    assert stage_pairs(str(tmp_path / "r.parquet"), "raypref", 1, tmp_path / "staged", qfile) == (1, 1)
    assert read_pairs(tmp_path / "staged", "raypref").column(S.CHOSEN_ID).to_pylist() == ["x"]  # the limit: 1
    assert pq.read_table(qfile).column(S.REASON).to_pylist()[0].startswith("bad label")
    pq.write_table(bad.slice(1), tmp_path / "clean.parquet")
    assert stage_pairs(str(tmp_path / "clean.parquet"), "raypref", None, tmp_path / "staged", qfile) == (2, 0)
    assert not qfile.exists()  # a clean rerun leaves no earlier run's quarantine behind
    # pairs a relabel wrote carry their own import_row: the staged copy numbers its rows afresh
    relabelled = bad.slice(1).append_column(S.IMPORT_ROW, pa.array([7, 3], pa.int64()))
    pq.write_table(relabelled, tmp_path / "relabelled.parquet")
    assert stage_pairs(str(tmp_path / "relabelled.parquet"), "raypref", None, tmp_path / "staged", qfile) == (2, 0)
    assert pq.read_table(tmp_path / "staged").column(S.IMPORT_ROW).to_pylist() == [0, 1]


def test_hpdv2_bad_records(tmp_path):
    (tmp_path / "test").mkdir()
    for name, data in (("a.png", RED), ("b.png", GREEN), ("c.png", GRAY), ("bad.png", b"\x89PNG garbage")):
        (tmp_path / "test" / name).write_bytes(data)
    recs = [
        {"image_path": ["a.png", "b.png"], "rank": [1, 2]},  # no prompt
        {"prompt": "x", "file_path": ["a.png", "b.png"], "human_preference": [1, 1]},  # two winners
        {"prompt": "y", "image_path": ["a.png", "b.png"], "rank": [1]},  # rank of the wrong length
        {"prompt": "z", "image_path": ["a.png", "missing.png", "c.png"], "rank": [1, 2, 3]},  # one file missing
        {"prompt": "w", "image_path": ["a.png", "bad.png"], "rank": [2, 1]},  # undecodable file
        "not a record",
        {"prompt": "v", "image_path": ["a.png", "b.png", "c.png"], "rank": [1, float("nan"), 2]},  # NaN: no tie pairs
    ]
    (tmp_path / "test.json").write_text(json.dumps(recs))  # json writes the NaN as NaN, which json.loads reads back
    q = Quarantine("import:hpdv2")
    t = read_pairs(tmp_path / "test.json", "hpdv2", q)
    assert rows(t, S.PROMPT, S.CHOSEN_ID, S.REJECTED_ID) == [("z", "a", "c")]  # the group's other images still pair
    assert q.counts() == {"missing key": 1, "bad label": 3, "missing image file": 1, "undecodable image": 1, "bad record": 1}
    assert {r[S.ROW] for r in q.rows} == {"test.json[0]", "test.json[1]", "test.json[2]", "test.json[3].image_path[1]",
                                          "test.json[4].image_path[1]", "test.json[5]", "test.json[6]"}
    assert q.rows[-1][S.REASON] == "bad label: rank [1, nan, 2] must be 3 finite numbers"


def test_imagereward_db_bad_records(tmp_path):
    no_rank = ir_record("u3", "p", "a", 3, 4)
    del no_rank["rank"]
    jf = write_imagereward_folder(tmp_path, [
        (ir_record("u1", "p", "a", 1, 4), webp((0, 0, 0))),
        (ir_record("u2", "p", "a", 2, 4), b"RIFF....WEBPjunk"),
        (no_rank, webp((9, 9, 9))),
        (ir_record("u4", "p", "a", 4, 4), webp((99, 9, 9))),
        (ir_record("u5", "q", " ", 1, 1), webp((9, 99, 9))),
        (ir_record("u6", "p", "a", float("nan"), 4), webp((9, 9, 99))),  # NaN would tie with every image
    ])
    q = Quarantine("import:imagereward_db")
    t = read_pairs(jf, "imagereward_db", q)
    assert rows(t, S.CHOSEN_ID, S.REJECTED_ID, S.LABEL) == [("u1", "u4", 1.0)]
    assert q.counts() == {"undecodable image": 1, "missing key": 1, "empty caption": 1, "bad label": 1}
    assert [r[S.ROW] for r in q.rows] == ["train_1.json[1]", "train_1.json[2]", "train_1.json[4]", "train_1.json[5]"]
    assert q.rows[1][S.REASON] == "missing key: 'rank'"
    assert q.rows[3][S.REASON] == "bad label: rank nan is not a finite number"


def test_records_and_prompts_with_no_pair_are_quarantined(tmp_path):
    """An HPD v2 record listing fewer than two images, and an ImageRewardDB prompt_id left with one
    usable image, give no pair: each is set aside with its file, record and reason, not dropped."""
    (tmp_path / "test").mkdir()
    for name, data in (("a.png", RED), ("b.png", GREEN)):
        (tmp_path / "test" / name).write_bytes(data)
    recs = [{"prompt": "empty", "image_path": [], "rank": []},
            {"prompt": "one", "image_path": ["a.png"], "rank": [1]},
            {"prompt": "one train", "file_path": ["a.png"], "human_preference": [1]},
            {"prompt": "two", "image_path": ["a.png", "b.png"], "rank": [2, 1]}]
    (tmp_path / "test.json").write_text(json.dumps(recs))
    q = Quarantine("import:hpdv2")
    t = read_pairs(tmp_path / "test.json", "hpdv2", q)
    assert rows(t, S.PROMPT, S.CHOSEN_ID, S.REJECTED_ID) == [("two", "b", "a")]
    assert [(r[S.ROW], r[S.REASON]) for r in q.rows] == [
        ("test.json[0]", "no pair: image_path lists 0 image(s); a pair needs two"),
        ("test.json[1]", "no pair: image_path lists 1 image(s); a pair needs two"),
        ("test.json[2]", "no pair: file_path lists 1 image(s); a pair needs two")]
    jf = write_imagereward_folder(tmp_path / "ir", [
        (ir_record("s1", "solo", "a lone cat", 1, 1), webp((0, 0, 0))),  # the prompt's only image
        (ir_record("u1", "p", "a dog", 1, 2), webp((9, 9, 9))),
        (ir_record("u2", "p", "a dog", 2, 2), b"RIFF....WEBPjunk"),  # its partner undecodable
        (ir_record("v1", "q", "a fox", 1, 2), webp((99, 9, 9))),
        (ir_record("v2", "q", "a fox", 2, 2), webp((9, 99, 9))),
    ])
    q = Quarantine("import:imagereward_db")
    t = read_pairs(jf, "imagereward_db", q)
    assert rows(t, S.CHOSEN_ID, S.REJECTED_ID) == [("v1", "v2")]
    assert [(r[S.ROW], r[S.REASON].split(":")[0]) for r in q.rows] == [
        ("train_1.json[2]", "undecodable image"), ("train_1.json[0]", "no pair"), ("train_1.json[1]", "no pair")]
    assert q.rows[1][S.REASON] == "no pair: the only usable image of prompt_id 'solo' in train_1.json"


def test_hpdv2_image_root_is_read_and_part_of_the_input(tmp_path):
    """image_root: HPD v2 images kept elsewhere than beside the JSON are read from there and counted in
    the input's files; a format whose reader takes no image_root refuses it, naming it."""
    from raypref.formats import first_pairs, input_fingerprint, source_paths

    write_pairs(SOURCE, tmp_path / "h", "hpdv2", split="test")
    (tmp_path / "h" / "test").rename(tmp_path / "imgs")
    js, imgs = tmp_path / "h" / "test.json", tmp_path / "imgs"
    q = Quarantine("import:hpdv2")
    assert read_pairs(js, "hpdv2", q).num_rows == 0 and len(q) == 6  # the layout's folder is gone
    got = pa.concat_tables(first_pairs(js, "hpdv2", Quarantine("x"), None, "read", image_root=imgs))
    assert rows(got, S.CHOSEN_ID, S.REJECTED_ID, S.IMPORT_ROW) == [("s-blue", "s-noise", 1), ("s-gray", "s-red", 2),
                                                                   ("s-red", "s-green", 0)]
    named = {js, *imgs.iterdir()}  # the JSON and the images it names, no folder
    assert set(source_paths(js, "hpdv2", image_root=imgs)) == named == set(source_paths(tmp_path / "h", "hpdv2", image_root=imgs))
    before = input_fingerprint(js, "hpdv2", image_root=imgs)
    assert before != input_fingerprint(js, "hpdv2")
    (imgs / "s-red.png").write_bytes(GRAY)  # fixed in place, the JSON unchanged
    assert input_fingerprint(js, "hpdv2", image_root=imgs) != before
    f = tmp_path / "pick.parquet"
    write_pickapic_file(f, [("p", RED, GREEN, 1.0, "a", "b", "m", "m")])
    for fmt, path in (("pickapic", f), ("imagereward_db", js)):
        with pytest.raises(ValueError, match=f"{fmt}: its reader takes no option 'image_root'"):
            read_pairs(path, fmt, image_root=imgs)
        with pytest.raises(ValueError, match=f"{fmt}: its reader takes no option 'image_root'"):
            input_fingerprint(path, fmt, image_root=imgs)


def test_input_fingerprint_sees_every_file_a_format_reads(tmp_path):
    """A JSON format's images are read from beside the JSON: a file added, fixed or removed there
    changes the input's fingerprint (sizes and times, no contents read), as a Parquet file rewritten does."""
    from raypref.formats import input_fingerprint, source_paths
    from raypref.resume import fingerprint

    write_pairs(SOURCE, tmp_path / "h", "hpdv2", split="test")
    js = tmp_path / "h" / "test.json"
    assert set(source_paths(js, "hpdv2")) == {js, *(tmp_path / "h" / "test").iterdir()}
    before = input_fingerprint(js, "hpdv2")
    (tmp_path / "h" / "test" / "s-noise.png").unlink()  # the JSON itself unchanged
    assert input_fingerprint(js, "hpdv2") != before
    stage = tmp_path / "h" / "test" / "run" / "accuracy"  # a stage writing inside the image folder changes nothing
    before = input_fingerprint(js, "hpdv2", stage)
    stage.mkdir(parents=True)
    (stage / "scores.parquet").write_bytes(b"x")
    assert input_fingerprint(js, "hpdv2", stage) == before == input_fingerprint(js, "hpdv2")
    folder = write_imagereward_folder(tmp_path / "ir", [(ir_record("u1", "p", "a cat", 1, 2), webp((0, 0, 0))),
                                                        (ir_record("u2", "p", "a cat", 2, 2), webp((9, 9, 9)))])
    assert source_paths(folder, "imagereward_db") == [folder, folder.parent / "u1.webp", folder.parent / "u2.webp"]
    before = input_fingerprint(folder, "imagereward_db")
    (folder.parent / "u2.webp").write_bytes(webp((200, 9, 9)))  # an image replaced in place
    assert input_fingerprint(folder, "imagereward_db") != before
    f = tmp_path / "pick.parquet"
    write_pickapic_file(f, [("p", RED, GREEN, 1.0, "a", "b", "m", "m")])
    assert input_fingerprint(f, "pickapic") == fingerprint(str(f))  # as accuracy recorded it before
    before = input_fingerprint(f, "pickapic")
    write_pickapic_file(f, [("p", RED, GREEN, 1.0, "a", "b", "m", "m"), ("q", RED, GREEN, 1.0, "c", "d", "m", "m")])
    assert input_fingerprint(f, "pickapic") != before


def test_input_fingerprint_counts_only_the_files_read(tmp_path):
    """A JSON input in a working folder (relabel.input: ./irdb.json): other stages' writes, a venv or
    git beside it are no change; an image it names, found against the JSON's folder or a parent of it,
    is. A folder read whole leaves the run's whole output_dir out, not only the stage's dir."""
    from raypref.formats import input_fingerprint

    work = tmp_path / "work"
    (work / "imgs").mkdir(parents=True)
    for u, c in (("u1", (0, 0, 0)), ("u2", (9, 9, 9))):
        (work / "imgs" / f"{u}.webp").write_bytes(webp(c))
    recs = [{**ir_record(u, "p", "a cat", r, 2), "image_path": f"imgs/{u}.webp"} for u, r in (("u1", 1), ("u2", 2))]
    (work / "irdb.json").write_text(json.dumps(recs))
    write_pairs(SOURCE, work / "h", "hpdv2", split="test")
    for f in (work / "h" / "test").iterdir():  # HPD v2's flat layout: images beside the JSON
        f.rename(work / "h" / f.name)
    (work / "h" / "test").rmdir()
    out = work / "runs" / "x"
    inputs = [(work / "irdb.json", "imagereward_db"), (work / "h" / "test.json", "hpdv2"), (work, "raypref")]
    assert read_pairs(work / "h" / "test.json", "hpdv2").num_rows == 3
    before = [input_fingerprint(p, fmt, out / "relabel", out) for p, fmt in inputs]
    for f in (out / "build" / "groups.parquet", work / ".venv" / "x.py", work / "h" / ".git" / "index"):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    assert [input_fingerprint(p, fmt, out / "relabel", out) for p, fmt in inputs[:2]] == before[:2]
    assert input_fingerprint(work, "raypref", out / "relabel", out) != before[2]  # .venv is in that folder
    before = input_fingerprint(work, "raypref", out / "relabel", out)
    (out / "eval" / "x").parent.mkdir(parents=True)
    (out / "eval" / "x").write_bytes(b"x")
    assert input_fingerprint(work, "raypref", out / "relabel", out) == before
    irdb = input_fingerprint(work / "irdb.json", "imagereward_db", out / "relabel", out)
    (work / "imgs" / "u2.webp").write_bytes(webp((200, 9, 9)))  # an image it names, fixed in place
    assert input_fingerprint(work / "irdb.json", "imagereward_db", out / "relabel", out) != irdb
    hpd = input_fingerprint(work / "h" / "test.json", "hpdv2")
    (work / "h" / "s-red.png").write_bytes(GRAY)
    assert input_fingerprint(work / "h" / "test.json", "hpdv2") != hpd


def test_imagereward_db_fingerprint_follows_the_resolver_to_the_dataset_root(tmp_path):
    """image_path is relative to the dataset root, a parent of the JSON's folder: the image the
    reader finds there counts, the root's other files do not."""
    from raypref.formats import input_fingerprint, source_paths

    folder = tmp_path / "images" / "train" / "train_1"
    folder.mkdir(parents=True)
    (tmp_path / "other").mkdir()
    for u, c in (("u1", (0, 0, 0)), ("u2", (9, 9, 9))):
        (tmp_path / "other" / f"{u}.webp").write_bytes(webp(c))
    recs = [{**ir_record(u, "p", "a cat", r, 2), "image_path": f"other/{u}.webp"} for u, r in (("u1", 1), ("u2", 2))]
    (folder / "train_1.json").write_text(json.dumps(recs + [{"prompt": "no keys"}]))
    js = folder / "train_1.json"
    assert read_pairs(js, "imagereward_db", Quarantine("x")).num_rows == 1
    assert source_paths(js, "imagereward_db") == [js, tmp_path / "other" / "u1.webp", tmp_path / "other" / "u2.webp"]
    before = input_fingerprint(js, "imagereward_db")
    (tmp_path / "notes.txt").write_text("x")
    assert input_fingerprint(js, "imagereward_db") == before
    (tmp_path / "other" / "u1.webp").write_bytes(webp((1, 200, 1)))
    assert input_fingerprint(js, "imagereward_db") != before


def test_check_input_names_the_file_and_what_is_missing(tmp_path):
    """The look a stage takes before Ray: a dataset of another format is an error naming the file and
    the column or key; a bad record among good ones is left to the reader's quarantine."""
    from raypref.formats import check_input

    f = tmp_path / "pick.parquet"
    write_pickapic_file(f, [("p", RED, GREEN, 1.0, "a", "b", "m", "m")])
    check_input(f, "pickapic")
    with pytest.raises(FormatError, match=r"raypref: .*pick\.parquet has no column 'prompt_id'"):
        check_input(f, "raypref")
    write_pairs(SOURCE, tmp_path / "h", "hpdv2", split="test")
    check_input(tmp_path / "h", "hpdv2")
    with pytest.raises(FormatError, match=r"imagereward_db: .*test\.json holds no ImageRewardDB records: its first "
                                          r"record has no key 'prompt_id'"):
        check_input(tmp_path / "h", "imagereward_db")
    folder = write_imagereward_folder(tmp_path / "ir", [(ir_record("u1", "p", "a cat", 1, 1), webp((0, 0, 0)))])
    check_input(tmp_path / "ir", "imagereward_db")
    with pytest.raises(FormatError, match=r"hpdv2: .*ir holds neither train\.json nor test\.json"):
        check_input(tmp_path / "ir", "hpdv2")
    with pytest.raises(FormatError, match=r"hpdv2: .*train_1\.json holds no HPD v2 records: its first record has no "
                                          r"'file_path' / 'image_path' list of image paths \(as do the first 1\)"):
        check_input(folder, "hpdv2")
    # only the start of the file is parsed: a first record over the first read, a bad record among good
    # ones, and whatever follows the first 20 records (here not JSON at all) stop nothing
    big = ir_record("u1", "p", "x" * 100_000, 1, 1)
    head = ", ".join(json.dumps(r) for r in [big, {"rank": 1}] + [big] * 20)
    (tmp_path / "head.json").write_text("[" + head + ", oops")
    check_input(tmp_path / "head.json", "imagereward_db")
    (tmp_path / "obj.json").write_text('{"prompt": "p"}')
    with pytest.raises(FormatError, match=r"obj\.json must hold a JSON list of records \(it starts with '\{"):
        check_input(tmp_path / "obj.json", "hpdv2")
    (tmp_path / "cut.json").write_text('[{"prompt": "p", ')
    with pytest.raises(FormatError, match=r"cut\.json is not valid JSON"):
        check_input(tmp_path / "cut.json", "hpdv2")


def test_check_format_reads_every_parquet_footer(tmp_path):
    """A later file without the required columns is refused naming it, its missing columns and the keys;
    a file Ray Data skips is not looked at; an optional column in one file only still reads."""
    from raypref.formats import check_format

    d = tmp_path / "pick"
    d.mkdir()
    write_pickapic_file(d / "a.parquet", [("p", RED, GREEN, 1.0, "a", "b", "m0", "m1")])
    pq.write_table(pa.table({"caption": ["q"], "jpg_0": [GREEN]}), d / "b.parquet")
    pq.write_table(pa.table({"x": [1]}), d / "_tmp.parquet")
    with pytest.raises(FormatError, match=r"^relabel\.format: relabel\.input does not read as 'pickapic': pickapic: "
                                          r".*/b\.parquet has no column 'jpg_1' \(missing: \['jpg_1', 'label_0'\];"):
        check_format(d, "pickapic", "relabel.input", "relabel.format")
    pq.write_table(pa.table({"caption": ["q"], "jpg_0": [GREEN], "jpg_1": [RED], "label_0": [0.0]}), d / "b.parquet")
    check_format(d, "pickapic", "relabel.input", "relabel.format")
    assert rows(read_pairs(d, "pickapic"), S.PROMPT, S.CHOSEN_GENERATOR) == [("p", "m0"), ("q", None)]


def test_check_format_reads_each_imagereward_db_json(tmp_path):
    """The dataset root holds one JSON a split: a later split that holds no records is refused, named."""
    from raypref.formats import check_format

    write_imagereward_folder(tmp_path, [(ir_record("u1", "p", "a cat", 1, 2), webp((0, 0, 0))),
                                        (ir_record("u2", "p", "a cat", 2, 2), webp((90, 0, 0)))])
    check_format(tmp_path, "imagereward_db", "accuracy.pairs", "accuracy.format")
    bad = tmp_path / "images" / "validation" / "validation.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps([{"caption": "not an ImageRewardDB record"}]))
    with pytest.raises(FormatError, match=r"validation\.json holds no ImageRewardDB records"):
        check_format(tmp_path, "imagereward_db", "accuracy.pairs", "accuracy.format")


def test_image_check_catches_truncated_jpeg():
    big = I.encode(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
    assert image_problem(big) is None
    assert "truncated" in image_problem(big[: len(big) // 2])


# ---- AI re-labelling ----

def relabel_config(tmp_path, inp, fmt="pickapic"):
    from raypref.config import validate

    return validate({
        "output_dir": str(tmp_path / "run"),
        "build": {"scorers": [{"name": "jpeg", "cls": "jpeg_compressibility", "pool": {"batch_size": 8, "num_cpus": 0.25}}],
                  "task_cpus": 0.25},
        "relabel": {"input": str(inp), "format": fmt, "shard_size": 2},
    })


def test_relabel_scorer_errors_stop_it_before_the_import(tmp_path):
    from raypref.config import validate
    from raypref.models import ModelNotFound
    from raypref.relabel import run_relabel

    f = tmp_path / "human.parquet"
    write_pickapic_file(f, [("p", RED, GREEN, 1.0, "a", "b", "m", "m")])
    d = relabel_config(tmp_path, f).model_dump(mode="json")
    d["build"]["scorers"][0]["args"] = {"qualty": 90}
    with pytest.raises(ValueError, match=r"scorer 'jpeg': args.qualty: .* takes no argument 'qualty'"):
        run_relabel(validate(d))
    d["build"]["scorers"][0] = {"name": "clip", "cls": "clip_score", "model": str(tmp_path / "no_such_model")}
    with pytest.raises(ModelNotFound, match="scorer 'clip' model"):
        run_relabel(validate(d))
    assert not (tmp_path / "run" / "relabel").exists()  # nothing imported, nothing written


def test_a_wrong_format_stops_relabel_and_accuracy_before_ray(tmp_path):
    """A Pick-a-Pic file read as raypref pairs: refused naming the keys, the file and the column, before
    Ray starts and before anything is written."""
    from raypref.config import validate
    from raypref.pref_accuracy import run_accuracy
    from raypref.relabel import run_relabel

    f = tmp_path / "human.parquet"
    write_pickapic_file(f, [("p", RED, GREEN, 1.0, "a", "b", "m", "m")])
    with pytest.raises(FormatError, match=r"relabel\.format: relabel\.input does not read as 'raypref': raypref: "
                                          r".*human\.parquet has no column 'prompt_id'"):
        run_relabel(relabel_config(tmp_path, f, "raypref"))
    jpeg = {"name": "jpeg", "cls": "jpeg_compressibility"}
    with pytest.raises(FormatError, match=r"accuracy\.format: accuracy\.pairs does not read as 'raypref': .*"
                                          r"human\.parquet has no column 'prompt_id'"):
        run_accuracy(validate({"output_dir": str(tmp_path / "run"),
                               "accuracy": {"pairs": str(f), "format": "raypref", "scorers": [jpeg]}}))
    assert not (tmp_path / "run").exists()


def test_groups_to_pairs_by_hand():
    """Aggregate scores set by hand: kept, flipped, tied, unscored (NaN -> no pair, a quarantine note)."""
    from raypref.build import finalize_groups
    from raypref.relabel import _pairing_kwargs, groups_to_pairs, pairs_to_groups

    src = pairs_table([("keep", "a", "b", RED, GREEN, 1.0, "g", "g"), ("flip", "c", "d", RED, GREEN, 1.0, "g", "g"),
                       ("tie", "e", "f", RED, GREEN, 0.5, "g", "g"), ("nan", "h", "i", RED, GREEN, 1.0, "g", "g")])
    src = src.append_column(S.IMPORT_ROW, pa.array([10, 11, 12, 13], pa.int64()))  # each pair's row in the import
    g = pairs_to_groups(src)
    assert g.column(S.SAMPLE_ID).to_pylist() == [["a", "b"], ["c", "d"], ["e", "f"], ["h", "i"]]
    assert g.column(S.SEED).to_pylist() == [[None, None]] * 4 and g.column(S.IMAGE)[1].as_py() == [RED, GREEN]
    scores = [[2.0, 1.0], [1.0, 3.0], [5.0, 5.0], [float("nan"), 1.0]]
    g = g.append_column(S.score_column("jpeg"), pa.array(scores, pa.list_(pa.float32())))
    g = finalize_groups(g, **_pairing_kwargs(relabel_config(__import__("pathlib").Path("/nonexistent"), "x")))
    p = groups_to_pairs(g, "ai:jpeg*1")
    assert rows(p, S.PROMPT, S.CHOSEN_ID, S.LABEL, S.SOURCE_LABEL, S.MARGIN, S.IMPORT_ROW) == [
        ("flip", "d", 1.0, 0.0, 2.0, 11),  # the AI prefers the imported rejected image: source label 1 -> 0
        ("keep", "a", 1.0, 1.0, 1.0, 10),
        ("tie", "e", 0.5, 0.5, 0.0, 12)]
    assert rows(p, S.PROMPT, S.chosen_column("score_jpeg"), S.rejected_column("score_jpeg")) == [
        ("flip", 3.0, 1.0), ("keep", 2.0, 1.0), ("tie", 5.0, 5.0)]
    notes = [n for row in g.column(S.QUARANTINE_NOTES).to_pylist() for n in row]
    assert [(n[S.ROW], n[S.REASON]) for n in notes] == [("h", "NaN score: score_jpeg")]
    # relabel.orient 'source': the imported chosen image stays chosen with its label and label_source;
    # the scores follow their images, the margin turns negative where the AI disagrees, and the
    # AI's view of the imported chosen image goes to source_label
    kept = groups_to_pairs(g, "ai:jpeg*1", "source")
    assert rows(kept, S.PROMPT, S.CHOSEN_ID, S.REJECTED_ID, S.LABEL, S.SOURCE_LABEL, S.MARGIN, S.LABEL_SOURCE, S.IMPORT_ROW) == [
        ("flip", "c", "d", 1.0, 0.0, -2.0, "ai:test", 11),
        ("keep", "a", "b", 1.0, 1.0, 1.0, "ai:test", 10),
        ("tie", "e", "f", 0.5, 0.5, 0.0, "ai:test", 12)]
    assert rows(kept, S.PROMPT, S.chosen_column("score_jpeg"), S.rejected_column("score_jpeg"), S.CHOSEN_SCORE) == [
        ("flip", 1.0, 3.0, 1.0), ("keep", 2.0, 1.0, 2.0), ("tie", 5.0, 5.0, 5.0)]
    assert kept.column(S.CHOSEN_IMAGE).to_pylist() == [RED] * 3 and kept.schema == p.schema


def test_pairs_without_ai_label_are_quarantined(tmp_path):
    """Imported pairs missing from the labelled pairs (a scorer gave NaN) are quarantined, counted as a
    multiset (a dataset may hold one pair twice) and matched whichever side the AI chose."""
    from raypref.relabel import quarantine_unscored

    imported = pairs_table([("p", "a", "b", RED, GREEN, 1.0, None, None), ("p", "a", "b", RED, GREEN, 1.0, None, None),
                            ("q", "c", "d", RED, GREEN, 1.0, None, None)])
    write_pairs(imported, tmp_path / "imported", "raypref")
    write_pairs(pairs_table([("p", "b", "a", GREEN, RED, 1.0, None, None)]), tmp_path / "pairs", "raypref")
    assert quarantine_unscored(tmp_path) == 2
    q = pq.read_table(tmp_path / "quarantine" / "relabel" / "relabel.parquet").to_pylist()
    assert [r[S.ROW] for r in q] == ["imported pair a / b ('p')", "imported pair c / d ('q')"]
    assert {r[S.REASON].split(":")[0] for r in q} == {"unscored"}


def test_unscored_pairs_name_the_nan_score_and_image(tmp_path):
    """The quarantine note of a pair the AI cannot label names the score column that was NaN and the
    image's side in the import; the summary line counts the import's quarantine apart from it."""
    from raypref.build import finalize_groups
    from raypref.relabel import _pairing_kwargs, pairs_to_groups, quarantine_unscored, score_pairs, summary_line

    src = pairs_table([("ok", "a", "b", RED, GREEN, 1.0, None, None), ("nan rejected", "c", "d", RED, GREEN, 1.0, None, None),
                       ("nan both", "e", "f", RED, GREEN, 1.0, None, None)])
    write_pairs(src, tmp_path / "imported", "raypref")
    g = pairs_to_groups(src.append_column(S.IMPORT_ROW, pa.array([7, 8, 9], pa.int64())))
    nan = float("nan")
    g = g.append_column(S.score_column("jpeg"), pa.array([[2.0, 1.0], [1.0, nan], [nan, nan]], pa.list_(pa.float32())))
    g = g.append_column(S.score_column("clip"), pa.array([[2.0, 1.0], [1.0, 2.0], [nan, 3.0]], pa.list_(pa.float32())))
    d = relabel_config(tmp_path, "x").model_dump(mode="json")
    d["build"]["scorers"].append({"name": "clip", "cls": "jpeg_compressibility"})
    from raypref.config import validate

    pairing = _pairing_kwargs(validate(d))
    p = score_pairs(g, pairing, "ai:jpeg*1+clip*1", unscored_dir=str(tmp_path / "_unscored"))
    assert p.column(S.PROMPT).to_pylist() == ["ok"]
    write_pairs(p, tmp_path / "pairs", "raypref")
    assert [f.name for f in (tmp_path / "_unscored").iterdir()] == ["rows-000000000007.parquet"]  # the block's first row
    assert quarantine_unscored(tmp_path) == 2 and not (tmp_path / "_unscored").exists()
    q = pq.read_table(tmp_path / "quarantine" / "relabel" / "relabel.parquet").to_pylist()
    assert [(r[S.ROW], r[S.REASON]) for r in q] == [
        ("imported pair c / d ('nan rejected')", "unscored: score_jpeg NaN for the imported rejected image d, so the AI "
                                                 "cannot label the pair"),
        ("imported pair e / f ('nan both')", "unscored: score_jpeg, score_clip NaN for the imported chosen image e; "
                                             "score_jpeg NaN for the imported rejected image f, so the AI cannot label the pair")]
    s = {"format": "pickapic", "pairs_imported": 96, "pairs": 90, "import_quarantined": 3, "unscored": 6, "label_source": "ai:j",
         "ai_strict": 90, "ai_ties": 0, "agreement": 0.5, "both_strict": 90, "flipped": 45, "seconds": 1.0}
    line = summary_line(s, "out")
    assert "96 pickapic pairs imported (3 rows quarantined by the import) -> 90 pairs (6 unscored: a scorer gave NaN, " \
           "quarantined) labelled by ai:j" in line
    assert "unscored" not in summary_line({**s, "unscored": 0}, "out")


def test_relabel_quarantines_a_pair_a_scorer_gave_nan_naming_it(ray_session, tmp_path):
    """Through Ray: a pair whose rejected image a scorer cannot score is quarantined with a note naming
    the score column and the image, and counted apart from the import's quarantine."""
    from raypref.config import validate
    from raypref.relabel import run_relabel, summary_line

    f = tmp_path / "human.parquet"
    write_pickapic_file(f, [("ok", flat((90, 90, 90), size=32), noise(3, size=32), 1.0, "f1", "n1", "m", "m"),
                            ("small", flat((90, 90, 90), size=32), noise(4, size=8), 1.0, "f2", "n2", "m", "m"),
                            ("broken", b"xx", noise(3, size=32), 1.0, "f3", "n3", "m", "m")])
    d = relabel_config(tmp_path, f).model_dump(mode="json")
    d["build"]["scorers"][0].update(name="small", cls="tests.nan_scorer:NanForSmall")
    s = run_relabel(validate(d))
    out = tmp_path / "run" / "relabel"
    q = pq.read_table(out / "quarantine" / "relabel" / "relabel.parquet").to_pylist()
    assert [(r[S.ROW], r[S.REASON]) for r in q] == [
        ("imported pair f2 / n2 ('small')", "unscored: score_small NaN for the imported rejected image n2, so the AI "
                                            "cannot label the pair")]
    assert (s["pairs_imported"], s["pairs"], s["import_quarantined"], s["unscored"]) == (2, 1, 1, 1)
    assert "2 pickapic pairs imported (1 rows quarantined by the import) -> 1 pairs (1 unscored" in summary_line(s, "x")
    assert not (out / "_unscored").exists()


def test_relabel_reads_hpdv2_images_from_image_root(tmp_path):
    """relabel.image_root reaches the HPD v2 reader and the input's files; another format refuses it."""
    from raypref.config import ConfigError, validate
    from raypref.relabel import _import_settings, import_pairs

    write_pairs(SOURCE, tmp_path / "h", "hpdv2", split="test")
    (tmp_path / "h" / "test").rename(tmp_path / "imgs")
    d = relabel_config(tmp_path, tmp_path / "h" / "test.json", "hpdv2").model_dump(mode="json")
    d["relabel"]["image_root"] = str(tmp_path / "imgs")
    cfg = validate(d)
    out = tmp_path / "run" / "relabel"
    assert import_pairs(cfg, out)[0] == 3 and not (out / "quarantine" / "import" / "import.parquet").exists()
    before = _import_settings(cfg)["relabel"]["input_files"]
    (tmp_path / "imgs" / "s-red.png").write_bytes(GRAY)
    assert _import_settings(cfg)["relabel"]["input_files"] != before
    d["relabel"]["format"] = "imagereward_db"
    with pytest.raises(ConfigError, match=r"relabel\.image_root: only relabel\.format 'hpdv2' reads it, not 'imagereward_db'"):
        validate(d)


def test_relabel_through_ray(ray_session, tmp_path):
    from raypref.cli import make_parser
    from raypref.config import RelabelConf
    from raypref.relabel import run_relabel

    assert set(get_args(RelabelConf.model_fields["format"].annotation)) == set(FORMATS)
    assert make_parser().parse_args(["relabel", "relabel.input=x"]).command == "relabel"
    flat32, noisy = flat((90, 90, 90), size=32), noise(3, size=32)  # the flat image compresses far better
    f = tmp_path / "human.parquet"
    write_pickapic_file(f, [
        ("human likes flat", flat32, noisy, 1.0, "f1", "n1", "m", "m"),
        ("human likes noise", flat32, noisy, 0.0, "f2", "n2", "m", "m"),
        ("human tie", flat32, noisy, 0.5, "f3", "n3", "m", "m"),
        ("broken", b"xx", noisy, 1.0, "f4", "n4", "m", "m"),
        ("same image", flat32, flat32, 1.0, "f5", "f6", "m", "m"),
    ])
    s = run_relabel(relabel_config(tmp_path, f))
    out = tmp_path / "run" / "relabel"
    p = pds.dataset(out / "pairs", format="parquet").to_table()
    assert rows(p, S.PROMPT, S.CHOSEN_ID, S.LABEL, S.SOURCE_LABEL, S.LABEL_SOURCE) == [
        ("human likes flat", "f1", 1.0, 1.0, "ai:jpeg*1"),
        ("human likes noise", "f2", 1.0, 0.0, "ai:jpeg*1"),  # AI flips the human's choice
        ("human tie", "f3", 1.0, 0.5, "ai:jpeg*1"),
        ("same image", "f5", 0.5, 1.0, "ai:jpeg*1"),  # identical images: an AI tie
    ]
    c, r = p.column(S.chosen_column("score_jpeg")).to_pylist(), p.column(S.rejected_column("score_jpeg")).to_pylist()
    assert all(x is not None for x in c + r)
    assert all(a > b for a, b, lab in zip(c, r, p.column(S.LABEL).to_pylist()) if lab == 1.0)
    assert p.column(S.QUALITY).to_pylist() == p.column(S.MARGIN).to_pylist()
    assert (s["pairs_imported"], s["pairs"], s["ai_strict"], s["ai_ties"]) == (4, 4, 3, 1)
    assert (s["both_strict"], s["agree"], s["flipped"], s["agreement"]) == (2, 1, 1, 0.5)
    assert s["quarantined"] == {"import:pickapic: undecodable image": 1}
    q = pq.read_table(out / "quarantine" / "import" / "import.parquet").to_pylist()
    assert q[0][S.ROW] == "human.parquet[3]"
    assert json.loads((out / "summary.json").read_text())["pairs"] == 4
    assert (out / "config.yaml").is_file() and json.loads((out / "run_meta.json").read_text())["stage"] == "relabel"
    # the re-labelled pairs read back as a raypref pairs table, per-scorer columns and source_label kept
    back = read_pairs(out / "pairs", "raypref")
    assert back.num_rows == 4 and S.SOURCE_LABEL in back.column_names and S.chosen_column("score_jpeg") in back.column_names

    # a rerun resumes: the finished import is kept, and no pair is scored or written again
    stamps = {p: {f.name: f.stat().st_mtime_ns for f in (out / p).iterdir()} for p in ("imported", "pairs")}
    s2 = run_relabel(relabel_config(tmp_path, f))
    assert {p: {f.name: f.stat().st_mtime_ns for f in (out / p).iterdir()} for p in ("imported", "pairs")} == stamps
    assert {k: v for k, v in s2.items() if k != "seconds"} == {k: v for k, v in s.items() if k != "seconds"}
    # other scorers would mix two labellings: refused before anything is written
    d = relabel_config(tmp_path, f).model_dump(mode="json")
    d["build"]["scorers"][0]["weight"] = 2.0
    from raypref.config import validate

    with pytest.raises(ValueError, match=r"relabel: .* other settings \(build\.scorers\.0\.weight: '1\.0' -> '2\.0'\)"):
        run_relabel(validate(d))
    # the human labels kept (relabel.orient source), the AI's view beside them; ranking by margin puts
    # the pair the AI disagrees with last
    d = relabel_config(tmp_path, f).model_dump(mode="json")
    d["output_dir"], d["relabel"]["orient"] = str(tmp_path / "kept"), "source"
    s3 = run_relabel(validate(d))
    k = pds.dataset(tmp_path / "kept" / "relabel" / "pairs", format="parquet").to_table()
    assert rows(k, S.PROMPT, S.CHOSEN_ID, S.LABEL, S.SOURCE_LABEL, S.LABEL_SOURCE) == [
        ("human likes flat", "f1", 1.0, 1.0, "human:pickapic"),
        ("human likes noise", "n2", 1.0, 0.0, "human:pickapic"),  # the human's choice, which the AI flips
        ("human tie", "f3", 0.5, 1.0, "human:pickapic"),
        ("same image", "f5", 1.0, 0.5, "human:pickapic"),
    ]
    assert k.column(S.QUALITY).to_pylist() == k.column(S.MARGIN).to_pylist()
    margin = dict(zip(k.column(S.PROMPT).to_pylist(), k.column(S.MARGIN).to_pylist()))
    assert margin["human likes flat"] > 0 > margin["human likes noise"] == -margin["human likes flat"]
    assert (s3["ai_strict"], s3["ai_ties"], s3["source_ties"]) == (s["ai_strict"], s["ai_ties"], s["source_ties"])
    assert (s3["both_strict"], s3["agree"], s3["flipped"], s3["agreement"]) == (2, 1, 1, 0.5)


def test_relabel_extends_with_a_larger_limit_and_refuses_a_changed_input(ray_session, tmp_path):
    """A trial run's limit raised: the pairs labelled are kept and only the new ones labelled (another
    shard_size too: the resume key is each pair's row in the import, not its file). A smaller limit,
    or the input's file changed in place, would leave labels of pairs the import no longer holds: refused."""
    from raypref.config import validate
    from raypref.relabel import run_relabel

    flat32, noisy = flat((90, 90, 90), size=32), noise(3, size=32)
    f = tmp_path / "human.parquet"
    pairs = [(f"p{i}", flat32, noisy, 1.0, f"f{i}", f"n{i}", "m", "m") for i in range(3)]
    write_pickapic_file(f, pairs)

    def cfg(**relabel):
        d = relabel_config(tmp_path, f).model_dump(mode="json")
        d["relabel"].update(relabel)
        return validate(d)

    out = tmp_path / "run" / "relabel"
    s1 = run_relabel(cfg(limit=1, shard_size=1))
    assert (s1["pairs_imported"], s1["pairs"]) == (1, 1)
    first = {p.name: p.stat().st_mtime_ns for p in (out / "pairs").glob("*.parquet")}
    s2 = run_relabel(cfg(limit=None, shard_size=2))
    assert (s2["pairs_imported"], s2["pairs"]) == (3, 3)
    now = {p.name: p.stat().st_mtime_ns for p in (out / "pairs").glob("*.parquet")}
    assert {k: now.get(k) for k in first} == first and len(now) > len(first)  # the first pair not labelled again
    assert sorted(pq.read_table(out / "pairs", columns=[S.IMPORT_ROW]).column(S.IMPORT_ROW).to_pylist()) == [0, 1, 2]
    with pytest.raises(ValueError, match=r"relabel\.limit: .* holds 3 imported pairs, .*relabel\.limit=2"):
        run_relabel(cfg(limit=2))
    write_pickapic_file(f, pairs[:2] + [("p2", noisy, flat32, 0.0, "f2", "n2", "m", "m")])  # a row fixed in place
    with pytest.raises(ValueError, match=r"relabel: .* other settings \(relabel\.input_files: '\w+' -> '\w+'\)"):
        run_relabel(cfg())


def test_an_exports_json_list_writes_nan_and_infinities_as_null(tmp_path):
    # json.dumps wrote a bare NaN, which is no JSON; the formats' reader takes null
    from raypref.formats._common import JsonListWriter, read_json_list

    with JsonListWriter(tmp_path / "out.json") as out:
        out.add({"prompt": "a red circle", "score": float("nan"), "ratings": [1.5, float("inf"), -float("inf")]})
        out.add({"prompt": "two squares", "score": 0.25, "ratings": []})
    text = (tmp_path / "out.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}")) == read_json_list(tmp_path / "out.json", "t")
    assert read_json_list(tmp_path / "out.json", "t") == [
        {"prompt": "a red circle", "score": None, "ratings": [1.5, None, None]},
        {"prompt": "two squares", "score": 0.25, "ratings": []}]
