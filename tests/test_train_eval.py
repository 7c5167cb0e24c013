"""Diffusion-DPO in Ray Train: a LoRA (1 worker) with resume, its load in diffusers and its eval; a full
fine-tune (2 workers, the at-scale settings) with its UNet export and its eval."""

import json
import re
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from raypref.config import validate
from raypref.lora import LORA_FILE
from raypref.train_dpo import run_train_dpo

pytestmark = pytest.mark.slow


def _cfg(built_run, out, **train):
    cfg, _ = built_run
    d = cfg.model_dump(mode="json")
    d["output_dir"] = str(out)
    d["train"]["pairs"] = str(cfg.stage_dir("build") / "pairs")
    d["train"].update(train)
    return validate(d)


def _with_a_tie(built_run, where):
    """The built pairs plus one more row: the first pair again, labelled a tie, with new images."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pds
    import pyarrow.parquet as pq

    from raypref import schema as S

    cfg, _ = built_run
    t = pds.dataset(str(cfg.stage_dir("build") / "pairs"), format="parquet").to_table()
    where.mkdir(parents=True)
    pq.write_table(t, where / "strict.parquet")
    tie = t.slice(0, 1)
    for col in (S.CHOSEN_IMAGE, S.REJECTED_IMAGE):
        tie = tie.set_column(tie.schema.get_field_index(col), col, pc.binary_join_element_wise(tie[col], b"TIE", b""))
    tie = tie.set_column(tie.schema.get_field_index(S.LABEL), S.LABEL, pa.array([S.TIE], pa.float32()))
    pq.write_table(tie, where / "tie.parquet")
    return t


def test_dpo_reads_strict_pairs_and_counts_the_ties(built_run, tmp_path):
    from raypref import schema as S
    from raypref.train_dpo import strict_pairs

    t = _with_a_tie(built_run, tmp_path / "pairs")
    ds, n, ties = strict_pairs(tmp_path / "pairs", cache_max_mb=64)
    assert (n, ties) == (t.num_rows, 1)
    rows = ds.take_all()
    assert sorted(r[S.CHOSEN_IMAGE] for r in rows) == sorted(t.column(S.CHOSEN_IMAGE).to_pylist())
    assert set(rows[0]) == {S.PROMPT, S.CHOSEN_ID, S.CHOSEN_IMAGE, S.REJECTED_IMAGE}
    (tmp_path / "pairs" / "strict.parquet").unlink()
    with pytest.raises(ValueError, match=r"all 1 pairs .* are ties"):
        strict_pairs(tmp_path / "pairs", cache_max_mb=64)
    import pyarrow.parquet as pq

    for name, table in (("nolabel", t.drop_columns([S.LABEL])), ("noid", t.drop_columns([S.CHOSEN_ID]))):
        (tmp_path / name).mkdir()
        pq.write_table(table, tmp_path / name / "p.parquet")
    assert strict_pairs(tmp_path / "nolabel", 64)[1:] == (t.num_rows, 0)  # as the raypref reader reads them: strict
    # any other label is an error naming its row: 0 (the rejected image preferred), a soft label, NaN, null
    for k, bad in enumerate((0.0, 0.7, float("nan"), None)):
        labels = pa.array([S.STRICT] * (t.num_rows - 1) + [bad], pa.float32())
        (tmp_path / f"bad{k}").mkdir()
        pq.write_table(t.set_column(t.schema.get_field_index(S.LABEL), S.LABEL, labels), tmp_path / f"bad{k}" / "p.parquet")
        last = t.column(S.CHOSEN_ID)[-1].as_py()
        with pytest.raises(ValueError, match=rf"bad{k}/p.parquet row {t.num_rows - 1} \(chosen_id={re.escape(repr(last))}\) has "
                                             rf"label {bad if bad is None else '.*'}, not 1.0 .* 1 of {t.num_rows} pairs"):
            strict_pairs(tmp_path / f"bad{k}", 64)
    (tmp_path / "empty").mkdir()  # as the pairs writer leaves a build without pairs: one file of no rows
    pq.write_table(t.schema.empty_table(), tmp_path / "empty" / "part-00000.parquet")
    with pytest.raises(ValueError, match=r"train.pairs: .*empty has no pairs"):
        strict_pairs(tmp_path / "empty", 64)
    with pytest.raises(ValueError, match=r"train.pairs: .*noid has no column\(s\) \['chosen_id'\]"):
        strict_pairs(tmp_path / "noid", 64)


def test_a_bad_image_stops_dpo_with_an_error_naming_its_pair(built_run, tmp_path):
    # raised in a Ray Train worker, it reaches the caller (and the CLI) as the ValueError it was
    import pyarrow.parquet as pq

    from raypref import schema as S

    t = _with_a_tie(built_run, tmp_path / "pairs")
    (tmp_path / "pairs" / "tie.parquet").unlink()
    broken = t.set_column(t.schema.get_field_index(S.REJECTED_IMAGE), S.REJECTED_IMAGE,
                          pa.array([b"not a png"] * t.num_rows, pa.binary()))
    pq.write_table(broken, tmp_path / "pairs" / "strict.parquet")
    cid = t.column(S.CHOSEN_ID).to_pylist()
    with pytest.raises(ValueError, match=r"dpo, worker 0: pairs row chosen_id='(%s)', rejected_image: undecodable"
                       % "|".join(cid)):
        run_train_dpo(_cfg(built_run, tmp_path / "r", max_steps=1, pairs=str(tmp_path / "pairs")))


def _lora_b_norm(path):
    from safetensors.torch import load_file

    state = load_file(str(path))
    return sum(v.float().norm().item() for k, v in state.items() if "lora_B" in k or "lora.up" in k)


def test_dpo_trains_saves_resumes_and_evaluates(built_run, tmp_path, tiny_sd, capsys):
    n = _with_a_tie(built_run, tmp_path / "pairs").num_rows
    cfg = _cfg(built_run, tmp_path / "r", max_steps=2, checkpoint_every=1, pairs=str(tmp_path / "pairs"))
    s1 = run_train_dpo(cfg)
    assert s1["final_step"] == 2 and (s1["pairs"], s1["ties_left_out"]) == (n, 1)
    lora = tmp_path / "r" / "train" / "lora" / LORA_FILE
    # the adapter's B starts at zero: a non-zero B means the parameters changed
    assert _lora_b_norm(lora) > 0
    hist1 = [json.loads(l) for l in (tmp_path / "r" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist1] == [1, 2]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist1)
    assert hist1[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # model == reference at step 1

    # a rerun with a longer budget resumes at step 2 instead of starting again
    copies = set(Path(tempfile.gettempdir()).glob("raypref-resume-*"))
    capsys.readouterr()
    s2 = run_train_dpo(_cfg(built_run, tmp_path / "r", max_steps=3, checkpoint_every=1, pairs=str(tmp_path / "pairs")))
    assert "[train] warning" not in capsys.readouterr().out  # its own export, replaced without a word
    # and removes the worker's copy of the checkpoint it resumed from (Ray Train skips atexit)
    assert set(Path(tempfile.gettempdir()).glob("raypref-resume-*")) <= copies
    hist2 = [json.loads(l) for l in (tmp_path / "r" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert s2["final_step"] == 3
    assert [h["step"] for h in hist2] == [1, 2, 3]
    assert hist2[:2] == hist1  # steps 1-2 came from the checkpoint, not from a second run
    # the resumed run read past the batches its epoch had trained on: step 3 is where an uninterrupted
    # run would be (an epoch of n pairs is ceil(n / 2) steps of 2), not the epoch's first batch again
    per_epoch = -(-n // 2)
    assert [h["epoch"] for h in hist2] == [(k - 1) // per_epoch for k in (1, 2, 3)]
    # other settings do not resume (nor re-export) that run: a clear error before anything is written
    meta = (tmp_path / "r" / "train" / "config.yaml").read_text()
    with pytest.raises(ValueError, match=r"dpo: .*train/ray/dpo holds checkpoints trained with other settings "
                                         r"\(train\.learning_rate: '0\.001' -> '0\.0005'\).*another output_dir"):
        run_train_dpo(_cfg(built_run, tmp_path / "r", max_steps=4, learning_rate=5e-4, pairs=str(tmp_path / "pairs")))
    assert (tmp_path / "r" / "train" / "config.yaml").read_text() == meta

    # the LoRA loads where users expect it
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.load_lora_weights(str(lora.parent))
    pipe.fuse_lora()
    pipe.unload_lora_weights()  # keeps the fused weights, restores the plain module names
    after = pipe.unet.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    # exactly the adapted projections' weights changed: to_q/k/v/out.0 of every attention
    assert changed and all(any(t in k for t in ("to_q", "to_k", "to_v", "to_out.0")) for k in changed)

    from raypref.evaluate import run_eval

    r = run_eval(_cfg(built_run, tmp_path / "r", max_steps=3))
    assert r["n"] == 4 and r["lora"] == str(tmp_path / "r" / "train" / "lora")
    assert r["quarantined"] == {} and not list((tmp_path / "r" / "eval").glob("quarantine/*"))  # every image had its twin
    import pyarrow.parquet as pq

    from raypref import schema as S

    # the verdicts are those of the scores the eval wrote, image by image
    scores = pq.read_table(tmp_path / "r" / "eval" / "scores.parquet").to_pydict()
    base, tuned = scores[S.base_column("score_clip")], scores[S.tuned_column("score_clip")]
    assert len(base) == 4 and base != tuned
    tol = cfg.eval.tie_tolerance
    wins, ties = sum(t - b > tol for b, t in zip(base, tuned)), sum(abs(t - b) <= tol for b, t in zip(base, tuned))
    assert (r["wins"], r["ties"], r["losses"]) == (wins, ties, 4 - wins - ties)
    assert r["win_rate"] == pytest.approx((wins + ties / 2) / 4)
    table = (tmp_path / "r" / "eval" / "win_rate.md").read_text()
    assert "| clip | 4 |" in table
    assert json.loads((tmp_path / "r" / "eval" / "win_rate.json").read_text())["win_rate"] == r["win_rate"]

    # a rerun keeps both sides' stored scores; weights re-exported to the same path (here: changed in
    # place) are scored again, and the base side is kept
    def files(side):
        return {f.name: f.stat().st_mtime_ns for f in (tmp_path / "r" / "eval" / side / "scores").glob("*.parquet")}

    kept = {side: files(side) for side in ("base", "tuned")}
    assert kept["base"] and kept["tuned"]
    capsys.readouterr()
    # eval.shard_size below the pools' batch_size (2 and 4): a batch-unit warning, were anything generated
    small = validate({**_cfg(built_run, tmp_path / "r", max_steps=3).model_dump(mode="json"), "eval": {
        **_cfg(built_run, tmp_path / "r", max_steps=3).eval.model_dump(mode="json"), "shard_size": 1}})
    assert run_eval(small)["wins"] == r["wins"]
    assert {side: files(side) for side in ("base", "tuned")} == kept
    out = capsys.readouterr().out  # a finished side starts no pipeline: no model is loaded again
    assert "[eval] base: every prompt's scores are stored" in out and "[eval] tuned: every prompt's scores are stored" in out
    assert "warning" not in out  # nor warns of a batch unit
    # weights re-exported to the same path (here: changed in place) change the tuned side's settings, so
    # its stored scores would be made again; the base side's stay as they are
    from safetensors.torch import load_file, save_file

    from raypref.config import settings_changed
    from raypref.evaluate import SETTINGS_FILE, eval_sides, side_settings

    cfg3 = _cfg(built_run, tmp_path / "r", max_steps=3)
    sides = eval_sides(cfg3)
    assert sides["tuned"].lora == str(lora.parent.resolve()) and sides["base"].lora is None

    def unchanged(side):  # the check run_eval makes before it keeps a side's stored scores
        record = tmp_path / "r" / "eval" / side / SETTINGS_FILE
        assert record.is_file()
        return not settings_changed(record, side_settings(sides[side], cfg3.scorer(cfg3.eval.scorer), cfg3.eval.num_samples))

    assert unchanged("base") and unchanged("tuned")
    save_file({k: v * 3 for k, v in load_file(str(lora)).items()}, str(lora))
    assert unchanged("base") and not unchanged("tuned")

    # a scorer that gives NaN (a judge with no rating): every pair is left out of the win rate, and each
    # is counted and written aside per side; a repeated eval prompt is written aside too
    from raypref.report import summary_line

    twice = tmp_path / "twice.txt"
    twice.write_text(Path(cfg3.eval.prompts).read_text() + "a red circle\n")
    d = _cfg(built_run, tmp_path / "nan").model_dump(mode="json")
    d["build"]["scorers"][1].update(name="small", cls="tests.nan_scorer:NanForSmall", args={"min_width": 10**6})
    d["eval"].update(scorer="small", prompts=str(twice), lora=str(lora.parent), shard_size=1)
    capsys.readouterr()
    r = run_eval(validate(d))
    out = capsys.readouterr().out  # both sides generate: each pool's batch-unit warning, once
    assert out.count("[eval] warning: generator 'tiny' pool.batch_size 2 > eval.shard_size 1") == 1
    assert out.count("[eval] warning: scorer 'small' pool.batch_size 4 > eval.shard_size 1") == 1
    q = tmp_path / "nan" / "eval" / "quarantine"
    assert (r["n"], r["skipped_nan"], r["prompts"], r["duplicate_prompts_dropped"]) == (0, 4, 4, 1)
    assert r["quarantined"] == {"eval: NaN score": 8, "prompts: duplicate prompt": 1}
    assert all(n[S.REASON].startswith("NaN score: score_small on the both sides (prompt ")
               for side in ("base", "tuned") for n in pq.read_table(q / f"{side}.parquet").to_pylist())
    assert "| small | 0 | 4 |" in (tmp_path / "nan" / "eval" / "win_rate.md").read_text()
    assert "(n=0 pairs compared, 4 left out for a NaN score, 1 duplicate prompts dropped)" in summary_line("eval", r, "x")


def test_full_dpo_two_workers_exports_a_unet_that_the_eval_swaps_in(built_run, tmp_path, tiny_sd):
    # every UNet weight trained against a frozen copy, with the at-scale settings together: 2 workers,
    # 2 micro-batches a step (DDP syncs on the second), bf16 autocast, gradient clipping and
    # gradient checkpointing
    from diffusers import UNet2DConditionModel

    from raypref import schema as S
    from raypref.evaluate import eval_sides

    # also Adafactor under a warm-up schedule, as Wallace et al. train SDXL, dropped prompts and mirrored pairs
    cfg = _cfg(built_run, tmp_path / "two", finetune="full", max_steps=2, checkpoint_every=2, num_workers=2,
               batch_size=1, grad_accum_steps=2, precision="bf16", max_grad_norm=1.0, gradient_checkpointing=True,
               optimizer="adafactor", lr_schedule="constant_with_warmup", warmup_steps=1, empty_prompt_fraction=0.5,
               hflip=0.5)
    s = run_train_dpo(cfg)
    assert s["workers"] == 2 and s["final_step"] == 2 and s["finetune"] == "full"
    unet_dir = tmp_path / "two" / "train" / "unet"
    assert s["weights"] == str(unet_dir / "diffusion_pytorch_model.safetensors")
    assert not (tmp_path / "two" / "train" / "lora").exists()
    hist = [json.loads(l) for l in (tmp_path / "two" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [h["micro_batches"] for h in hist] == [2, 2]
    assert [h["lr"] for h in hist] == [0.0, cfg.train.learning_rate] == [0.0, 1e-3]  # one warm-up step, then the rate
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    tuned = UNet2DConditionModel.from_pretrained(str(unet_dir)).state_dict()
    base = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet").state_dict()
    assert tuned.keys() == base.keys()
    assert sum(not torch.equal(tuned[k], base[k]) for k in base) > len(base) // 2  # not only some projections

    # train.finetune: full -> the eval's tuned side is the base pipeline with train/unet swapped in (run_eval's
    # own run is the LoRA test's: the sides differ only in this part)
    sides = eval_sides(cfg)
    assert sides["tuned"].unet == str(unet_dir.resolve()) and sides["tuned"].lora is None and sides["base"].unet is None
    from raypref.build import generator_kwargs
    from raypref.registry import resolve

    prompts = pa.table({S.PROMPT_ID: ["p"], S.PROMPT: ["a red circle"]})
    images = {side: resolve(g.cls)(**generator_kwargs(g))(prompts).column(S.IMAGE).to_pylist() for side, g in sides.items()}
    assert len(images["base"][0]) == cfg.eval.num_samples and images["base"] != images["tuned"]  # the UNet was swapped in


def test_eval_without_lora_is_a_clear_error(built_run, tmp_path):
    from raypref.evaluate import run_eval

    with pytest.raises(FileNotFoundError, match="eval.lora: no pytorch_lora_weights.safetensors"):
        run_eval(_cfg(built_run, tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="eval.unet: no diffusion_pytorch_model.safetensors"):
        run_eval(_cfg(built_run, tmp_path / "none", finetune="full"))
    cfg = _cfg(built_run, tmp_path / "none")
    with pytest.raises(ValueError, match="eval.lora and eval.unet are both set"):
        run_eval(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"lora": "x", "unet": "y"})}))
    assert not (tmp_path / "none" / "eval").exists()  # checked before anything is written
    # a full fine-tune's run evaluated without train.finetune=full: the error says where its UNet is
    unet = tmp_path / "full" / "train" / "unet"
    unet.mkdir(parents=True)
    (unet / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=rf"eval.lora: no pytorch_lora_weights.safetensors .*; {unet} holds a "
                                                r"train.finetune=full export: set train.finetune=full to evaluate it"):
        run_eval(_cfg(built_run, tmp_path / "full"))
