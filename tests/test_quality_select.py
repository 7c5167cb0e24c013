"""Quality metrics on hand-computed values; exact global top-p selection against a full sort;
the all-pairs builder; the rank stage through its job and the CLI. No Ray."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from raypref import quality as Q
from raypref import schema as S
from raypref import select as SEL
from raypref.pairs_bulk import all_pairs, with_all_pairs

NAN = float("nan")
SCORERS = ["score_a", "score_b", "score_c"]


def pairs_table(n: int, **cols) -> pa.Table:
    """A full pairs table (S.pairs_schema with three scorers); columns not given get defaults."""
    data = {
        S.PROMPT_ID: [f"p{i}" for i in range(n)],
        S.PROMPT: ["a red circle"] * n,
        S.CHOSEN_ID: [f"c{i}" for i in range(n)],
        S.REJECTED_ID: [f"r{i}" for i in range(n)],
        S.CHOSEN_IMAGE: [b"img"] * n,
        S.REJECTED_IMAGE: [b"img"] * n,
        S.LABEL_SOURCE: ["test"] * n,
        S.LABEL: [1.0] * n,
        S.CHOSEN_GENERATOR: ["g"] * n,
        S.REJECTED_GENERATOR: ["g"] * n,
    }
    data.update(cols)
    schema = S.pairs_schema(SCORERS)
    return pa.table({f.name: pa.array(data.get(f.name, [None] * n), f.type) for f in schema}, schema=schema)


# ---- metrics on hand-computed values ---------------------------------------------------------


def test_margin_chosen_quality_combined_hand_values():
    t = pairs_table(
        3,
        chosen_score=[3.0, 2.5, NAN],
        rejected_score=[1.0, 2.0, 1.0],
        chosen_score_a=[0.5, 0.25, 1.0],
        rejected_score_a=[0.25, 0.5, None],  # null -> NaN
    )
    assert Q.margin(t).tolist()[:2] == [2.0, 0.5] and math.isnan(Q.margin(t)[2])
    m_a = Q.margin(t, column="score_a")
    assert m_a.tolist()[:2] == [0.25, -0.25] and math.isnan(m_a[2])
    assert Q.margin(t, column="score").tolist()[:2] == [2.0, 0.5]  # 'score' is the aggregate too
    assert Q.chosen_quality(t).tolist()[:2] == [3.0, 2.5] and math.isnan(Q.chosen_quality(t)[2])
    assert Q.chosen_quality(t, column="score_a").tolist() == [0.5, 0.25, 1.0]
    # 1.0 * margin + 0.5 * chosen: 2 + 1.5 = 3.5; 0.5 + 1.25 = 1.75; NaN
    c = Q.combined(t, margin_weight=1.0, chosen_weight=0.5)
    assert c.tolist()[:2] == [3.5, 1.75] and math.isnan(c[2])
    # margin on the aggregate, chosen quality of scorer a: 2 + 0.5*0.5 = 2.25; 0.5 + 0.5*0.25 = 0.625
    c2 = Q.combined(t, margin_weight=1.0, chosen_weight=0.5, chosen_column="score_a")
    assert c2.tolist()[:2] == [2.25, 0.625]
    assert Q.combined(t).tolist()[:2] == [2.5, 1.5]  # defaults 0.5 / 0.5
    with pytest.raises(ValueError, match="chosen_score_zzz"):
        Q.margin(t, column="score_zzz")


def test_agreement_hand_values():
    #          scorer a       scorer b      scorer c       label
    # row 0:  +0.5 agree     +2 agree      -1 disagree     1      -> 2/3
    # row 1:  -0.5 agree     +2 disagree   NaN abstain     0      -> 1/2
    # row 2:   0   agree      0.1 (tie?)    0 agree        0.5    -> tol 0: 2/3; tol 0.2: 3/3
    # row 3:  NaN            NaN           NaN             1      -> NaN (all abstain)
    # row 4:  +1             +1            +1              NaN    -> NaN (no label)
    t = pairs_table(
        5,
        chosen_score_a=[1.5, 0.0, 1.0, NAN, 1.0], rejected_score_a=[1.0, 0.5, 1.0, 0.0, 0.0],
        chosen_score_b=[3.0, 3.0, 1.1, NAN, 1.0], rejected_score_b=[1.0, 1.0, 1.0, 0.0, 0.0],
        chosen_score_c=[0.0, NAN, 2.0, NAN, 1.0], rejected_score_c=[1.0, 0.0, 2.0, 0.0, 0.0],
        label=[1.0, 0.0, 0.5, 1.0, NAN],
    )
    q = Q.agreement(t)
    assert q[:3] == pytest.approx([2 / 3, 1 / 2, 2 / 3]) and np.isnan(q[3:]).all()
    assert Q.agreement(t, tie_tolerance=0.2)[2] == pytest.approx(1.0)
    # weights: a=2, b=1, c=1 -> row 0: (2+1)/4; row 1: 2/3 (c abstains)
    assert Q.agreement(t, weights={"score_a": 2.0})[:2] == pytest.approx([3 / 4, 2 / 3])
    # margin-weighted: row 0: (0.5 + 2 + 0) / 3; row 1: (0.5 + 0) / 2
    assert Q.agreement(t, margin_weighted=True)[:2] == pytest.approx([2.5 / 3, 0.25])
    # a subset of scorers
    assert Q.agreement(t, columns=["score_b"])[:2].tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="score_zzz"):
        Q.agreement(t, weights={"score_zzz": 1.0})


def test_agreement_votes_once_per_scorer_not_per_aspect():
    # scorer a, and judge j with aspects x and y (score_j_x, score_j_y); score_ab is another scorer
    assert S.main_score_columns(["score_a", "score_j", "score_j_x", "score_j_y", "score_ab"]) == ["score_a", "score_j", "score_ab"]
    #          a          j          j_x        j_y      label
    # row 0:  +1 agree   -1 no      +1 agree   +1 agree   1   -> scorers a, j: 1/2 (every column: 3/4)
    # row 1:  -1 no      +1 agree   -1 no      -1 no      1   -> 1/2 (every column: 1/4)
    cols = {"score_a": ([1.0, 0.0], [0.0, 1.0]), "score_j": ([0.0, 1.0], [1.0, 0.0]),
            "score_j_x": ([1.0, 0.0], [0.0, 1.0]), "score_j_y": ([1.0, 0.0], [0.0, 1.0])}
    data = {S.LABEL: pa.array([1.0, 1.0], pa.float32())}
    for c, (ch, rj) in cols.items():
        data[S.chosen_column(c)], data[S.rejected_column(c)] = ch, rj
    t = pa.table(data)
    assert Q.agreement(t).tolist() == [0.5, 0.5]
    assert Q.needed_columns(Q.agreement, t.schema.names, {}) == [S.LABEL, "chosen_score_a", "rejected_score_a",
                                                                 "chosen_score_j", "rejected_score_j"]
    # aspects vote when named: a, j_x, j_y -> row 0: 3/3, row 1: 0/3; weights j_x = 2 -> (1 + 2 + 1) / 4
    named = ["score_a", "score_j_x", "score_j_y"]
    assert Q.agreement(t, columns=named).tolist() == [1.0, 0.0]
    assert Q.agreement(t, columns=named, weights={"score_j_x": 2}).tolist() == [1.0, 0.0]
    assert Q.agreement(t, columns=["score_j", "score_j_x"], weights={"score_j_x": 3}).tolist() == [0.75, 0.25]
    # weights that are no mapping, name a column that does not vote, or are no number >= 0
    for bad, msg in (([1], "a mapping"), ({"score_j_x": 1.0}, r"\['score_j_x'\], which are not among"),
                     ({"score_a": -1}, "'score_a': a finite number >= 0"), ({"score_a": "2"}, "a finite number")):
        with pytest.raises(ValueError, match=r"rank.metric_args.weights: .*" + msg):
            Q.agreement(t, weights=bad)
        with pytest.raises(ValueError, match="rank.metric_args.weights"):  # before any data is read
            Q.needed_columns(Q.agreement, t.schema.names, {"weights": bad})
    with pytest.raises(ValueError, match="rank.metric_args.columns: a non-empty list"):
        Q.agreement(t, columns="score_a")


def test_scorer_names_that_read_as_another_scorers_aspect_are_refused():
    from raypref.config import ConfigError, validate

    scorer = {"cls": "jpeg_compressibility"}
    validate({"build": {"scorers": [{"name": "hps", **scorer}, {"name": "hpsv2", **scorer}]}})
    with pytest.raises(ConfigError, match="scorer name 'hps_v2' extends 'hps' by '_'"):
        validate({"build": {"scorers": [{"name": "hps", **scorer}, {"name": "hps_v2", **scorer}]}})


def test_metric_registry_plugin_and_argument_errors(tmp_path, monkeypatch):
    assert set(Q.METRICS) >= {"margin", "chosen_quality", "combined", "agreement"}
    (tmp_path / "my_metrics.py").write_text(
        "import numpy as np\n"
        "def rejected_low(batch, scale=1.0):\n"
        "    return -scale * batch.column('rejected_score').to_numpy()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = Q.resolve_metric("my_metrics:rejected_low")
    t = pairs_table(2, rejected_score=[1.0, -2.0])
    assert Q.compute(fn, t, {"scale": 2.0}).tolist() == [-2.0, 4.0]
    assert Q.needed_columns(fn, t.schema.names, {}) is None  # no declared columns: read them all
    assert Q.needed_columns(Q.margin, t.schema.names, {"column": "score_a"}) == ["chosen_score_a", "rejected_score_a"]
    for bad, msg in (("nope", "not a built-in"), ("no_such_mod:f", "cannot import"), ("my_metrics:nothing", "has no 'nothing'")):
        with pytest.raises(ValueError, match=msg):
            Q.resolve_metric(bad)
    with pytest.raises(ValueError, match="metric_args for 'margin'"):
        Q.check_args(Q.margin, {"colum": "score_a"}, "margin")
    with pytest.raises(ValueError, match="returned shape"):
        Q.compute(lambda b: np.zeros(1), t, {}, "short")


# ---- exact global top-p ----------------------------------------------------------------------


def _write_shards(d, t: pa.Table, sizes) -> list[pa.Table]:
    d.mkdir()
    shards, start = [], 0
    for i, n in enumerate(sizes):
        shard = t.slice(start, n)
        pq.write_table(shard, d / f"part-{i:03d}.parquet", row_group_size=7)
        shards.append(shard)
        start += n
    assert start == t.num_rows
    return shards


def _reference(shards: list[pa.Table], top_p: float) -> list[str]:
    """The whole table sorted by the documented order; the prompt ids (unique here) of the top K."""
    rows = []
    for s, shard in enumerate(shards):
        q = (np.asarray(shard.column(S.CHOSEN_SCORE).to_numpy(zero_copy_only=False), np.float64)
             - np.asarray(shard.column(S.REJECTED_SCORE).to_numpy(zero_copy_only=False), np.float64)).astype(np.float32)
        for r, (qq, c, j, p) in enumerate(zip(q, *(shard.column(x).to_pylist() for x in (S.CHOSEN_ID, S.REJECTED_ID, S.PROMPT_ID)))):
            if not np.isnan(qq):
                rows.append((-float(qq), c, j, s, r, p))
    rows.sort()
    k = math.ceil(top_p * len(rows) - 1e-9)
    return sorted(x[-1] for x in rows[:k])


def test_global_top_p_is_exact_across_shards_with_ties(tmp_path, monkeypatch):
    monkeypatch.setattr(SEL, "MIN_MERGE_ROWS", 16)  # merge (and tighten the cut) often
    rng = np.random.default_rng(0)
    n = 3000
    chosen = rng.integers(0, 6, n).astype(np.float32)  # margins in -2..5: heavy ties at every cut
    rejected = rng.integers(0, 4, n).astype(np.float32)
    chosen[rng.random(n) < 0.05] = np.nan
    # ids from a small pool, so ties at the cut are broken by ids, and some (chosen, rejected)
    # pairs repeat exactly (then shard and row order them)
    cid = [f"c{x}" for x in rng.integers(0, 40, n)]
    rid = [f"r{x}" for x in rng.integers(0, 40, n)]
    t = pairs_table(n, chosen_score=chosen, rejected_score=rejected, chosen_id=cid, rejected_id=rid)
    shards = _write_shards(tmp_path / "pairs", t, [1000, 0, 1, 777, 1222])
    n_nan = int(np.isnan(chosen).sum())
    for i, p in enumerate([0.0533, 0.0001, 0.2, 0.5, 0.999, 1.0]):
        s = SEL.rank_pairs(tmp_path / "pairs", tmp_path / f"out{i}", "margin", {}, p, batch_mb=0.01, progress=False)
        got = pds.dataset(tmp_path / f"out{i}", format="parquet").to_table()
        want = _reference(shards, p)
        assert sorted(got.column(S.PROMPT_ID).to_pylist()) == want, p
        assert s["n_in"] == n and s["n_nan"] == n_nan and s["n_valid"] == n - n_nan
        assert s["n_kept"] == s["k"] == len(want) == math.ceil(p * (n - n_nan) - 1e-9)
        # quality written as the metric's value, and the kept rows are at or above the cut
        q = got.column(S.QUALITY).to_numpy()
        assert np.allclose(q, got.column(S.CHOSEN_SCORE).to_numpy() - got.column(S.REJECTED_SCORE).to_numpy())
        assert q.min() == s["threshold"]["quality"] == s["quality_kept"]["min"]
        assert s["tied_kept"] <= s["tied_at_threshold"]
    assert s["k"] == n - n_nan  # p = 1 keeps every valid pair


def test_selection_does_not_depend_on_sharding(tmp_path):
    """Ties broken by ids, not by position: the same pairs split differently select the same set."""
    rng = np.random.default_rng(1)
    n = 500
    t = pairs_table(n, chosen_score=rng.integers(0, 3, n).astype(np.float32), rejected_score=np.zeros(n, np.float32),
                    chosen_id=[f"c{x:04d}" for x in rng.permutation(n)])
    a, b = tmp_path / "a", tmp_path / "b"
    _write_shards(a, t, [n])
    _write_shards(b, t, [100, 150, 250])
    sel = []
    for src in (a, b):
        SEL.rank_pairs(src, tmp_path / f"out_{src.name}", "margin", {}, 0.3, progress=False)
        sel.append(sorted(pds.dataset(tmp_path / f"out_{src.name}", format="parquet").to_table().column(S.CHOSEN_ID).to_pylist()))
    assert sel[0] == sel[1] and len(sel[0]) == 150


def test_top_k_count_and_edge_cases(tmp_path):
    assert SEL.top_k_count(0.0533, 10000) == 533  # not 534 from float rounding
    assert SEL.top_k_count(0.0533, 357143 * 28) == 533001
    assert SEL.top_k_count(0.0001, 5) == 1 and SEL.top_k_count(1.0, 5) == 5
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="top_p"):
            SEL.top_k_count(bad, 10)
    # every quality NaN: K = 0, an empty but readable selection with the schema
    t = pairs_table(4, chosen_score=[NAN] * 4, rejected_score=[1.0] * 4)
    _write_shards(tmp_path / "pairs", t, [4])
    s = SEL.rank_pairs(tmp_path / "pairs", tmp_path / "out", "margin", {}, 0.5, progress=False)
    assert (s["k"], s["n_kept"], s["n_nan"], s["threshold"]) == (0, 0, 4, None)
    got = pds.dataset(tmp_path / "out", format="parquet").to_table()
    assert got.num_rows == 0 and got.schema.field(S.QUALITY).type == pa.float32()


def test_rank_replaces_a_local_selection_whole(tmp_path, monkeypatch):
    # the earlier selection stays untouched until the new one, whole in its staging dir, is renamed over it
    import raypref.resume

    t = pairs_table(4, chosen_score=[1.0, 2.0, 3.0, 4.0], rejected_score=[0.0] * 4)
    _write_shards(tmp_path / "pairs", t, [2, 2])
    out = tmp_path / "sel"
    SEL.rank_pairs(tmp_path / "pairs", out, "margin", {}, 1.0, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    seen = []

    def swap(staging, target):
        seen.append(({p.name: p.read_bytes() for p in target.iterdir()}, pds.dataset(staging).count_rows()))
        raypref.resume.swap_in(staging, target)

    monkeypatch.setattr(SEL, "swap_in", swap)
    s = SEL.rank_pairs(tmp_path / "pairs", out, "margin", {}, 0.5, overwrite=True, progress=False)
    assert seen == [(before, 2)]  # at the swap: the old selection as it was, the new one whole beside it
    assert s["n_kept"] == pds.dataset(out).count_rows() == 2 and not (tmp_path / "sel.partial").exists()


def test_rank_errors_name_the_problem(tmp_path, monkeypatch):
    t = pairs_table(3, chosen_score=[1.0, 2.0, 3.0], rejected_score=[0.0] * 3)
    _write_shards(tmp_path / "pairs", t, [3])
    src = tmp_path / "pairs"
    with pytest.raises(ValueError, match=r"part-000.parquet has no column \['chosen_score_zzz'"):
        SEL.rank_pairs(src, tmp_path / "o1", "margin", {"column": "score_zzz"}, 0.5, progress=False)
    with pytest.raises(ValueError, match="overlap"):
        SEL.rank_pairs(src, src / "sel", "margin", {}, 0.5, progress=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        SEL.rank_pairs(src, tmp_path / "full", "margin", {}, 0.5, progress=False)
    assert (tmp_path / "full" / "keep.txt").is_file()  # refused before anything was deleted
    with pytest.raises(FileNotFoundError, match="no pairs at"):
        SEL.rank_pairs(tmp_path / "none", tmp_path / "o2", "margin", {}, 0.5, progress=False)
    # a metric that is not row-wise (here: it depends on which columns the batch has, which differ
    # between the two passes) is caught by the kept-count check
    (tmp_path / "bad_metric.py").write_text(
        "import numpy as np\n"
        "def by_width(batch):\n"
        "    return np.full(batch.num_rows, float(batch.num_columns))\n"
        "by_width.columns = lambda names: ['chosen_score']\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RuntimeError, match="row-wise"):
        SEL.rank_pairs(src, tmp_path / "o3", "bad_metric:by_width", {}, 0.4, progress=False)
    assert not (tmp_path / "o3.partial").exists()
    # an error in the second pass, over an earlier selection: that selection stays whole, and
    # the half-written staging dir is removed at once, not left for the next run
    SEL.rank_pairs(src, tmp_path / "o4", "margin", {}, 0.5, progress=False)
    before = sorted(p.name for p in (tmp_path / "o4").iterdir())
    (tmp_path / "pass2_fails.py").write_text(
        "import numpy as np\n"
        "def fails_on_full_batches(batch):\n"
        "    if batch.num_columns > 3:  # pass 1 reads 3 columns, pass 2 all\n"
        "        raise ValueError('boom in pass 2')\n"
        "    return np.asarray(batch.column('chosen_score'), np.float64)\n"
        "fails_on_full_batches.columns = lambda names: ['chosen_score']\n"
    )
    with pytest.raises(ValueError, match="boom in pass 2"):
        SEL.rank_pairs(src, tmp_path / "o4", "pass2_fails:fails_on_full_batches", {}, 0.5, overwrite=True, progress=False)
    assert not (tmp_path / "o4.partial").exists()
    assert sorted(p.name for p in (tmp_path / "o4").iterdir()) == before
    # weights as a list: an error naming the key before anything is written
    with pytest.raises(ValueError, match="rank.metric_args.weights: a mapping"):
        SEL.rank_pairs(src, tmp_path / "o5", "agreement", {"columns": ["score_a"], "weights": [1]}, 0.5, progress=False)
    assert not (tmp_path / "o5").exists() and not (tmp_path / "o5.partial").exists()
    # other files and staging dirs under the input are not read; a .parquet Arrow cannot read is named
    (src / "report").mkdir()
    (src / "report" / "report.json").write_text("{}")
    (src / "old.old").mkdir()
    (src / "old.old" / "part-000.parquet").write_text("not parquet")
    (src / "._part.parquet").write_text("a macOS copy's resource fork")  # hidden: Arrow skips it, and so does rank
    assert SEL.rank_pairs(src, tmp_path / "o6", "margin", {}, 1.0, progress=False)["n_in"] == 3
    (src / "report" / "broken.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=r"rank.input: .*report/broken.parquet is not a readable Parquet file"):
        SEL.rank_pairs(src, tmp_path / "o7", "margin", {}, 1.0, progress=False)


# ---- all pairs -------------------------------------------------------------------------------


def test_all_pairs_hand_values():
    # group 0: [1, 3, 2]   -> (0,1): 1 chosen over 0, m 2; (0,2): 2 over 0, m 1; (1,2): 1 over 2, m 1
    # group 1: [5]         -> none
    # group 2: [4, 4, nan, 6] -> (0,1) tie; (0,2),(1,2),(2,3) NaN; (0,3): 3 over 0 m 2; (1,3): 3 over 1 m 2
    p = all_pairs([1, 3, 2, 5, 4, 4, NAN, 6], [0, 3, 4, 8])
    assert p.group.tolist() == [0, 0, 0, 2, 2]
    assert list(zip(p.chosen.tolist(), p.rejected.tolist())) == [(1, 0), (2, 0), (1, 2), (3, 0), (3, 1)]
    assert p.margin.tolist() == [2, 1, 1, 2, 2]
    assert (p.ties, p.unscored, p.below_margin) == (1, 3, 0)
    q = all_pairs([1, 3, 2], [0, 3], min_margin=1.5)
    assert q.chosen.tolist() == [1] and q.below_margin == 2
    assert len(all_pairs(np.arange(8.0), [0, 8]).chosen) == 28


def test_all_pairs_matches_the_per_prompt_strategy():
    """The vectorised builder gives, prompt by prompt, the pairs of raypref.pairs.all_pairs."""
    from raypref.pairs import all_pairs as per_prompt

    rng = np.random.default_rng(3)
    sizes = rng.integers(0, 9, 60)
    x = rng.integers(0, 5, sizes.sum()).astype(np.float64)  # many ties
    x[rng.random(x.size) < 0.1] = np.nan
    off = np.concatenate([[0], np.cumsum(sizes)])
    for mm in (0.0, 2.0):
        p = all_pairs(x, off, min_margin=mm)
        for g in range(sizes.size):
            got = {(int(c), int(r), float(m)) for c, r, m in zip(p.chosen[p.group == g], p.rejected[p.group == g], p.margin[p.group == g])}
            want = {(q.chosen, q.rejected, q.margin) for q in per_prompt(x[off[g]:off[g + 1]], min_margin=mm)}
            assert got == want, (g, mm)


def test_all_pairs_groups_explode_like_the_build():
    from raypref.build import explode_pairs

    f32 = pa.list_(pa.float32())
    groups = pa.table({
        S.PROMPT_ID: ["p0", "p1"], S.PROMPT: ["x", "y"],
        S.SAMPLE_ID: [["a", "b", "c"], ["d", "e"]], S.IMAGE: [[b"A", b"B", b"C"], [b"D", b"E"]],
        S.GENERATOR: [["g"] * 3, ["g"] * 2],
        "score_a": pa.array([[0.1, 0.9, 0.5], [2.0, 1.0]], f32), S.SCORE: pa.array([[0.1, 0.9, 0.5], [2.0, 1.0]], f32),
    })
    g, p = with_all_pairs(groups)
    pairs = explode_pairs(g, label_source="test")
    assert pairs.schema.equals(S.pairs_schema(["score_a"]), check_metadata=False)
    got = list(zip(*(pairs.column(c).to_pylist() for c in (S.CHOSEN_ID, S.REJECTED_ID, S.CHOSEN_IMAGE))))
    assert got == [("b", "a", b"B"), ("c", "a", b"C"), ("b", "c", b"B"), ("d", "e", b"D")]
    assert pairs.column(S.MARGIN).to_pylist() == pytest.approx([0.8, 0.4, 0.4, 1.0])
    assert pairs.column(S.LABEL).to_pylist() == [1.0] * 4

    # groups stored by a build with kept ties: their old pair lists, labels too, give way to the new ones
    i32 = pa.list_(pa.int32())
    stored = groups.append_column(S.PAIR_CHOSEN, pa.array([[0], [0]], i32)).append_column(
        S.PAIR_REJECTED, pa.array([[2], [1]], i32)).append_column(
        S.PAIR_MARGIN, pa.array([[0.0], [1.0]], f32)).append_column(S.PAIR_LABEL, pa.array([[0.5], [1.0]], f32))
    again = explode_pairs(with_all_pairs(stored)[0], label_source="test")
    assert again.column(S.LABEL).to_pylist() == [1.0] * 4
    assert list(zip(*(again.column(c).to_pylist() for c in (S.CHOSEN_ID, S.REJECTED_ID)))) == [g[:2] for g in got]


# ---- the stage: job and CLI ------------------------------------------------------------------


def test_rank_job_and_cli(tmp_path, capsys):
    from jobs.rank_pairs import main
    from raypref.config import validate

    rng = np.random.default_rng(2)
    n = 40
    cols = {c: rng.random(n).astype(np.float32) for s in SCORERS for c in (S.chosen_column(s), S.rejected_column(s))}
    t = pairs_table(n, chosen_score=rng.random(n).astype(np.float32), rejected_score=rng.random(n).astype(np.float32), **cols)
    _write_shards(tmp_path / "pairs", t, [25, 15])
    run = tmp_path / "run"
    cfg = validate({"output_dir": str(run), "rank": {"input": str(tmp_path / "pairs"), "metric": "agreement",
                                                     "metric_args": {"margin_weighted": True}, "top_p": 0.25}})
    s = main(cfg)
    assert s["n_kept"] == 10 and s["metric"] == "agreement"
    for f in ("summary.json", "config.yaml", "run_meta.json"):
        assert (run / "rank" / f).is_file()
    assert json.loads((run / "rank" / "summary.json").read_text())["n_kept"] == 10
    kept = pds.dataset(run / "rank" / "pairs", format="parquet").to_table()
    full = Q.agreement(t, margin_weighted=True).astype(np.float32)
    assert sorted(kept.column(S.QUALITY).to_pylist(), reverse=True) == sorted(full.tolist(), reverse=True)[:10]

    # the CLI, rerun into the same run dir (the stage replaces its own output), default metric
    r = subprocess.run([sys.executable, "-m", "raypref.cli", "rank", f"output_dir={run}", f"rank.input={tmp_path / 'pairs'}",
                        "rank.top_p=0.1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "[rank] margin: 40 pairs (0 NaN quality, never kept) -> top 10% of 40 = 4 kept" in r.stdout
    assert pds.dataset(run / "rank" / "pairs", format="parquet").count_rows() == 4
    from raypref.cli import main as cli

    assert cli(["rank", f"output_dir={run}", f"rank.input={tmp_path / 'pairs'}", "rank.metric=nope"]) == 2
    assert "rank.metric 'nope'" in capsys.readouterr().err
