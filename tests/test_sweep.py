"""Sweeps (raypref.sweep) and their data-size knobs: the grid, the metric paths, resume and failure
on rank points (no Ray), concurrent points as Ray tasks, a reward-model data-size sweep in Ray Train,
the random-subset metric and reward.train_fraction."""

import hashlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from raypref import quality as Q
from raypref import schema as S
from raypref.config import ConfigError, validate
from raypref.sweep import SweepFailed, expand_grid, point_configs, point_name, run_sweep, select, substitute
from raypref.train_reward import heldout_mask, subset_mask
from tests.test_quality_select import pairs_table

# -- pure parts, hand values ---------------------------------------------------------------------


def test_expand_grid_first_key_slowest():
    assert expand_grid({"a": [1, 2], "b": ["x", "y", "z"]}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"},
        {"a": 2, "b": "x"}, {"a": 2, "b": "y"}, {"a": 2, "b": "z"}]
    assert expand_grid({}) == [{}]
    with pytest.raises(ConfigError, match="sweep.grid.a: needs a non-empty list"):
        expand_grid({"a": []})


def test_point_name_and_substitute():
    assert point_name({"rank.top_p": 0.1, "rank.metric": "random"}) == "rank.top_p=0.1,rank.metric=random"
    assert point_name({"x": "a/b c", "y": None, "z": True}) == "x=a-b-c,y=null,z=true"
    assert point_name({}) == "base"
    cfg = {"reward": {"pairs": ["{point}/rank/pairs", "/fixed"], "seed": 3}, "n": "{point}"}
    assert substitute(cfg, "/runs/p1") == {"reward": {"pairs": ["/runs/p1/rank/pairs", "/fixed"], "seed": 3}, "n": "/runs/p1"}


def test_select_keys_indices_and_filters():
    doc = {"rows": [{"scorer": "clip", "output": "overall", "accuracy": 0.7},
                    {"scorer": "reward", "output": "overall", "accuracy": 0.8},
                    {"scorer": "reward", "output": "aesthetic", "accuracy": 0.6}],
           "n": {"kept": 4}, "pct": {"0.5": 2}}
    assert select(doc, "rows[scorer=reward,output=overall].accuracy") == 0.8
    assert select(doc, "rows.2.accuracy") == 0.6
    assert select(doc, "n.kept") == 4
    with pytest.raises(KeyError, match=r"\[scorer=reward\] matches 2 items, not 1"):
        select(doc, "rows[scorer=reward].accuracy")
    with pytest.raises(KeyError, match=r"no 'kep' at this step \(there: \['kept'\]\)"):
        select(doc, "n.kep")
    with pytest.raises(KeyError, match="a list of 3"):
        select(doc, "rows.7")


# -- the random-subset metric and reward.train_fraction --------------------------------------------


def test_random_metric_hand_value_rowwise_and_seeded():
    t = pairs_table(400)
    q = Q.random(t)
    # the hash written out by hand: sha256 of the parts joined by \x1f, first 16 hex digits / 16**16
    h = hashlib.sha256("\x1f".join(["rank-random", "0", "c0", "r0"]).encode()).hexdigest()[:16]
    assert q[0] == int(h, 16) / 16**16
    assert ((q >= 0) & (q < 1)).all() and 0.4 < q.mean() < 0.6
    assert (Q.random(t.slice(100, 50)) == q[100:150]).all()  # row-wise: the batch does not matter
    assert (Q.random(t, seed=1) != q).mean() > 0.99
    assert Q.resolve_metric("random") is Q.random and Q.random.columns(t.schema.names) == [S.CHOSEN_ID, S.REJECTED_ID]


def test_train_fraction_subsets_are_nested_and_apart_from_the_heldout_split():
    ids = [S.prompt_id(f"prompt {i}") for i in range(2000)]
    small, big, whole = subset_mask(ids, 0.1), subset_mask(ids, 0.3), subset_mask(ids, 1.0)
    assert whole.all() and 0.07 < small.mean() < 0.13 and 0.26 < big.mean() < 0.34
    assert not (small & ~big).any()  # nested: every prompt kept at 0.1 is kept at 0.3
    held = heldout_mask(ids, 0.3)
    assert (held != big).any()  # a second hash, not the held-out one
    assert 0.05 < (big & held).mean() < 0.13  # independent: about 0.3 * 0.3 of the prompts


# -- the sweep runner on rank points (no Ray) --------------------------------------------------------


def _sweep_cfg(tmp_path, pairs, **sweep):
    sw = {"stages": ["rank"],
          "grid": {"rank.top_p": [0.25, 0.5, 1.0], "rank.metric": ["margin", "random"]},
          "metrics": [{"name": "kept", "value": "rank/summary.json:n_kept"},
                      {"name": "qmin", "value": "rank/summary.json:quality_kept.min"}],
          "x": "rank.top_p"}
    sw.update(sweep)
    return validate({"output_dir": str(tmp_path / "run"), "rank": {"input": str(pairs)}, "sweep": sw})


def _write_pairs(tmp_path, n=40):
    rng = np.random.default_rng(0)
    t = pairs_table(n, chosen_score=rng.random(n).astype(np.float32), rejected_score=rng.random(n).astype(np.float32))
    d = tmp_path / "pairs"
    d.mkdir()
    pq.write_table(t, d / "part-0.parquet")
    return d


def test_sweep_runs_every_point_reads_metrics_plots_and_resumes(tmp_path, capsys):
    pairs = _write_pairs(tmp_path)
    cfg = _sweep_cfg(tmp_path, pairs)
    s = run_sweep(cfg)
    assert s["points"] == 6 and s["ran"] == 6 and s["resumed"] == 0 and not s["failed"]
    out = tmp_path / "run" / "sweep"
    rows = json.loads((out / "results.json").read_text())
    assert [(r["rank.top_p"], r["rank.metric"]) for r in rows] == [
        (0.25, "margin"), (0.25, "random"), (0.5, "margin"), (0.5, "random"), (1.0, "margin"), (1.0, "random")]
    for r in rows:  # each point's own measurement: exactly ceil(p * n) kept
        assert r["kept"] == math.ceil(r["rank.top_p"] * 40) and r["status"] == "done"
        p = out / "points" / r["point"]
        assert json.loads((p / "rank" / "summary.json").read_text())["n_kept"] == r["kept"]
        assert (p / "rank" / "config.yaml").is_file() and (p / "rank" / "run_meta.json").is_file()
    # random subsets are nested: the 25% kept pairs are among the 50% kept pairs
    kept = {r["rank.top_p"]: set(pq.read_table(out / "points" / r["point"] / "rank" / "pairs").column(S.CHOSEN_ID).to_pylist())
            for r in rows if r["rank.metric"] == "random"}
    assert kept[0.25] < kept[0.5] < kept[1.0]
    assert (out / "results.csv").read_text().splitlines()[0].startswith("point,rank.top_p,rank.metric,kept,qmin,status")
    assert "| point | rank.top_p |" in (out / "results.md").read_text()
    assert s["plots"] == ["kept.png", "qmin.png"] and (out / "kept.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "config.yaml").is_file() and json.loads((out / "run_meta.json").read_text())["stage"] == "sweep"
    assert "[sweep] 6 points (6 ran, 0 done before, 0 failed)" in capsys.readouterr().out

    # rerun: nothing runs again, and a metric added since is read from the points' files
    stamp = {r["point"]: (out / "points" / r["point"] / "result.json").stat().st_mtime_ns for r in rows}
    metrics = cfg.sweep.model_dump()["metrics"] + [{"name": "n_in", "value": "rank/summary.json:n_in"}]
    s2 = run_sweep(_sweep_cfg(tmp_path, pairs, metrics=metrics, x="rank.metric"))  # a text axis now
    assert s2["resumed"] == 6 and s2["ran"] == 0 and s2["plots"] == ["kept.png", "qmin.png", "n_in.png"]
    assert all((out / "points" / p / "result.json").stat().st_mtime_ns == t for p, t in stamp.items())
    assert [r["n_in"] for r in json.loads((out / "results.json").read_text())] == [40] * 6

    # a changed base config makes the points stale: they run again
    changed = _sweep_cfg(tmp_path, pairs).model_copy(update={"rank": cfg.rank.model_copy(update={"batch_mb": 128.0})})
    assert run_sweep(changed)["ran"] == 6
    assert capsys.readouterr().out.count("its config changed: runs from scratch (the earlier run is kept in") == 6
    assert len(list((out / "points").glob("*.replaced-*"))) == 6  # kept whole, not mixed into the new runs


def test_a_point_reruns_for_an_added_stage_or_an_unreadable_result(tmp_path):
    from raypref.sweep import _done, read_metric

    d = tmp_path / "p"
    d.mkdir()
    row = {"point": "p", "overrides": {}, "seconds": 1.0}  # what the results table reads of a result
    (d / "result.json").write_text(json.dumps({"config": {"a": 1}, "stages": ["rank"]}))
    assert _done(d, {"a": 1}, ["rank"]) == (None, f"runs again ({d / 'result.json'} lacks point, overrides, seconds)", False)
    (d / "result.json").write_text(json.dumps({**row, "config": {"a": 1}, "stages": ["rank"]}))
    assert _done(d, {"a": 1}, ["rank"])[0]["stages"] == ["rank"]
    assert _done(d, {"a": 1}, ["rank", "report"]) == (None, "runs again for the stage(s) added since: report", False)
    # a key raypref added since the point ran, at its default, is no change; at another value it is one
    assert _done(d, {"a": 1, "ray": {"v1_read_max_mb": 32.0}}, ["rank"])[1] == "done"
    assert _done(d, {"a": 1, "ray": {"v1_read_max_mb": 0.0}}, ["rank"])[1].startswith("runs again in place")
    # only its scale or budget changed: it runs again where it is, and its stages resume
    base = {"a": 1, "ray": {"num_cpus": 8}, "reward": {"max_steps": 10, "lr": 1.0},
            "build": {"scorers": [{"name": "s", "pool": {"batch_size": 4}}]}}
    (d / "result.json").write_text(json.dumps({**row, "config": base, "stages": ["rank"]}))
    scaled = {"a": 1, "ray": {"num_cpus": 2}, "reward": {"max_steps": 20, "lr": 1.0},
              "build": {"scorers": [{"name": "s", "pool": {"batch_size": 16}}]}}
    assert _done(d, scaled, ["rank"]) == (None, "runs again in place (only its scale or budget changed; its stages resume)", False)
    assert (d / "result.json").is_file()  # not moved aside
    other = {**scaled, "reward": {"max_steps": 20, "lr": 2.0}}
    # the config changed otherwise: it is to be moved aside, which run_sweep does once every point is judged
    assert _done(d, other, ["rank"]) == (None, "its config changed: runs from scratch", True) and (d / "result.json").is_file()
    (d / "result.json").write_text('{"config": ')  # cut short
    assert _done(d, {"a": 1}, ["rank"]) == (None, f"runs again ({d / 'result.json'} is unreadable)", False)
    for other in ("[]", "null", "3"):  # valid JSON, but not a result: runs again too
        (d / "result.json").write_text(other)
        assert _done(d, {"a": 1}, ["rank"]) == (None, f"runs again ({d / 'result.json'} holds no JSON object)", False)
    (d / "result.json").write_bytes(b'{"config": "\xff"}')
    assert _done(d, {"a": 1}, ["rank"]) == (None, f"runs again ({d / 'result.json'} is unreadable)", False)
    (d / "x.md").write_text("# not JSON")
    with pytest.raises(ConfigError, match=r"sweep.metrics.m.value: 'x.md:a': .*x\.md is not JSON"):
        read_metric(d, "x.md:a", "sweep.metrics.m.value")


def test_read_metric_names_the_key_the_file_and_what_is_there(tmp_path):
    from raypref.sweep import read_metric

    d = tmp_path / "p"
    (d / "eval").mkdir(parents=True)
    (d / "eval" / "win_rate.json").write_text(json.dumps(
        {"win_rate": 0.75, "n": 4, "win_rate_ci95": [None, None], "old": float("nan"), "big": float("inf"),
         "accuracy": {"overall": {"n": 2}}, "rows": [{"scorer": "clip", "v": 1}, {"scorer": "vqa", "v": 2}]}))
    key = "sweep.metrics.win.value"
    assert read_metric(d, "eval/win_rate.json:win_rate", key) == 0.75
    # null (a stage measured nothing) and the bare NaN or Infinity older files hold: no number, not an error
    assert [read_metric(d, f"eval/win_rate.json:{p}", key) for p in ("win_rate_ci95.0", "old", "big")] == [None] * 3
    f = d / "eval" / "win_rate.json"
    with pytest.raises(ConfigError, match=rf"^{key}: in {f}, 'win_rat': no 'win_rat' at this step \(there: "
                                          r"\['accuracy', 'big', 'n', 'old', 'rows', 'win_rate', 'win_rate_ci95'\]\)"):
        read_metric(d, "eval/win_rate.json:win_rat", key)
    with pytest.raises(ConfigError, match=rf"^{key}: 'eval/win_rate.json:accuracy' in {f} is a dict with keys "
                                          r"\['overall'\], not a number"):
        read_metric(d, "eval/win_rate.json:accuracy", key)
    with pytest.raises(ConfigError, match=r"\[scorer=vqaa\] matches 0 items, not 1 \(there: scorer=clip; scorer=vqa\)"):
        read_metric(d, "eval/win_rate.json:rows[scorer=vqaa].v", key)
    # a missing file is no config error (a stage may yet write it); its dir's files are named
    with pytest.raises(FileNotFoundError, match=rf"^{key}: no file {d / 'eval' / 'win_rate.jsn'} .*; "
                                                rf"{d / 'eval'} holds win_rate.json$"):
        read_metric(d, "eval/win_rate.jsn:win_rate", key)
    # a spec that is not '<file>:<path>', or a path that does not parse: an error before any point runs
    pairs = _write_pairs(tmp_path)
    for value, err in (("rank/summary.json", r"'rank/summary.json' is not '<file>:<path>'"),
                       ("rank/summary.json:rows[scorer", r"cannot parse near '\[scorer'"),
                       ("rank/summary.json:rows[x]", r"\[x\] needs key=value terms")):
        with pytest.raises(ConfigError, match=rf"^sweep.metrics.bad.value: .*{err}"):
            point_configs(_sweep_cfg(tmp_path, pairs, metrics=[{"name": "bad", "value": value}]))


def test_a_metric_typo_stops_a_rerun_before_any_finished_point_runs_again(tmp_path, capsys):
    pairs = _write_pairs(tmp_path)
    grid = {"rank.top_p": [0.25, 0.5]}
    run_sweep(_sweep_cfg(tmp_path, pairs, grid=grid))
    out = tmp_path / "run" / "sweep"
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("points/*/*/*") if p.is_file()}
    assert stamps
    capsys.readouterr()
    summary = out / "points" / "rank.top_p=0.25" / "rank" / "summary.json"
    typo = [{"name": "kept", "value": "rank/summary.json:n_kep"}]
    with pytest.raises(ConfigError, match=rf"^sweep.metrics.kept.value: in {summary}, 'n_kep': no 'n_kep' at this step "
                                          r"\(there: \[.*'n_kept'.*\]\) \(read from the finished point rank.top_p=0.25, "
                                          r"before any point ran; .*delete it\)"):
        run_sweep(_sweep_cfg(tmp_path, pairs, grid=grid, metrics=typo))
    assert "running" not in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # no stage wrote anything again
    # an earlier point that would be moved aside (its config changed) stays where it is too
    first = out / "points" / "rank.top_p=0.25" / "result.json"
    record = first.read_text()
    changed = json.loads(record)
    changed["config"]["rank"]["batch_mb"] = 128.0  # as the base config's test above changes it: not scale alone
    first.write_text(json.dumps(changed))
    with pytest.raises(ConfigError, match=r"read from the finished point rank.top_p=0.5, before any point ran"):
        run_sweep(_sweep_cfg(tmp_path, pairs, grid=grid, metrics=typo))
    assert not list((out / "points").glob("*.replaced-*")) and first.is_file()
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    first.write_text(record)
    # a value that is not a number is a typo too; the CLI ends it as a config error (2), not a failed sweep
    not_number = [{"name": "q", "value": "rank/summary.json:quality_kept"}]
    with pytest.raises(ConfigError, match=r"sweep.metrics.q.value: 'rank/summary.json:quality_kept' in .* is a dict with keys"):
        run_sweep(_sweep_cfg(tmp_path, pairs, grid=grid, metrics=not_number))
    # a metric whose file the finished points lack runs them again: their stages may write it
    missing = [{"name": "kept", "value": "rank/summary.json:n_kept"}, {"name": "w", "value": "eval/win_rate.json:win_rate"}]
    with pytest.raises(SweepFailed, match="2 of 2 points failed"):
        run_sweep(_sweep_cfg(tmp_path, pairs, grid=grid, metrics=missing))
    text = capsys.readouterr().out
    assert text.count("runs again (a metric cannot be read: sweep.metrics.w.value: no file") == 2


def test_a_metric_typo_on_a_fresh_sweep_fails_each_point_naming_the_metric(tmp_path):
    pairs = _write_pairs(tmp_path)
    typo = [{"name": "kept", "value": "rank/summary.json:n_kep"}]
    with pytest.raises(SweepFailed, match="1 of 1 points failed: rank.top_p=0.5"):
        run_sweep(_sweep_cfg(tmp_path, pairs, grid={"rank.top_p": [0.5]}, metrics=typo))
    err = (tmp_path / "run" / "sweep" / "points" / "rank.top_p=0.5" / "error.txt").read_text()
    assert "ConfigError: sweep.metrics.kept.value: in " in err and "no 'n_kep' at this step (there: [" in err
    assert not (tmp_path / "run" / "sweep" / "points" / "rank.top_p=0.5" / "result.json").exists()
    # fixed, the rerun succeeds and the point's error goes
    assert run_sweep(_sweep_cfg(tmp_path, pairs, grid={"rank.top_p": [0.5]}))["ran"] == 1
    assert not (tmp_path / "run" / "sweep" / "points" / "rank.top_p=0.5" / "error.txt").exists()


def test_a_null_metric_reads_as_no_number_in_the_table_and_plots(tmp_path, capsys):
    pairs = _write_pairs(tmp_path)
    run_sweep(_sweep_cfg(tmp_path, pairs, grid={"rank.top_p": [0.25, 0.5, 1.0]}))
    out = tmp_path / "run" / "sweep"
    f = out / "points" / "rank.top_p=0.5" / "rank" / "summary.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "n_kept": None}))  # as a stage that measured nothing writes it
    capsys.readouterr()
    s = run_sweep(_sweep_cfg(tmp_path, pairs, grid={"rank.top_p": [0.25, 0.5, 1.0]}))
    assert s["resumed"] == 3 and s["ran"] == 0 and s["plots"] == ["kept.png", "qmin.png"]
    assert "point 2/3 rank.top_p=0.5: done before, kept=null (no number), qmin=" in capsys.readouterr().out
    # strict JSON: null, never a bare NaN
    rows = json.loads((out / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert [r["kept"] for r in rows] == [10, None, 40]
    assert (out / "results.md").read_text().splitlines()[3].startswith("| rank.top_p=0.5 | 0.5 |  |")
    assert (out / "results.csv").read_text().splitlines()[2].startswith("rank.top_p=0.5,0.5,,")


def test_a_failed_point_is_reported_the_others_finish_and_a_rerun_retries_it(tmp_path):
    pairs = _write_pairs(tmp_path)
    # a top_p of 2 is caught by the point's own validation before anything runs
    # named by number and grid keys, not by values
    with pytest.raises(ConfigError, match=r"^sweep point 2/2 \(rank.top_p; sweep.set applied\): invalid config\n"
                                          r"  rank.top_p: Input should be less than or equal to 1"):
        point_configs(_sweep_cfg(tmp_path, pairs, grid={"rank.top_p": [0.5, 2]}))
    with pytest.raises(ConfigError, match=r"^sweep point 1/1 \(rank.nope.x; sweep.set applied\): invalid config\n  rank.nope: unknown key"):
        point_configs(_sweep_cfg(tmp_path, pairs, grid={"rank.nope.x": [1]}, x=None))
    # two points whose values make one dir name: named by number and keys too, before any is validated
    with pytest.raises(ConfigError, match=r"^sweep.grid: points 1/3 and 3/3 \(rank.metric\) would share one dir: "):
        point_configs(_sweep_cfg(tmp_path, pairs, grid={"rank.metric": ["a b", "margin", "a-b"]}, x=None))
    with pytest.raises(ConfigError, match="sweep.set.output_dir: the sweep sets output_dir"):
        point_configs(_sweep_cfg(tmp_path, pairs, set={"output_dir": "x"}))
    # metric_args that margin takes and random does not: the random point's stage fails
    grid = {"rank.top_p": [0.5], "rank.metric": ["margin", "random"]}
    cfg = _sweep_cfg(tmp_path, pairs, grid=grid)
    cfg = cfg.model_copy(update={"rank": cfg.rank.model_copy(update={"metric_args": {"column": "score"}})})
    with pytest.raises(SweepFailed, match=r"1 of 2 points failed: rank.top_p=0.5,rank.metric=random"):
        run_sweep(cfg)
    points = tmp_path / "run" / "sweep" / "points"
    err = points / "rank.top_p=0.5,rank.metric=random" / "error.txt"
    assert "rank.metric_args for 'random'" in err.read_text()
    rows = json.loads((tmp_path / "run" / "sweep" / "results.json").read_text())
    assert [r["status"] for r in rows] == ["done", "failed"] and rows[0]["kept"] == 20
    assert not (points / "rank.top_p=0.5,rank.metric=margin" / "error.txt").exists()
    # fixed (no metric_args), a rerun retries the failed point and clears its error file
    s = run_sweep(_sweep_cfg(tmp_path, pairs, grid={"rank.top_p": [0.5], "rank.metric": ["random"]}))
    assert s["ran"] == 1 and s["points"] == 1 and not err.exists()


def test_a_points_error_goes_before_its_result_is_written_and_a_stale_one_beside_a_result_goes(tmp_path, monkeypatch):
    from raypref import sweep as SW

    pairs = _write_pairs(tmp_path)
    cfg = _sweep_cfg(tmp_path, pairs, grid={"rank.top_p": [0.5]})
    [(name, point, pcfg)] = point_configs(cfg)
    d = tmp_path / "run" / "sweep" / "points" / name
    d.mkdir(parents=True)
    (d / "error.txt").write_text("Traceback: an earlier attempt\n")
    seen = []
    real = SW.write_atomic
    # what is on disk when result.json is put in place: a crash then must not leave the old error beside it
    monkeypatch.setattr(SW, "write_atomic", lambda path, text: (seen.append((d / "error.txt").exists()), real(path, text)))
    SW.run_point(name, point, pcfg, SW._point_config(pcfg), cfg.sweep, SW._stage_fns())
    assert seen == [False] and (d / "result.json").is_file() and not (d / "error.txt").exists()
    monkeypatch.undo()
    # a finished point with an error beside its result (a task that died after writing it, or an attempt
    # under other settings since reverted): it is done, and the stale error goes
    (d / "error.txt").write_text("ray.exceptions.WorkerCrashedError\n")
    s = run_sweep(cfg)
    assert s["resumed"] == 1 and not s["failed"] and not (d / "error.txt").exists()
    assert [r["status"] for r in json.loads((tmp_path / "run" / "sweep" / "results.json").read_text())] == ["done"]


def test_sweep_fits_a_scaling_law_per_line_and_draws_it(tmp_path, capsys):
    pairs = _write_pairs(tmp_path)
    metrics = [{"name": "kept", "value": "rank/summary.json:n_kept", "fit": "power_law"}]
    s = run_sweep(_sweep_cfg(tmp_path, pairs, metrics=metrics))
    out = tmp_path / "run" / "sweep"
    fits = json.loads((out / "fits.json").read_text())["kept"]
    # kept = ceil(p * 40) = 10, 20, 40 at p = 0.25, 0.5, 1: exactly 40 * p^1, for either metric
    assert set(fits) == {"rank.metric=margin", "rank.metric=random"}
    for f in fits.values():
        assert f["x"] == "rank.top_p" and f["n"] == 3
        assert f["params"]["a"] == pytest.approx(40.0) and f["params"]["b"] == pytest.approx(1.0)
    assert "[sweep] fit kept vs rank.top_p (rank.metric=margin): y = 40 * x^1" in capsys.readouterr().out
    assert s["plots"] == ["kept.png"] and (out / "kept.png").read_bytes()[:4] == b"\x89PNG"

    # one point is too few to fit: the reason is recorded and the sweep still succeeds
    one = _sweep_cfg(tmp_path, pairs, metrics=metrics, grid={"rank.top_p": [0.5]})
    run_sweep(one)
    assert json.loads((out / "fits.json").read_text()) == {
        "kept": {"": {"x": "rank.top_p", "form": "power_law", "error": "fit power_law: needs at least 2 points, got 1"}}}
    # a fit needs a numeric axis that is not the metric itself: caught before anything runs
    with pytest.raises(ConfigError, match=r"sweep.metrics.kept.fit: the x axis 'rank.metric' must hold numbers > 0"):
        point_configs(_sweep_cfg(tmp_path, pairs, metrics=metrics, x="rank.metric"))
    with pytest.raises(ConfigError, match="sweep.metrics.kept.fit: needs an x axis other than the metric itself"):
        point_configs(_sweep_cfg(tmp_path, pairs, metrics=metrics, x="kept"))


def test_cli_sweep_exit_codes(tmp_path):
    pairs = _write_pairs(tmp_path)
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(json.dumps({"output_dir": str(tmp_path / "run"), "rank": {"input": str(pairs)},
                               "sweep": {"stages": ["rank"], "grid": {"rank.top_p": [0.5]},
                                         "metrics": [{"name": "bad", "value": "rank/summary.json:nope"}]}}))
    r = subprocess.run([sys.executable, "-m", "raypref.cli", "sweep", "--config", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 1 and "1 of 1 points failed: rank.top_p=0.5" in r.stderr
    r = subprocess.run([sys.executable, "-m", "raypref.cli", "sweep", "--config", str(cfg), "sweep.stages=[]"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "sweep.stages: name at least one stage" in r.stderr


def test_concurrent_points_run_as_ray_tasks_in_grid_order_and_a_failure_is_kept(ray_session, tmp_path):
    pairs = _write_pairs(tmp_path)
    grid = {"rank.top_p": [0.25, 0.5, 1.0], "rank.metric": ["margin", "random"]}
    cfg = _sweep_cfg(tmp_path, pairs, grid=grid, concurrency=3)
    # metric_args that margin takes and random does not: the three random points fail in their tasks
    cfg = cfg.model_copy(update={"rank": cfg.rank.model_copy(update={"metric_args": {"column": "score"}})})
    with pytest.raises(SweepFailed, match=r"3 of 6 points failed: rank.top_p=0.25,rank.metric=random, "
                                          r"rank.top_p=0.5,rank.metric=random, rank.top_p=1.0,rank.metric=random"):
        run_sweep(cfg)
    out = tmp_path / "run" / "sweep"
    rows = json.loads((out / "results.json").read_text())
    assert [(r["rank.top_p"], r["rank.metric"], r["status"]) for r in rows] == [  # grid order, not finishing order
        (0.25, "margin", "done"), (0.25, "random", "failed"), (0.5, "margin", "done"),
        (0.5, "random", "failed"), (1.0, "margin", "done"), (1.0, "random", "failed")]
    assert [r["kept"] for r in rows if r["status"] == "done"] == [10, 20, 40]
    for r in rows:
        p = out / "points" / r["point"]
        if r["status"] == "failed":  # the task wrote the traceback where the point runs
            assert "rank.metric_args for 'random'" in (p / "error.txt").read_text()
        else:
            assert json.loads((p / "result.json").read_text())["pid"] != os.getpid()


# -- a reward-model data-size sweep in Ray Train -------------------------------------------------------


@pytest.mark.slow
def test_reward_data_size_sweep_trains_on_nested_prompt_subsets(ray_session, tmp_path, tiny_clip):
    from tests.test_reward_model import _cfg, synthetic_pairs

    pairs = tmp_path / "pairs"
    synthetic_pairs(pairs, n_prompts=48)
    base = _cfg(tmp_path / "run", [str(pairs / "a"), str(pairs / "b")], max_steps=4, eval_every=2, checkpoint_every=4)
    data = base.model_dump(mode="json")
    data["sweep"] = {"stages": ["train_reward"], "grid": {"reward.train_fraction": [0.4, 1.0]},
                     "set": {"reward.export_dir": "{point}/model"},  # at every point, not in its name
                     "metrics": [{"name": "pairs", "value": "reward/summary.json:pairs_train"},
                                 {"name": "heldout", "value": "reward/summary.json:pairs_heldout"},
                                 {"name": "acc", "value": "reward/summary.json:eval_accuracy.1"}],
                     "x": "pairs", "log_x": True, "concurrency": 2}
    s = run_sweep(validate(data))
    assert s["ran"] == 2 and s["plots"] == ["heldout.png", "acc.png"]  # none of x against itself
    # concurrency 2: both points ran as Ray tasks (not in this process), at the same time
    done = [json.loads(p.read_text()) for p in sorted((tmp_path / "run" / "sweep" / "points").glob("*/result.json"))]
    assert len(done) == 2 and all(r["pid"] != os.getpid() for r in done) and done[0]["pid"] != done[1]["pid"]
    assert max(r["started"] for r in done) < min(r["started"] + r["seconds"] for r in done)
    rows = json.loads((tmp_path / "run" / "sweep" / "results.json").read_text())
    small, whole = rows
    assert small["heldout"] == whole["heldout"]  # the held-out split does not change
    ids = [S.prompt_id(f"a shape number {p}") for p in range(48)]
    train = ~heldout_mask(ids, 0.25)
    assert whole["pairs"] == 2 * train.sum() and small["pairs"] == 2 * (train & subset_mask(ids, 0.4)).sum()
    assert 0 < small["pairs"] < whole["pairs"] and all(np.isfinite(r["acc"]) for r in rows)
    for r in rows:  # '{point}' put each point's export in its own dir
        assert (tmp_path / "run" / "sweep" / "points" / r["point"] / "model" / "reward_config.json").is_file()


# -- secrets in sweep.set and the grid -------------------------------------------------------------


def _judge_sweep_dict(tmp_path, pairs, **sweep) -> dict:
    judge = {"name": "j", "cls": "llm_judge",
             "args": {"http": {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "JUDGE_KEY"}}}
    sw = {"stages": ["rank"], "grid": {"rank.top_p": [0.5]}, "metrics": [{"name": "kept", "value": "rank/summary.json:n_kept"}]}
    sw.update(sweep)
    return {"output_dir": str(tmp_path / "run"), "rank": {"input": str(pairs)}, "build": {"scorers": [judge]}, "sweep": sw}


def test_a_key_pasted_into_sweep_set_or_the_grid_stops_the_sweep_before_anything_is_written(tmp_path):
    pairs = _write_pairs(tmp_path)
    pasted = "sk_live_" + "secret1" * 4
    cases = [
        ({"set": {"build.scorers.0.args.http.api_key_env": pasted}}, r"sweep point 1/1 \(rank.top_p; sweep.set applied\): "
         r"scorer 'j': invalid llm_judge args\n  args\.http\.api_key_env: .*NAME of an environment variable"),
        ({"grid": {"rank.top_p": [0.5], "build.scorers.0.args.http.extra_body.api_key": [pasted]}},
         r"sweep point 1/1 \(rank.top_p, build.scorers.0.args.http.extra_body.api_key; sweep.set applied\): "
         r"scorer 'j': invalid llm_judge args\n  args\.http\.extra_body: .*'api_key' looks like a credential"),
    ]
    for sweep, err in cases:
        with pytest.raises(ConfigError, match=err) as e:
            run_sweep(validate(_judge_sweep_dict(tmp_path, pairs, **sweep)))
        assert pasted not in str(e.value)
        assert not (tmp_path / "run").exists()  # no sweep/config.yaml, no point dir named by the key


def test_cli_config_checks_the_sweep_points_without_echoing_a_key(tmp_path, capsys):
    from raypref.cli import main

    pairs = _write_pairs(tmp_path)
    f = tmp_path / "j.yaml"
    f.write_text(json.dumps(_judge_sweep_dict(tmp_path, pairs)))
    pasted = "sk_live_" + "x9" * 12
    assert main(["config", "-c", str(f), "sweep.set={build.scorers.0.args.http.api_key_env: %s}" % pasted]) == 2
    out, err = capsys.readouterr()
    assert out == "" and pasted not in err
    assert "raypref config: error: sweep point 1/1 (rank.top_p; sweep.set applied): scorer 'j'" in err
    assert main(["config", "-c", str(f)]) == 0 and "api_key_env: JUDGE_KEY" in capsys.readouterr().out


def test_a_key_in_the_grid_that_fails_validation_is_not_echoed(tmp_path, capsys):
    from raypref.cli import main

    pasted = "gsk_secretvalue123"
    f = tmp_path / "s.yaml"
    f.write_text(json.dumps({"output_dir": str(tmp_path / "run"),
                             "sweep": {"stages": ["train_pcclip"], "set": {"pcclip.llm": {"base_url": "http://h:8000/v1", "model": "m"}},
                                       "grid": {"pcclip.llm.api_key_env": [pasted]}}}))
    for command in ("config", "sweep"):
        assert main([command, "-c", str(f)]) == 2
        out, err = capsys.readouterr()
        assert pasted not in out + err
        assert (f"raypref {command}: error: sweep point 1/1 (pcclip.llm.api_key_env; sweep.set applied): invalid config\n"
                "  pcclip.llm.api_key_env: Value error, must be the NAME of an environment variable") in err
    assert not (tmp_path / "run").exists()


def test_an_x_axis_that_is_neither_a_grid_key_nor_a_metric_is_a_config_error(tmp_path):
    pairs = _write_pairs(tmp_path)
    with pytest.raises(ConfigError, match=r"^sweep.x: 'rank.topp' is neither a grid key \(rank.top_p, rank.metric\) "
                                          r"nor a metric \(kept, qmin\)$"):
        point_configs(_sweep_cfg(tmp_path, pairs, x="rank.topp"))
    assert not (tmp_path / "run").exists()
    assert len(point_configs(_sweep_cfg(tmp_path, pairs, x="kept"))) == 6  # a metric is an axis


def test_metric_columns_that_would_overwrite_another_are_a_config_error(tmp_path):
    pairs = _write_pairs(tmp_path)
    kept = {"name": "kept", "value": "rank/summary.json:n_kept"}
    cases = [([kept, {**kept, "value": "rank/summary.json:n_in"}], "kept", "metric kept's column"),
             ([{"name": "k_low", "value": "rank/summary.json:n_in"}, {**kept, "name": "k", "low": "rank/summary.json:n_in"}],
              "k_low", "metric k_low's column"),
             ([{**kept, "name": "rank.metric"}], "rank.metric", "a grid key"),
             ([{**kept, "name": "status"}], "status", "a column of its own")]
    for metrics, col, what in cases:
        name = metrics[-1]["name"]
        with pytest.raises(ConfigError, match=rf"^sweep.metrics.{name}.name: its column '{col}' is already {what}$"):
            point_configs(_sweep_cfg(tmp_path, pairs, metrics=metrics))


def test_cli_config_runs_the_sweeps_own_checks(tmp_path, capsys):
    from raypref.cli import main

    f = tmp_path / "s.yaml"
    f.write_text(json.dumps(_sweep_cfg(tmp_path, _write_pairs(tmp_path), x="rank.topp").model_dump(mode="json")))
    assert main(["config", "-c", str(f)]) == 2
    assert "raypref config: error: sweep.x: 'rank.topp' is neither a grid key" in capsys.readouterr().err
    assert main(["config", "-c", str(f), "sweep.x=rank.top_p"]) == 0


def test_cli_config_checks_a_sweep_without_a_grid(tmp_path, capsys):
    from raypref.cli import main

    # one point, the base config: `raypref sweep` runs it, so `raypref config` checks its metrics as well
    f = tmp_path / "s.yaml"
    f.write_text(json.dumps({"output_dir": str(tmp_path / "run"),
                             "sweep": {"stages": ["rank"], "metrics": [{"name": "kept", "value": "rank/summary.json"}]}}))
    assert main(["config", "-c", str(f)]) == 2
    assert "raypref config: error: sweep.metrics.kept.value: 'rank/summary.json' is not '<file>:<path>'" in capsys.readouterr().err
    assert main(["config", "-c", str(f), "sweep.metrics.0.value=rank/summary.json:n_kept"]) == 0
    assert not (tmp_path / "run").exists()


def test_a_null_metric_on_the_x_axis_leaves_its_point_out_of_the_plot_and_the_fit(tmp_path):
    from raypref.sweep import _series, fit_metrics

    cfg = validate({"output_dir": str(tmp_path), "sweep": {
        "stages": ["rank"], "grid": {"rank.top_p": [0.25, 0.5, 1.0, 0.75]}, "x": "pairs",
        "metrics": [{"name": "pairs", "value": "a.json:n"}, {"name": "acc", "value": "a.json:acc", "fit": "power_law"}]}})
    rows = [{"point": str(i), "rank.top_p": p, "pairs": n, "acc": a, "status": "done"}
            for i, (p, n, a) in enumerate([(0.25, 10, 0.5), (0.5, 20, 0.6), (1.0, 40, 0.7), (0.75, None, 0.65)])]
    numeric, labels, series = _series(rows, cfg.sweep, "acc", "pairs")
    assert numeric and labels == [] and [r["pairs"] for r in series[""]] == [10, 20, 40]
    fits = fit_metrics(rows, tmp_path, cfg.sweep, "pairs")
    assert fits["acc"][""]["n"] == 3 and "error" not in fits["acc"][""]


def test_a_zero_width_interval_fits_its_line_unweighted_naming_the_point_and_an_inverted_one_no_fit(tmp_path, capsys):
    from raypref.sweep import fit_metrics

    cfg = validate({"output_dir": str(tmp_path), "sweep": {
        "stages": ["rank"], "grid": {"n": [10, 20, 40]},
        "metrics": [{"name": "acc", "value": "a.json:acc", "low": "a.json:lo", "high": "a.json:hi", "fit": "power_law"}]}})
    rows = [{"point": f"n={n}", "n": n, "acc": a, "acc_low": lo, "acc_high": hi, "status": "done"}
            for n, a, lo, hi in [(10, 0.5, 0.4, 0.6), (20, 0.6, 0.6, 0.6), (40, 0.7, 0.6, 0.8)]]
    f = fit_metrics(rows, tmp_path, cfg.sweep, "n")["acc"][""]
    assert "error" not in f and f["n"] == 3
    assert f["unweighted"] == "point n=20: a zero-width acc interval (acc_low = acc_high)"
    assert "(unweighted: point n=20: a zero-width acc interval" in capsys.readouterr().out
    rows[1]["acc_low"] = 0.65  # low above high: no weights to trust, and no fit
    f = fit_metrics(rows, tmp_path, cfg.sweep, "n")["acc"][""]
    assert f["error"] == "point n=20: its acc interval is inverted (acc_low 0.65 > acc_high 0.6)"

def test_an_interval_that_does_not_hold_its_value_is_plotted_without_bars_not_a_crash(tmp_path, capsys):
    from raypref.sweep import plot_metric

    cfg = validate({"output_dir": str(tmp_path), "sweep": {
        "stages": ["rank"], "grid": {"n": [10, 20]},
        "metrics": [{"name": "acc", "value": "a.json:acc", "low": "a.json:lo", "high": "a.json:hi"}]}})
    rows = [{"point": f"n={n}", "n": n, "acc": a, "acc_low": lo, "acc_high": hi, "status": "done"}
            for n, a, lo, hi in [(10, 0.5, 0.4, 0.6), (20, 0.7, 0.5, 0.6)]]
    assert plot_metric(rows, tmp_path, cfg.sweep, "acc", "n") == "acc.png"
    assert (tmp_path / "acc.png").read_bytes()[:4] == b"\x89PNG"
    assert "[sweep] plot acc: no error bars, as the acc interval of n=20 does not hold its value" in capsys.readouterr().out


def test_two_move_asides_of_a_point_in_one_second_keep_both(tmp_path, monkeypatch):
    from raypref import sweep

    monkeypatch.setattr(sweep.time, "strftime", lambda fmt: "20260101-000000")  # both within one second
    d = tmp_path / "p"
    kept = []
    for i in range(3):
        d.mkdir()
        (d / "result.json").write_text(str(i))
        kept.append(sweep._move_aside(d))
    assert [k.name for k in kept] == ["p.replaced-20260101-000000", "p.replaced-20260101-000000-2",
                                      "p.replaced-20260101-000000-3"]
    assert [(k / "result.json").read_text() for k in kept] == ["0", "1", "2"] and not d.exists()


def test_a_nan_setting_is_written_as_null_in_the_points_result_and_the_point_still_resumes(tmp_path, capsys):
    # a grid value (or any config value) of NaN: json.dumps wrote a bare NaN, which is no JSON (jq and JavaScript
    # reject it), and read back NaN != NaN, so the point's config never matched and it ran again from scratch
    pairs = _write_pairs(tmp_path)
    cfg = _sweep_cfg(tmp_path, pairs, grid={"rank.top_p": [0.5], "train.refl.margin": [float("nan")]})
    assert run_sweep(cfg)["ran"] == 1
    out = tmp_path / "run" / "sweep"
    strict = {"parse_constant": lambda c: pytest.fail(f"bare {c}")}
    (point,) = (out / "points").iterdir()
    result = json.loads((point / "result.json").read_text(), **strict)
    assert result["overrides"] == {"rank.top_p": 0.5, "train.refl.margin": None}
    assert result["config"]["train"]["refl"]["margin"] is None
    assert json.loads((out / "summary.json").read_text(), **strict)["ran"] == 1
    rerun = run_sweep(cfg)
    assert rerun["resumed"] == 1 and rerun["ran"] == 0
    assert "runs from scratch" not in capsys.readouterr().out
