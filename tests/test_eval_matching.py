"""The eval compares a base image with its tuned twin (same prompt, same seed) only: an image one side
left out (a safety checker blanked it) leaves its twin unpaired, counted and written aside."""

import json

import numpy as np
import pyarrow as pa
import pytest

from raypref import quarantine as Q
from raypref import schema as S
from raypref.evaluate import exact_accuracy, match_sides, per_image

MAIN = S.score_column("vqa")


def _side(rows):
    """A side's stored scores: a row a prompt, list columns a value an image; rows: (pid, seeds, scores, passed)."""
    lists = pa.list_(pa.float32())
    return pa.table({S.PROMPT_ID: [r[0] for r in rows], S.SEED: pa.array([r[1] for r in rows], pa.list_(pa.int64())),
                     MAIN: pa.array([r[2] for r in rows], lists), MAIN + "_colour": pa.array([r[3] for r in rows], lists)})


def test_per_image_flattens_a_prompts_images():
    t = per_image(_side([("p1", [5, 6], [0.1, 0.2], [1, 0]), ("p2", [7], [0.3], [1])]), MAIN)
    assert t.to_pydict() == {S.PROMPT_ID: ["p1", "p1", "p2"], S.SEED: [5, 6, 7],
                             MAIN: pytest.approx([0.1, 0.2, 0.3]), MAIN + "_colour": [1.0, 0.0, 1.0]}


def test_twins_are_matched_by_prompt_and_seed_and_the_rest_set_aside():
    base = _side([("p2", [3, 4], [0.5, 0.25], [1, 0]), ("p1", [1, 2], [0.0, 1.0], [0, 1])])
    # the tuned side lost p2's seed 3 (blanked) and lists p1's seeds in another order
    tuned = _side([("p1", [2, 1], [0.75, 0.5], [1, 1]), ("p2", [4], [1.0], [1])])
    pairs, unpaired = match_sides(base, tuned, MAIN, "gen")
    got = pairs.to_pydict()
    assert got[S.PROMPT_ID] == ["p1", "p1", "p2"] and got[S.SEED] == [1, 2, 4]
    assert got[S.base_column(MAIN)] == [0.0, 1.0, 0.25]  # each base score beside its own twin's
    assert got[S.tuned_column(MAIN)] == [0.5, 0.75, 1.0]
    assert unpaired["tuned"] == []
    assert unpaired["base"] == [Q.note("eval", S.sample_id("p2", "gen", 3),
                                       "unpaired: the tuned side has no image of this prompt and seed")]
    # exact checks over the twins: base passes 1 of 3 (p1 seed 2), tuned 3 of 3
    acc = exact_accuracy(pairs, MAIN, clusters=np.array([0, 0, 1]))
    assert set(acc) == {"colour"}
    assert acc["colour"]["base"]["accuracy"] == pytest.approx(1 / 3)
    assert acc["colour"]["tuned"]["accuracy"] == 1.0
    assert acc["colour"]["diff"]["diff"] == pytest.approx(2 / 3)


def test_an_aspect_no_compared_prompt_has_shows_no_prompts_not_nan():
    """A pass/fail aspect that applies to none of the eval prompts (every value NaN) has no rate: win_rate.md
    says so in a row of the table's five cells (the JSON holds null)."""
    from raypref.evaluate import accuracy_table

    rows = [("p1", [1], [0.5], [np.nan]), ("p2", [2], [0.25], [np.nan])]
    pairs, _ = match_sides(_side(rows), _side(rows), MAIN, "gen")
    acc = exact_accuracy(pairs, MAIN, clusters=np.array([0, 1]))
    passes = [("p1", [1], [0.5], [1]), ("p2", [2], [0.5], [1])]
    acc["shape"] = exact_accuracy(match_sides(_side(passes), _side(passes[:1] + [("p2", [2], [0.5], [0])]), MAIN, "gen")[0],
                                  MAIN)["colour"]
    table = accuracy_table({"scorer": "vqa", "accuracy": acc})
    assert "nan" not in table
    assert "| colour | 0 | no prompts | no prompts | - |" in table
    assert "| shape | 2 | 1.000 (" in table and "| -0.500 (" in table  # an aspect with prompts: as before
    assert all(line.count("|") == 6 for line in table.splitlines() if line.startswith("|"))


def test_no_twins_at_all_is_an_error():
    with pytest.raises(RuntimeError, match="no image of the base side has a twin"):
        match_sides(_side([("p1", [1], [0.5], [1])]), _side([("p1", [9], [0.5], [1])]), MAIN, "gen")


def test_each_stored_block_keeps_its_notes_and_a_side_reads_every_files_columns(tmp_path):
    import pyarrow.parquet as pq

    from raypref.evaluate import eval_columns, read_side

    scored = _side([("p1", [1], [0.5], [1])]).append_column(S.PROMPT, pa.array(["x"])).append_column(
        "image", pa.array([[b"png"]], pa.list_(pa.binary())))
    plain = eval_columns(scored, MAIN)  # no notes in the block: an empty notes column all the same
    assert plain.column_names == [S.PROMPT_ID, S.SEED, MAIN, MAIN + "_colour", S.PROMPT, S.QUARANTINE_NOTES]
    assert plain.column(S.QUARANTINE_NOTES).to_pylist() == [[]]
    note = Q.note("generate", "p2|gen|3", "safety checker: blanked")
    noted = eval_columns(Q.add_notes(_side([("p2", [4], [1.0], [1])]), [[note]]), MAIN)
    assert Q.explode(noted).to_pylist() == [note]
    # a side an earlier version began (no notes column) and this one finished: the later file's notes are read
    (tmp_path / "scores").mkdir()
    pq.write_table(plain.drop_columns([S.QUARANTINE_NOTES, S.PROMPT]), tmp_path / "scores" / "a.parquet")
    pq.write_table(noted, tmp_path / "scores" / "b.parquet")
    side = read_side(tmp_path / "scores")
    assert sorted(side.column(S.PROMPT_ID).to_pylist()) == ["p1", "p2"] and Q.explode(side).to_pylist() == [note]


def test_win_rate_json_writes_null_where_there_is_no_number():
    """eval/win_rate.json holds json_text of its result: a win rate or an interval with no data (every
    pair has a NaN score) is null there, not json.dumps' bare NaN, which strict parsers reject."""
    from raypref.metrics import accuracy, json_text, paired_difference, win_rate

    r = win_rate([np.nan, 0.5], [0.75, np.nan], clusters=["p1", "p2"])
    r["accuracy"] = {"overall": {"base": accuracy([np.nan, 1.0]), "tuned": accuracy([np.nan, np.nan]),
                                 "diff": paired_difference([np.nan, 1.0], [np.nan, np.nan])}}
    r["inf"] = (np.float64("inf"), -np.inf)
    assert "NaN" in json.dumps(r)  # what was written before
    back = json.loads(json_text(r), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert (back["n"], back["skipped_nan"], back["win_rate"], back["win_rate_ci95"]) == (0, 2, None, [None, None])
    assert back["base_mean"] is None and back["tuned_mean"] is None
    acc = back["accuracy"]["overall"]
    assert acc["base"]["accuracy"] == 1.0 and acc["tuned"]["accuracy"] is None and acc["tuned"]["ci95"] == [None, None]
    assert acc["diff"] == {"n": 0, "diff": None, "ci95": [None, None]} and back["inf"] == [None, None]
    assert json_text({"a": 0.5, "b": [1, "x"]}) == json.dumps({"a": 0.5, "b": [1, "x"]}, indent=2) + "\n"  # finite: as before


def test_pairs_with_a_nan_score_are_noted_per_side_and_counted_in_the_table_and_line():
    """A judge that rated no image leaves NaN: the win rate leaves those pairs out, and each is written
    aside (by sample id, naming prompt, seed and side) and counted in win_rate.md and the summary line."""
    from raypref.evaluate import nan_notes, win_rate_table
    from raypref.metrics import win_rate
    from raypref.report import summary_line

    base = _side([("p1", [1, 2], [0.5, np.nan], [1, 0]), ("p2", [3], [np.nan], [1])])
    tuned = _side([("p1", [1, 2], [0.75, 0.5], [1, 1]), ("p2", [3], [np.nan], [1])])
    pairs, _ = match_sides(base, tuned, MAIN, "gen")
    notes = nan_notes(pairs, MAIN, "gen")
    assert [n[S.ROW] for n in notes["base"]] == [S.sample_id("p1", "gen", 2), S.sample_id("p2", "gen", 3)]
    assert notes["base"][0][S.REASON].startswith(f"NaN score: {MAIN} on the base side (prompt p1, seed 2)")
    assert notes["tuned"] == [Q.note("eval", S.sample_id("p2", "gen", 3), f"NaN score: {MAIN} on the both sides "
                                     "(prompt p2, seed 3); the pair is left out of the win rate")]
    r = win_rate(pairs.column(S.base_column(MAIN)).to_numpy(), pairs.column(S.tuned_column(MAIN)).to_numpy(),
                 clusters=["p1", "p1", "p2"])
    r.update({"scorer": "vqa", "prompts": 2, "quarantined": {"eval: NaN score": 3}})
    assert (r["n"], r["skipped_nan"]) == (1, 2)
    assert "| vqa | 1 | 2 | 1 | 0 | 0 |" in win_rate_table(r)
    line = summary_line("eval", r, "out")
    assert "(n=1 pairs compared, 2 left out for a NaN score)" in line and "eval: NaN score 3" in line


def test_eval_keeps_a_judges_events_and_sums_them_per_side():
    from raypref.evaluate import eval_columns, judge_events

    ev = S.judge_events_column("vqa")
    scored = _side([("p1", [1, 2], [0.5, np.nan], [1, 0])]).append_column(
        ev, pa.array([['{"requests": 2, "ok": 1, "http_429": 1}', '{"requests": 3, "malformed": 3}']], pa.list_(pa.string())))
    kept = eval_columns(scored, MAIN)
    assert ev in kept.column_names
    assert judge_events(kept) == {"http_429": 1, "malformed": 3, "ok": 1, "requests": 5}
    assert judge_events(eval_columns(_side([("p1", [1], [0.5], [1])]), MAIN)) is None  # no judge: no events


def test_eval_prompts_write_aside_duplicates_and_name_an_unset_key(tmp_path):
    from raypref.config import load_config
    from raypref.evaluate import eval_prompts, run_eval

    p = tmp_path / "p.txt"
    p.write_text("a red circle\n\na red circle\ntwo green stars\n")
    cfg = load_config(None, [f"eval.prompts={p}"])
    prompts, bad = eval_prompts(cfg.eval)
    assert prompts.column(S.PROMPT).to_pylist() == ["a red circle", "two green stars"]
    assert [(b[S.ROW], b[S.REASON].split(":")[0]) for b in bad] == [(f"{p}:2", "empty prompt"), (f"{p}:3", "duplicate prompt")]
    with pytest.raises(ValueError, match="eval.prompts: not set"):
        run_eval(load_config(None, ["eval.prompts="]))
    with pytest.raises(ValueError, match=r"^eval.prompts: prompts file not found: .*/none.txt"):  # the key that named it
        eval_prompts(load_config(None, [f"eval.prompts={tmp_path / 'none.txt'}"]).eval)
