"""Pair strategies, tie and generator rules, the pairs table and quarantine notes, on hand-made rows."""

import logging
import math
import re

import numpy as np
import pyarrow as pa
import pytest

from raypref import images as I
from raypref import quarantine as Q
from raypref import schema as S
from raypref.build import explode_pairs, finalize_groups, regroup
from raypref.pairs import all_pairs, best_vs_worst, top_k_vs_bottom_k
from raypref.prompts import PromptsError, read_prompts
from raypref.scoring import Scorer

NAN = float("nan")


def _cp(pairs):
    return [(p.chosen, p.rejected, p.label) for p in pairs]


def test_all_pairs_orients_by_score_in_rank_order():
    #          idx: 0    1    2    3
    p = all_pairs([0.2, 0.9, NAN, 0.5])
    # ranks: 1 (0.9), 3 (0.5), 0 (0.2); nan never paired; 3 valid -> 3 pairs
    assert _cp(p) == [(1, 3, 1.0), (1, 0, 1.0), (3, 0, 1.0)]
    assert [x.margin for x in p] == pytest.approx([0.4, 0.7, 0.3])
    assert _cp(all_pairs([0.2, 0.9, NAN, 0.5], min_margin=0.35)) == [(1, 3, 1.0), (1, 0, 1.0)]
    assert len(all_pairs(np.arange(8.0))) == 28  # n(n-1)/2


def test_tie_rules():
    scores = [0.5, 0.5, 0.1]
    assert _cp(all_pairs(scores)) == [(0, 2, 1.0), (1, 2, 1.0)]  # the tie is dropped
    # kept ties are labelled 0.5, chosen = the earlier sample
    assert _cp(all_pairs(scores, keep_ties=True)) == [(0, 1, 0.5), (0, 2, 1.0), (1, 2, 1.0)]
    # a tolerance widens what counts as a tie
    assert _cp(all_pairs([0.5, 0.45, 0.1], tie_tolerance=0.1)) == [(0, 2, 1.0), (1, 2, 1.0)]
    assert _cp(best_vs_worst([0.3, 0.3])) == []
    assert _cp(best_vs_worst([0.3, 0.3], keep_ties=True)) == [(0, 1, 0.5)]
    assert best_vs_worst([0.3, 0.31], tie_tolerance=0.05) == []
    # worst is the FIRST of tied minimums, best the first of tied maximums
    assert _cp(best_vs_worst([0.1, 0.9, 0.1, 0.9])) == [(1, 0, 1.0)]
    # top-k with a kept tie between a top and a bottom sample lists it once
    assert _cp(top_k_vs_bottom_k([0.5, 0.5], k=2, keep_ties=True)) == [(0, 1, 0.5)]
    # top and bottom k overlap (two samples, k=2): one strict pair, and no reversed "tie" of the same two
    assert _cp(top_k_vs_bottom_k([0.25, 0.75], k=2, keep_ties=True)) == [(1, 0, 1.0)]
    assert _cp(top_k_vs_bottom_k([0.25, 0.75, 0.75], k=2, keep_ties=True)) == [(1, 0, 1.0), (2, 0, 1.0), (1, 2, 0.5)]


def test_generator_rules():
    scores = [0.75, 0.5, 0.25, 0.0]  # exact in binary: equal margins compare equal
    gens = ["a", "a", "b", "b"]
    assert _cp(all_pairs(scores, generators=gens, generator_rule="within")) == [(0, 1, 1.0), (2, 3, 1.0)]
    across = all_pairs(scores, generators=gens, generator_rule="across")
    assert _cp(across) == [(0, 2, 1.0), (0, 3, 1.0), (1, 2, 1.0), (1, 3, 1.0)]
    # best vs worst under 'within': a's 0.75 vs 0.5 and b's 0.25 vs 0.0 both have margin 0.25;
    # equal margins go to the better-ranked chosen
    assert _cp(best_vs_worst(scores, generators=gens, generator_rule="within")) == [(0, 1, 1.0)]
    assert _cp(best_vs_worst(scores, generators=gens, generator_rule="across")) == [(0, 3, 1.0)]
    gens2 = ["a", "b", "b", "a"]
    # across, best and worst both from a: a's best (0) vs b's worst (2) and b's best (1) vs a's worst (3)
    # both have margin 0.5; the better-ranked chosen (0) wins
    assert _cp(best_vs_worst(scores, generators=gens2, generator_rule="across")) == [(0, 2, 1.0)]
    assert _cp(top_k_vs_bottom_k(scores, k=2, generators=gens2, generator_rule="across")) == [(0, 2, 1.0), (1, 3, 1.0)]
    with pytest.raises(ValueError, match="generator_rule"):
        all_pairs(scores, generators=gens, generator_rule="nope")


def _groups(scores_a, scores_b, gens=None, aspect=None):
    """One-prompt groups batch with two scorers' lists (and an optional aspect column)."""
    n = len(scores_a)
    t = {
        S.PROMPT_ID: ["p0"],
        S.PROMPT: ["a red circle"],
        S.SAMPLE_ID: [[f"s{i}" for i in range(n)]],
        S.GENERATOR: [gens or ["g"] * n],
        S.IMAGE: [[f"img{i}".encode() for i in range(n)]],
        "score_a": [scores_a],
        "score_b": [scores_b],
    }
    if aspect is not None:
        t["score_a_shape"] = [aspect]
    return pa.table(t)


SPECS = [
    {"column": "score_a", "normalize": "raw", "value_range": None, "weight": 1.0},
    {"column": "score_b", "normalize": "raw", "value_range": None, "weight": 0.5},
]


def test_finalize_groups_aggregates_pairs_and_notes_nan():
    batch = _groups([1.0, 2.0, 3.0, NAN], [2.0, 0.0, 0.0, 1.0])
    out = finalize_groups(batch, SPECS, "all_pairs", 0.0)
    # aggregate = a + 0.5 b = [2, 2, 3, nan]: 2 == 2 is a tie, dropped
    assert out.column(S.SCORE).to_pylist()[0][:3] == [2.0, 2.0, 3.0] and math.isnan(out.column(S.SCORE).to_pylist()[0][3])
    assert out.column(S.PAIR_CHOSEN).to_pylist() == [[2, 2]] and out.column(S.PAIR_REJECTED).to_pylist() == [[0, 1]]
    assert out.column(S.PAIR_LABEL).to_pylist() == [[1.0, 1.0]]
    assert out.column(S.QUARANTINE_NOTES).to_pylist() == [[Q.note("pair", "s3", "NaN score: score_a")]]
    # keep_ties adds the tie with label 0.5
    tied = finalize_groups(batch, SPECS, "all_pairs", 0.0, keep_ties=True)
    assert tied.column(S.PAIR_LABEL).to_pylist() == [[1.0, 1.0, 0.5]]


def test_finalize_groups_pairs_on_one_aspect_and_missing_lists():
    batch = _groups([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], aspect=[0.0, 1.0, 0.0])
    out = finalize_groups(batch, SPECS, "best_vs_worst", 0.0, on="score_a_shape")
    assert (out.column(S.PAIR_CHOSEN).to_pylist(), out.column(S.PAIR_REJECTED).to_pylist()) == ([[1]], [[0]])
    with pytest.raises(ValueError, match="build.pairs.on: no score column 'score_nope'"):
        finalize_groups(batch, SPECS, "best_vs_worst", 0.0, on="score_nope")
    # a stored row with no score list for a scorer is noted whole and makes no pair
    broken = batch.set_column(batch.column_names.index("score_b"), "score_b", pa.array([None], pa.list_(pa.float32())))
    out = finalize_groups(broken, SPECS, "best_vs_worst", 0.0)
    assert out.column(S.PAIR_CHOSEN).to_pylist() == [[]]
    assert out.column(S.QUARANTINE_NOTES).to_pylist() == [[Q.note("pair", "p0", "missing score: score_b")]]
    # re-pairing drops the old pairing's notes and keeps earlier stages' ones
    noted = Q.add_notes(out, [[Q.note("score:a", "s0", "undecodable image: x")]])
    again = regroup(noted, scorers=SPECS, strategy="best_vs_worst", min_margin=0.0)
    assert [n[S.STAGE] for n in again.column(S.QUARANTINE_NOTES).to_pylist()[0]] == ["score:a", "pair"]


def test_explode_pairs_carries_every_score_column_and_labels():
    batch = finalize_groups(_groups([1.0, 3.0, 2.0], [0.0, 0.0, 4.0], gens=["x", "y", "y"], aspect=[5.0, 6.0, 7.0]),
                            SPECS, "all_pairs", 0.0, keep_ties=True)
    pairs = explode_pairs(batch, "ai:test")
    assert pairs.schema.equals(S.pairs_schema(["score_a", "score_b", "score_a_shape"]))
    rows = pairs.to_pylist()
    # aggregate [1, 3, 4]: pairs (2,1), (2,0), (1,0)
    assert [(r[S.CHOSEN_ID], r[S.REJECTED_ID]) for r in rows] == [("s2", "s1"), ("s2", "s0"), ("s1", "s0")]
    assert [r["chosen_score_b"] for r in rows] == [4.0, 4.0, 0.0]
    assert [r["rejected_score_a_shape"] for r in rows] == [6.0, 5.0, 5.0]
    assert [r[S.CHOSEN_GENERATOR] + r[S.REJECTED_GENERATOR] for r in rows] == ["yy", "yx", "yx"]
    assert [r[S.MARGIN] for r in rows] == [1.0, 3.0, 2.0] and [r[S.LABEL] for r in rows] == [1.0, 1.0, 1.0]
    assert rows[0][S.CHOSEN_IMAGE] == b"img2" and rows[0][S.LABEL_SOURCE] == "ai:test"
    assert S.pair_score_columns(pairs.column_names) == ["score_a", "score_b", "score_a_shape"]
    # a batch that is a slice of a bigger block (list offsets not starting at 0) pairs the same images
    two = pa.concat_tables([batch, batch.set_column(0, S.PROMPT_ID, pa.array(["p1"]))]).combine_chunks()
    sliced = explode_pairs(two.slice(1, 1), "ai:test").to_pylist()
    assert [(r[S.PROMPT_ID], r[S.CHOSEN_IMAGE], r[S.REJECTED_IMAGE]) for r in sliced] == [
        ("p1", r[S.CHOSEN_IMAGE], r[S.REJECTED_IMAGE]) for r in rows]


def test_a_row_missing_a_score_list_is_noted_and_the_other_rows_explode_in_place():
    """A null (or short) stored list made explode_samples fail, and would shift explode_pairs' later rows."""
    from raypref.build import explode_samples

    def row(pid, a, b, aspect):
        t = _groups(a, b, aspect=aspect).set_column(0, S.PROMPT_ID, pa.array([pid]))
        t = t.set_column(t.column_names.index(S.SAMPLE_ID), S.SAMPLE_ID, pa.array([[f"{pid}s{i}" for i in range(len(a))]]))
        for f in (S.SEED, S.STEPS):
            t = t.append_column(f, pa.array([list(range(len(a)))]))
        for f in (S.GUIDANCE, S.NOISE_SIGMA):
            t = t.append_column(f, pa.array([[0.0] * len(a)]))
        return t

    bad = row("p0", [2.0, 1.0], [1.0, 1.0], aspect=[7.0])  # its aspect list is one short
    bad = bad.set_column(bad.column_names.index("score_b"), "score_b", pa.array([None], pa.list_(pa.float64())))
    batch = pa.concat_tables([bad, row("p1", [1.0, 3.0], [0.0, 2.0], aspect=[5.0, 6.0])])
    out = finalize_groups(batch, SPECS, "best_vs_worst", 0.0)
    assert out.column(S.PAIR_CHOSEN).to_pylist() == [[], [1]]
    assert out.column(S.QUARANTINE_NOTES).to_pylist() == [
        [Q.note("pair", "p0", "missing score: score_b"), Q.note("pair", "p0", "missing score: score_a_shape")], []]
    assert out.column("score_b").to_pylist()[0] is None  # the groups keep the row as stored
    samples = explode_samples(out, ["a", "b"]).to_pylist()
    assert [r[S.SAMPLE_ID] for r in samples] == ["p0s0", "p0s1", "p1s0", "p1s1"]
    assert [r["score_a_shape"] for r in samples][2:] == [5.0, 6.0] and math.isnan(samples[1]["score_a_shape"])
    assert math.isnan(samples[0]["score_b"]) and samples[3]["score_b"] == 2.0
    [pair] = explode_pairs(out, "ai:test").to_pylist()
    assert (pair[S.CHOSEN_ID], pair["chosen_score_a_shape"], pair["rejected_score_a_shape"]) == ("p1s1", 6.0, 5.0)


class _Mean(Scorer):
    outputs = ("rationale",)

    def score(self, images, prompts):
        return {"": np.array([np.asarray(im).mean() for im in images], np.float32), "rationale": ["ok"] * len(images)}


def test_undecodable_image_gets_nan_and_a_quarantine_note():
    from PIL import Image

    good = I.encode(Image.new("RGB", (4, 4), (10, 20, 30)))
    batch = pa.table({
        S.PROMPT_ID: ["p0"], S.PROMPT: ["x"], S.SAMPLE_ID: [["s0", "s1"]], S.IMAGE: [[good, b"not an image"]],
    })
    out = _Mean("m")(batch)
    scores = out.column("score_m").to_pylist()[0]
    assert scores[0] == pytest.approx(20.0) and math.isnan(scores[1])
    assert out.column("rationale_m").to_pylist() == [["ok", ""]]
    [note] = out.column(S.QUARANTINE_NOTES).to_pylist()[0]
    assert (note[S.STAGE], note[S.ROW]) == ("score:m", "s1") and note[S.REASON].startswith("undecodable image: ")
    table = Q.explode(out)
    assert table.schema.equals(S.QUARANTINE_SCHEMA) and table.num_rows == 1


def test_a_batch_with_no_image_to_score_gets_every_column(caplog):
    from PIL import Image

    from actors.shapes_checker import ShapesVQA

    # one group of bad bytes, one group the safety checker emptied: nothing reaches score(), yet every
    # column comes, as NaN or '', so this block's files read as one table with the others
    batch = pa.table({S.PROMPT_ID: ["p0", "p1"], S.PROMPT: ["a red circle", "a red circle"],
                      S.SAMPLE_ID: [["s0"], []], S.IMAGE: pa.array([[b"junk"], []], pa.list_(pa.binary()))})
    good = I.encode(Image.new("RGB", (32, 32), (255, 255, 255)))
    full = pa.table({S.PROMPT_ID: ["p0", "p1"], S.PROMPT: ["a red circle", "a red circle"],
                     S.SAMPLE_ID: [["s0"], ["s1"]], S.IMAGE: pa.array([[good], [good]], pa.list_(pa.binary()))})
    vqa = ShapesVQA("vqa")
    empty, scored = vqa(batch), vqa(full)
    assert len(vqa.outputs) > 1 and S.QUARANTINE_NOTES in empty.column_names  # the bad bytes' note
    assert empty.drop_columns([S.QUARANTINE_NOTES]).schema.equals(scored.schema)
    assert all(math.isnan(v) for v in empty.column("score_vqa_overall").to_pylist()[0]) and empty.column("score_vqa_overall").to_pylist()[1] == []
    m = _Mean("m")
    assert m(batch).column("rationale_m").to_pylist() == [[""], []]

    class Undeclared(Scorer):  # returns an aspect, and declares no `outputs` (as scorers written before it existed)
        def score(self, images, prompts):
            return {"": np.zeros(len(images), np.float32), "extra": np.zeros(len(images), np.float32)}

    class Misdeclared(Undeclared):  # declares outputs that are not what score() returns
        outputs = ("other",)

    with pytest.raises(ValueError, match=r"scorer 'u' \(.*Misdeclared\) returned \['extra'\] .* `outputs` names \['other'\]"):
        Misdeclared("u")(full)
    u = Undeclared("u")
    with caplog.at_level(logging.WARNING, logger="raypref.scoring"):
        assert "score_u_extra" in u(full).column_names  # taken as it comes, with a warning to declare it
    assert "declares no `outputs`" in caplog.text
    assert u(batch).column("score_u_extra").to_pylist()[1] == []  # an empty batch gets what the actor has seen


def test_empty_prompts_are_quarantined_with_their_line(tmp_path):
    (tmp_path / "e.txt").write_text("ok\n   \nfine\n")
    bad = []
    t = read_prompts(tmp_path / "e.txt", quarantine=bad)
    assert t.column(S.PROMPT).to_pylist() == ["ok", "fine"]
    assert bad == [{S.STAGE: "prompts", S.ROW: f"{tmp_path / 'e.txt'}:2", S.REASON: "empty prompt"}]
    Q.write(bad, tmp_path / "q" / "prompts.parquet")
    assert Q.counts(tmp_path / "q") == {"prompts: empty prompt": 1}


def test_prompt_rows_that_cannot_be_used_are_named_and_set_aside(tmp_path):
    # a byte-order mark is not part of the first prompt; a line that is not UTF-8 is one bad row, not a
    # bad file; a JSON prompt that is not text says so; a repeated prompt is written aside too
    (tmp_path / "w.txt").write_bytes(b"\xef\xbb\xbfa green square\r\n\xff\xfe bad line\r\na red circle\r\na green square\r\n")
    bad = []
    t = read_prompts(tmp_path / "w.txt", quarantine=bad)
    assert t.column(S.PROMPT).to_pylist() == ["a green square", "a red circle"]
    assert t.column(S.PROMPT_ID)[0].as_py() == S.prompt_id("a green square")
    where = f"{tmp_path / 'w.txt'}"
    assert bad == [{S.STAGE: "prompts", S.ROW: f"{where}:2", S.REASON: "not valid UTF-8: byte 0xff at column 1"},
                   {S.STAGE: "prompts", S.ROW: f"{where}:4", S.REASON: f"duplicate prompt: as {where}:1"}]
    with pytest.raises(PromptsError, match=r"w\.txt:2: not valid UTF-8: byte 0xff at column 1"):
        read_prompts(tmp_path / "w.txt")  # without a quarantine list: an error naming the line
    (tmp_path / "n.jsonl").write_bytes(b'{"prompt": 5}\n{"prompt": ["a"]}\n{"prompt": "\xe9t\xe9"}\n{"prompt": "ok"}\n')
    bad = []
    assert read_prompts(tmp_path / "n.jsonl", quarantine=bad).column(S.PROMPT).to_pylist() == ["ok"]
    assert [(b[S.ROW].rsplit(":", 1)[1], b[S.REASON]) for b in bad] == [
        ("1", "prompt is not text: int"), ("2", "prompt is not text: list"), ("3", "not valid UTF-8: byte 0xe9 at column 13")]


def test_generator_win_rates_hand_values():
    from raypref.dataset_report import generator_win_rates

    # a beats b twice, b beats a once, a vs a says nothing; c loses once to b
    r = generator_win_rates(["a", "a", "b", "a", "b"], ["b", "b", "a", "a", "c"])
    assert r == {"a": {"wins": 2, "losses": 1, "ties": 0, "win_rate": 2 / 3},
                 "b": {"wins": 2, "losses": 2, "ties": 0, "win_rate": 0.5},
                 "c": {"wins": 0, "losses": 1, "ties": 0, "win_rate": 0.0}}
    # a tie is neither side's win: the second a-b pair and the b-d pair are ties
    r = generator_win_rates(["a", "a", "b", "b"], ["b", "b", "a", "d"], [1.0, 0.5, 1.0, 0.5])
    assert r == {"a": {"wins": 1, "losses": 1, "ties": 1, "win_rate": 0.5},
                 "b": {"wins": 1, "losses": 1, "ties": 2, "win_rate": 0.5},
                 "d": {"wins": 0, "losses": 0, "ties": 1, "win_rate": None}}


def test_generator_win_rates_leave_out_and_count_a_generator_known_on_one_side(tmp_path):
    """A null generator on one side (an imported pair, a mixed dataset) was a TypeError when the
    generators were sorted; such pairs are left out of the rates and counted in the report."""
    import pyarrow.parquet as pq

    from raypref.dataset_report import generator_win_rates, one_generator_unknown, write_report

    chosen, rejected = ["a", None, "b", None, "a"], ["b", "a", None, None, "b"]
    assert generator_win_rates(chosen, rejected) == {"a": {"wins": 2, "losses": 0, "ties": 0, "win_rate": 1.0},
                                                     "b": {"wins": 0, "losses": 2, "ties": 0, "win_rate": 0.0}}
    assert one_generator_unknown(chosen, rejected) == 2  # both null: no generator at all, as most imports
    (tmp_path / "pairs").mkdir()
    pq.write_table(pa.table({S.LABEL: pa.array([1.0] * 5, pa.float32()), S.CHOSEN_GENERATOR: pa.array(chosen, pa.string()),
                             S.REJECTED_GENERATOR: pa.array(rejected, pa.string())}), tmp_path / "pairs" / "part-0.parquet")
    r = write_report(tmp_path)
    assert (r["generator_unknown_pairs"], sorted(r["generators"])) == (2, ["a", "b"])
    assert "2 pairs with a generator on one side only" in (tmp_path / "report" / "report.md").read_text()


def test_dataset_report_on_a_stage_dir_via_cli(tmp_path):
    import json

    import pyarrow.parquet as pq

    from raypref.cli import main

    batch = finalize_groups(_groups([1.0, 3.0, 2.0, NAN], [0.0, 0.0, 4.0, 1.0], gens=["x", "y", "y", "x"]),
                            SPECS, "all_pairs", 0.0)
    stage = tmp_path / "stage"
    (stage / "pairs").mkdir(parents=True)
    (stage / "samples").mkdir()
    pq.write_table(explode_pairs(batch, "ai:t"), stage / "pairs" / "p.parquet")
    pq.write_table(pa.table({S.SCORE: pa.array([1.0, 3.0, 4.0, NAN], pa.float32()), "score_a": [1.0, 3.0, 2.0, NAN]}),
                   stage / "samples" / "s.parquet")
    assert main(["report", f"output_dir={tmp_path}", f"report.input={stage}"]) == 0
    r = json.loads((stage / "report" / "report.json").read_text())
    assert (r["samples"], r["pairs"], r["ties"]) == (4, 3, 0)
    assert r["scores"]["score_a"] == {"n": 3, "nan": 1, "mean": 2.0, "std": pytest.approx((2 / 3) ** 0.5), "min": 1.0, "max": 3.0}
    # aggregate [1, 3, 4, nan]: pairs 2>1 (y,y), 2>0 (y,x), 1>0 (y,x): y wins both cross pairs
    assert r["generators"] == {"x": {"wins": 0, "losses": 2, "ties": 0, "win_rate": 0.0},
                                    "y": {"wins": 2, "losses": 0, "ties": 0, "win_rate": 1.0}}
    for png in ("score_histograms.png", "margin_histograms.png"):
        assert (stage / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| y | 2 | 0 | 0 | 1.000 |" in (stage / "report" / "report.md").read_text()


def test_report_refuses_a_dir_without_samples_or_pairs_and_reports_unscored_pairs(tmp_path):
    import json

    import pyarrow.parquet as pq

    from raypref.cli import main
    from raypref.dataset_report import write_report

    stage = tmp_path / "stage"
    (stage / "pairs").mkdir(parents=True)
    pq.write_table(explode_pairs(finalize_groups(_groups([1.0, 3.0], [0.0, 0.0]), SPECS, "all_pairs", 0.0), "ai:t"),
                   stage / "pairs" / "p.parquet")
    # the pairs dir itself: refused, the stage dir above it suggested, nothing written into the dataset
    with pytest.raises(ValueError, match=r"report.input: .*pairs has no Parquet files under samples/ or pairs/.*\(" + re.escape(str(stage)) + r"\)"):
        write_report(stage / "pairs")
    assert sorted(p.name for p in (stage / "pairs").iterdir()) == ["p.parquet"]
    assert main(["report", f"output_dir={tmp_path}", f"report.input={stage / 'pairs'}"]) == 2
    with pytest.raises(ValueError, match=r"report.input: .*empty has no Parquet files under samples/ or pairs/$"):
        write_report(tmp_path / "empty")
    # a build whose every image was left out (no samples/, no pairs/) still writes its report of zeros
    (tmp_path / "empty").mkdir()
    assert (write_report(tmp_path / "empty", require_data=False)["samples"], (tmp_path / "empty" / "report" / "report.json").is_file()) == (0, True)
    # an unreadable part is named; a staging dir's parts and other files are not read
    (stage / "pairs" / "notes.txt").write_text("x")
    (stage / "pairs" / "x.old").mkdir()
    (stage / "pairs" / "x.old" / "part.parquet").write_text("not parquet")
    (stage / "pairs" / "._p.parquet").write_text("a macOS copy's resource fork")  # hidden and private: skipped,
    (stage / "pairs" / "_checkpoint").mkdir()  # as Arrow and Ray Data skip them
    (stage / "pairs" / "_checkpoint" / "c.parquet").write_text("not parquet")
    assert write_report(stage)["pairs"] == 1
    (stage / "pairs" / "bad.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=r"report: .*bad.parquet is not a readable Parquet file"):
        write_report(stage)
    # pairs without a margin or scores: counts, ties and generators still
    imp = tmp_path / "imp"
    (imp / "pairs").mkdir(parents=True)
    pq.write_table(pa.table({S.CHOSEN_ID: ["a", "b", "c"], S.LABEL: pa.array([1.0, 0.5, 1.0], pa.float32()),
                             S.CHOSEN_GENERATOR: ["x", "x", "y"], S.REJECTED_GENERATOR: ["y", "y", "x"]}),
                   imp / "pairs" / "part-0.parquet")
    r = write_report(imp)
    assert (r["pairs"], r["ties"], r["margin"], r["plots"]) == (3, 1, None, [])
    assert r["generators"]["x"] == {"wins": 1, "losses": 1, "ties": 1, "win_rate": 0.5}
    assert json.loads((imp / "report" / "report.json").read_text())["pairs"] == 3
    assert "no margin column" in (imp / "report" / "report.md").read_text()
