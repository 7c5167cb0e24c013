"""The build pipeline on a local Ray: tables, schemas, pool resources (resume: test_resume_kill.py)."""

import json

import pyarrow.dataset as pds
import pytest

from raypref import schema as S
from raypref.build import pool_args, run_build
from raypref.config import PoolConf, validate

from conftest import tiny_config_dict


def test_build_writes_samples_and_pairs(built_run):
    cfg, summary = built_run
    out = cfg.stage_dir("build")
    samples = pds.dataset(out / "samples", format="parquet").to_table()
    pairs = pds.dataset(out / "pairs", format="parquet").to_table()
    assert summary["prompts"] == 4 and summary["samples"] == 16 and summary["pairs"] == 4
    assert samples.num_rows == 16 and pairs.num_rows == 4
    assert samples.schema.equals(S.samples_schema(["clip", "jpeg"]), check_metadata=False)
    assert pairs.schema.equals(S.pairs_schema(["score_clip", "score_jpeg"]), check_metadata=False)
    assert all(m > 0 for m in pairs.column(S.MARGIN).to_pylist())
    assert set(pairs.column(S.LABEL).to_pylist()) == {1.0} and set(pairs.column(S.CHOSEN_GENERATOR).to_pylist()) == {"tiny"}
    # chosen has the prompt's best aggregate score, rejected its worst
    by_prompt = {}
    for r in samples.select([S.PROMPT_ID, S.SAMPLE_ID, S.SCORE]).to_pylist():
        by_prompt.setdefault(r[S.PROMPT_ID], {})[r[S.SAMPLE_ID]] = r[S.SCORE]
    for p in pairs.to_pylist():
        scores = by_prompt[p[S.PROMPT_ID]]
        assert scores[p[S.CHOSEN_ID]] == max(scores.values())
        assert scores[p[S.REJECTED_ID]] == min(scores.values())
    assert (out / "config.yaml").is_file() and json.loads((out / "run_meta.json").read_text())["git_sha"]
    assert summary["quarantined"] == {} and not any((out / "quarantine").rglob("*.parquet"))
    report = json.loads((out / "report" / "report.json").read_text())
    assert (report["samples"], report["pairs"]) == (16, 4) and (out / "report" / "score_histograms.png").is_file()


def test_build_rerun_with_other_settings_is_refused_before_any_work(built_run):
    from raypref.build import guard_build_resume

    cfg, _ = built_run
    out = cfg.stage_dir("build")
    meta = (out / "config.yaml").read_text()
    d = cfg.model_dump(mode="json")
    d["build"]["scorers"][0]["weight"] = 0.5
    d["build"]["scorers"].append({"name": "jpeg2", "cls": "jpeg_compressibility"})
    with pytest.raises(ValueError, match=r"build: .*build\.scorers\.0\.weight: '0\.9' -> '0\.5'; "
                                         r"build\.scorers\.2\.args: \(not set\) -> '\{\}'.*would mix.*raypref pair"):
        run_build(validate(d))
    assert (out / "config.yaml").read_text() == meta  # nothing written
    # what only sizes the pools, or adds prompts, resumes the same build
    d = cfg.model_dump(mode="json")
    d["build"]["scorers"][0]["pool"]["batch_size"] = 1
    d["build"]["limit"] = 100
    guard_build_resume(validate(d).build, out)


def test_pool_resources_reach_ray_remote_args():
    args = pool_args(PoolConf(concurrency=3, batch_size=16, num_cpus=2, num_gpus=0.25))
    compute = args.pop("compute")
    assert (compute.min_size, compute.max_size) == (3, 3)
    assert args == {"batch_size": 16, "num_cpus": 2.0, "num_gpus": 0.25}


def test_pool_args_applied_to_map_batches(ray_session, tmp_path, tiny_sd, monkeypatch):
    """The Ray Data operator built for a pool carries the configured resources."""
    import ray.data

    from raypref import session
    from raypref.build import generate_and_score
    from raypref.config import GeneratorConf, ScorerConf

    # the plan is only inspected, never run: GPU pools on this GPU-less Ray get the joined cluster's warning
    monkeypatch.setenv(session.LOCAL_RAY_ENV, "0")

    g = GeneratorConf(name="g", model=tiny_sd, pool=PoolConf(concurrency=2, batch_size=3, num_cpus=0.5, num_gpus=0.25))
    s = ScorerConf(name="j", cls="jpeg_compressibility", pool=PoolConf(num_cpus=0.75))
    ds = generate_and_score(ray.data.from_items([{"prompt": "x"}]), [g], [s])
    ops = []
    op = ds._logical_plan.dag
    while op is not None:
        ops.append(op)
        op = op.input_dependencies[0] if op.input_dependencies else None
    by_name = {o.name: o for o in ops}
    gen_op = next(v for k, v in by_name.items() if "DiffusersGenerator" in k)
    jpeg_op = next(v for k, v in by_name.items() if "JpegCompressibility" in k)
    assert gen_op.ray_remote_args["num_gpus"] == 0.25 and gen_op.ray_remote_args["num_cpus"] == 0.5
    assert gen_op.compute.min_size == 2 and gen_op.compute.max_size == 2
    assert jpeg_op.ray_remote_args["num_cpus"] == 0.75


def test_pools_that_do_not_fit_the_ray_are_refused_before_the_pipeline(ray_session, monkeypatch, capsys):
    # the session's Ray has 8 CPUs and no GPU; Ray Data's read task needs one CPU beside the pools, and a
    # rerun's checkpoint filter another
    from raypref import session
    from raypref.build import check_pools_fit
    from raypref.config import ConfigError, GeneratorConf, ScorerConf

    assert session.started_here()  # init_ray started the session's Ray, and says so to its workers' environment
    gen = GeneratorConf(name="g", cls="shapes_render", pool=PoolConf(num_cpus=4))
    fits = ScorerConf(name="s", cls="shapes_vqa", pool=PoolConf(concurrency=2, num_cpus=1))  # 4 + 2 + 1 + 1 = 8
    check_pools_fit([gen], [fits])
    over = ScorerConf(name="s", cls="shapes_vqa", pool=PoolConf(concurrency=2, num_cpus=1.5))  # 4 + 3 + 1 + 1 = 9
    with pytest.raises(ConfigError, match=r"need 9 CPUs at once \(generator 'g' 1 x 4, scorer 's' 2 x 1.5, a read "
                                          r"task 1 and a rerun's checkpoint filter 1\) where this Ray has 8: .*raise "
                                          r"ray.num_cpus"):
        check_pools_fit([gen], [over])
    gpu = ScorerConf(name="s", cls="shapes_vqa", pool=PoolConf(num_cpus=0.5, num_gpus=0.25))
    with pytest.raises(ConfigError, match=r"need 0.25 GPUs at once \(scorer 's' 1 x 0.25\) where this Ray has 0"):
        check_pools_fit([gen], [gpu])
    monkeypatch.setenv(session.LOCAL_RAY_ENV, "0")  # a joined cluster's autoscaler may add nodes: a warning only
    check_pools_fit([gen], [over])
    assert "[ray] warning: the actor pools need 9 CPUs" in capsys.readouterr().out


def test_build_rejects_config_without_scorers(ray_session, tmp_path, prompts_file):
    cfg = tiny_config_dict(tmp_path, prompts_file)
    cfg["build"]["scorers"] = []
    with pytest.raises(ValueError, match="build.scorers"):
        run_build(validate(cfg))


def test_build_carries_aspect_and_rationale_columns(ray_session, tmp_path):
    """Scorers with several outputs (checker attributes, judge aspects + rationale) each get a column."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle on the left\ntwo blue squares\n")
    cfg = tiny_config_dict(tmp_path / "run", prompts)
    # renders (no model to load): this checks the scorers' columns, not the images
    cfg["build"]["generators"] = [{"name": "render", "cls": "shapes_render", "num_samples": 4, "args": {"true_renders": 2}}]
    cfg["build"]["scorers"] = [
        {"name": "vqa", "cls": "shapes_vqa", "weight": 1.0, "pool": {"batch_size": 2, "num_cpus": 0.5}},
        {"name": "judge", "cls": "simulated_judge", "weight": 1.0, "args": {"noise": 1.0},
         "pool": {"batch_size": 2, "num_cpus": 0.5}},
    ]
    summary = run_build(validate(cfg))
    samples = pds.dataset(tmp_path / "run" / "build" / "samples", format="parquet").to_table()
    assert summary["samples"] == 8 and samples.num_rows == 8
    pairs = pds.dataset(tmp_path / "run" / "build" / "pairs", format="parquet").count_rows()
    assert summary["pairs"] == pairs and summary["pairs"] + summary["prompts_without_pair"] == 2
    names = samples.column_names
    for col in ("score_vqa", "score_vqa_colour", "score_vqa_position", "score_vqa_overall",
                "score_judge", "score_judge_prompt_following", "score_judge_harmlessness"):
        assert col in names and samples.schema.field(col).type == S.samples_schema(["vqa"]).field("score_vqa").type
    assert samples.schema.field("rationale_judge").type == "string"
    assert all(r.startswith("[simulated judge]") for r in samples.column("rationale_judge").to_pylist())
    # the judge's noise follows the image, not the pool's actors or batches: rescored here, backwards, it is the same
    from raypref import images as I
    from raypref.registry import resolve

    again = resolve("simulated_judge")(name="judge", noise=1.0).score(
        [I.decode(b) for b in samples.column(S.IMAGE).to_pylist()[::-1]], samples.column(S.PROMPT).to_pylist()[::-1])
    for aspect in ("", "prompt_following", "fidelity", "aesthetic", "harmlessness"):
        assert samples.column(S.score_column("judge", aspect or None)).to_pylist() == again[aspect][::-1].tolist()
    pos = dict(zip(samples.column(S.PROMPT).to_pylist(), samples.column("score_vqa_position").to_pylist()))
    assert pos["two blue squares"] != pos["two blue squares"]  # NaN: no position in that prompt


def test_summary_of_a_build_without_pairs(tmp_path):
    """Every prompt tied: Ray Data writes no pairs files, and the summary says 0 pairs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raypref.build import summarize_build

    groups = tmp_path / "groups"
    groups.mkdir()
    pq.write_table(pa.table({S.PROMPT_ID: ["p"], S.SCORE: pa.array([[0.5, 0.5]], pa.list_(pa.float32())),
                             S.PAIR_CHOSEN: pa.array([[]], pa.list_(pa.int32()))}), groups / "g.parquet")
    s = summarize_build(tmp_path, 1, 0, 1.0)
    assert (s["pairs"], s["prompts_without_pair"], s["samples"]) == (0, 1, 2)


def test_summary_counts_a_weight_0_scorers_nans_and_the_stored_prompts(tmp_path):
    """A weight-0 judge's NaNs leave the aggregate whole but are still unscored samples (per scorer, too);
    a rerun that read fewer prompts than the groups hold reports the stored prompts, and the line says both."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raypref.build import summarize_build
    from raypref.report import summary_line

    f32 = pa.list_(pa.float32())
    (tmp_path / "groups").mkdir()
    pq.write_table(pa.table({
        S.PROMPT_ID: ["p1", "p2", "p3", "p4"],
        S.SCORE: pa.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8]], f32),
        S.PAIR_CHOSEN: pa.array([[1], [1], [1], [1]], pa.list_(pa.int32())),
        "score_clip": pa.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8]], f32),
        # p1 one NaN, p2 a short list (both samples unscored), p3 a null list, p4 scored
        "score_judge": pa.array([[float("nan"), 5.0], [5.0], None, [6.0, 7.0]], f32),
        "score_judge_fidelity": pa.array([[float("nan")] * 2] * 4, f32),  # an aspect: not a scorer's main column
    }), tmp_path / "groups" / "g.parquet")
    s = summarize_build(tmp_path, 2, 0, 1.0, scorers=["clip", "judge"])
    assert (s["samples"], s["samples_without_score"], s["unscored_by_scorer"]) == (8, 5, {"clip": 0, "judge": 5})
    assert (s["prompts"], s["prompts_read"]) == (4, 2)
    s.update(quarantined={})
    line = summary_line("build", s, "out")
    assert line.startswith("[build] 4 prompts (2 read this run) -> 8 samples -> 0 pairs")  # no pairs dir here
    assert "5 samples unscored [judge 5]" in line


def test_a_pool_batch_above_the_shard_size_is_warned_of_by_name(capsys):
    from raypref.build import warn_batch_unit
    from raypref.config import load_config

    cfg = load_config(None, ["build.shard_size=2"])
    g = cfg.build.generators[0].model_copy(update={"pool": cfg.build.generators[0].pool.model_copy(update={"batch_size": 8})})
    lines = warn_batch_unit([("generator", g)] + [("scorer", s) for s in cfg.build.scorers if s.pool.batch_size <= 2],
                            2, "build.shard_size", "[build]")
    assert len(lines) == 1 and f"generator {g.name!r} pool.batch_size 8 > build.shard_size 2" in lines[0]
    assert capsys.readouterr().out == lines[0] + "\n"
    assert warn_batch_unit([("generator", g)], 8, "build.shard_size", "[build]") == []


def test_an_unset_prompts_key_is_named(tmp_path):
    from raypref.build import run_build
    from raypref.config import load_config

    with pytest.raises(ValueError, match="build.prompts: not set"):
        run_build(load_config(None, ["build.prompts=", f"output_dir={tmp_path}"]))


def test_repair_from_stored_scores_runs_no_model(built_run, tmp_path):
    """Re-pairing reads the stored score columns only: with the generator's model path broken it
    still works, and top-2 vs bottom-2 gives up to 4 pairs per prompt where the build made 1."""
    from raypref.build import run_pair

    cfg, summary = built_run
    d = cfg.model_dump(mode="json")
    d["output_dir"] = str(tmp_path / "re")
    d["pair"] = {"groups": str(cfg.stage_dir("build") / "groups")}
    d["build"]["pairs"] = {"strategy": "top_k_vs_bottom_k", "k": 2}
    d["build"]["generators"][0]["model"] = "/no/such/model"
    s = run_pair(validate(d))
    pairs = pds.dataset(tmp_path / "re" / "pair" / "pairs", format="parquet").to_table()
    assert s["pairs"] == pairs.num_rows and summary["pairs"] < pairs.num_rows <= 4 * summary["prompts"]
    assert pairs.schema.equals(S.pairs_schema(["score_clip", "score_jpeg"]), check_metadata=False)
    assert all(m > 0 for m in pairs.column(S.MARGIN).to_pylist())
    # a scorer whose column was never stored is a clear error, not a model run
    d["build"]["scorers"].append({"name": "nope", "cls": "jpeg_compressibility"})
    with pytest.raises(Exception, match="no column \\['score_nope'\\]"):
        run_pair(validate(d))


def test_repair_checks_before_ray_quarantines_a_missing_list_and_swaps_its_output_whole(built_run, tmp_path, monkeypatch):
    """A re-pairing that fails leaves the earlier pair/ whole (config included); bad keys fail before Ray."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raypref import build, session
    from raypref.build import run_pair

    cfg, _ = built_run
    groups = pds.dataset(cfg.stage_dir("build") / "groups", format="parquet").to_table()
    i = groups.column_names.index("score_clip")
    clip = groups.column(i).to_pylist()
    clip[0] = None  # a stored row missing its score list
    (tmp_path / "g").mkdir()
    pq.write_table(groups.set_column(i, "score_clip", pa.array(clip, groups.schema.field(i).type)), tmp_path / "g" / "g.parquet")
    d = cfg.model_dump(mode="json")
    d["output_dir"] = str(tmp_path / "re")
    d["pair"] = {"groups": str(tmp_path / "g")}
    d["build"]["pairs"] = {"strategy": "top_k_vs_bottom_k", "k": 2}
    s = run_pair(validate(d))
    out = tmp_path / "re" / "pair"
    assert s["quarantined"] == {"pair: missing score": 1} and s["report"] == str(out / "report" / "report.md")
    assert s["samples"] == groups.num_rows * 4 and s["prompts_without_pair"] == 1 and s["pairs"] > 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def no_ray(_):
        raise AssertionError("Ray started before the inputs were checked")

    monkeypatch.setattr(session, "init_ray", no_ray)
    bad = [("build.scorers", lambda d: d["build"]["scorers"].append({"name": "jpeg2", "cls": "jpeg_compressibility"}),
            "no column \\['score_jpeg2'\\]"),
           ("build.pairs.on", lambda d: d["build"]["pairs"].update(on="score_clip_nope"), "'score_clip_nope'"),
           ("pair.groups", lambda d: d["pair"].update(groups=str(out / "groups")), "overlaps")]
    for key, change, what in bad:
        e = json.loads(json.dumps(d))
        change(e)
        with pytest.raises(ValueError, match=f"^{key}: .*{what}"):
            run_pair(validate(e))
    monkeypatch.undo()

    def fail(*a, **k):
        raise RuntimeError("crash mid-way")

    monkeypatch.setattr(build, "write_samples_and_pairs", fail)
    d["build"]["pairs"] = {"strategy": "best_vs_worst"}
    out.rename(out.with_name("pair.old"))  # a crash between swap_in's two renames
    with pytest.raises(RuntimeError, match="crash mid-way"):
        run_pair(validate(d))
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "re" / "pair.partial").exists() and not (tmp_path / "re" / "pair.old").exists()


def test_repair_checks_every_groups_files_columns_before_ray(tmp_path, monkeypatch):
    """Only the second of two files lacks the score column: the check names that file, before Ray; the
    files Ray Data leaves out (a path below the root that starts with '.' or '_') are not checked."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raypref import session
    from raypref.build import run_pair

    def no_ray(_):
        raise AssertionError("Ray started before the inputs were checked")

    monkeypatch.setattr(session, "init_ray", no_ray)
    g = tmp_path / "g"
    (g / "_tmp").mkdir(parents=True)
    full = pa.table({S.PROMPT_ID: ["p"], S.PROMPT: ["a cat"], S.score_column("jpeg"): [[0.1, 0.2]],
                     **{c: [["x", "y"]] for c in S.SAMPLE_LIST_FIELDS}})
    thin = full.drop_columns([S.score_column("jpeg")])
    pq.write_table(full, g / "a.parquet")
    pq.write_table(thin, g / "b.parquet")
    for skipped in (g / ".c.parquet", g / "_tmp" / "d.parquet"):
        pq.write_table(thin, skipped)
    cfg = validate({"output_dir": str(tmp_path / "run"), "pair": {"groups": str(g)},
                    "build": {"scorers": [{"name": "jpeg", "cls": "jpeg_compressibility"}]}})
    with pytest.raises(ValueError, match=r"^build.scorers: the stored groups file .*/g/b\.parquet has no column \['score_jpeg'\]"):
        run_pair(cfg)
    (g / "b.parquet").write_bytes(b"torn")
    with pytest.raises(ValueError, match=r"^pair.groups: .*/g/b\.parquet is not a readable Parquet file"):
        run_pair(cfg)
    pq.write_table(full, g / "b.parquet")
    with pytest.raises(AssertionError, match="Ray started"):  # the check passes: .c and _tmp/d are not read
        run_pair(cfg)
    (g / "sub").mkdir()
    pq.write_table(thin, g / "sub" / "_e.parquet")  # Ray Data reads a deeper '_' file: so does the check
    with pytest.raises(ValueError, match=r"groups file .*/g/sub/_e\.parquet has no column \['score_jpeg'\]"):
        run_pair(cfg)
