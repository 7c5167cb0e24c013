"""Diffusion-DPO in Ray Train: a LoRA (1 worker) with resume, its load in diffusers and its eval; a full
fine-tune (2 workers, the at-scale settings) with its UNet export and its eval."""

import json

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


def _lora_b_norm(path):
    from safetensors.torch import load_file

    state = load_file(str(path))
    return sum(v.float().norm().item() for k, v in state.items() if "lora_B" in k or "lora.up" in k)


def test_dpo_trains_saves_resumes_and_evaluates(built_run, tmp_path, tiny_sd):
    cfg = _cfg(built_run, tmp_path / "r", max_steps=2, checkpoint_every=1)
    s1 = run_train_dpo(cfg)
    assert s1["final_step"] == 2
    lora = tmp_path / "r" / "train" / "lora" / LORA_FILE
    # the adapter's B starts at zero: a non-zero B means the parameters changed
    assert _lora_b_norm(lora) > 0
    hist1 = [json.loads(l) for l in (tmp_path / "r" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist1] == [1, 2]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist1)
    assert hist1[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # model == reference at step 1

    # a rerun with a longer budget resumes at step 2 instead of starting again
    s2 = run_train_dpo(_cfg(built_run, tmp_path / "r", max_steps=3, checkpoint_every=1))
    hist2 = [json.loads(l) for l in (tmp_path / "r" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert s2["final_step"] == 3
    assert [h["step"] for h in hist2] == [1, 2, 3]
    assert hist2[:2] == hist1  # steps 1-2 came from the checkpoint, not from a second run

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
    assert r["n"] == 4 and r["wins"] + r["ties"] + r["losses"] == 4
    assert 0.0 <= r["win_rate"] <= 1.0 and r["lora"] == str(tmp_path / "r" / "train" / "lora")
    table = (tmp_path / "r" / "eval" / "win_rate.md").read_text()
    assert "| clip | 4 |" in table
    assert json.loads((tmp_path / "r" / "eval" / "win_rate.json").read_text())["win_rate"] == r["win_rate"]


def test_full_dpo_two_workers_exports_a_unet_that_eval_swaps_in(built_run, tmp_path, tiny_sd):
    # every UNet weight trained against a frozen copy, with the at-scale settings together: 2 workers,
    # 2 micro-batches a step (DDP syncs on the second), bf16 autocast, gradient clipping and
    # gradient checkpointing
    from diffusers import UNet2DConditionModel

    from raypref.evaluate import run_eval

    cfg = _cfg(built_run, tmp_path / "two", finetune="full", max_steps=2, checkpoint_every=2, num_workers=2,
               batch_size=1, grad_accum_steps=2, precision="bf16", max_grad_norm=1.0, gradient_checkpointing=True)
    s = run_train_dpo(cfg)
    assert s["workers"] == 2 and s["final_step"] == 2 and s["finetune"] == "full"
    unet_dir = tmp_path / "two" / "train" / "unet"
    assert s["weights"] == str(unet_dir / "diffusion_pytorch_model.safetensors")
    assert not (tmp_path / "two" / "train" / "lora").exists()
    hist = [json.loads(l) for l in (tmp_path / "two" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [h["micro_batches"] for h in hist] == [2, 2]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    tuned = UNet2DConditionModel.from_pretrained(str(unet_dir)).state_dict()
    base = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet").state_dict()
    assert tuned.keys() == base.keys()
    assert sum(not torch.equal(tuned[k], base[k]) for k in base) > len(base) // 2  # not only some projections

    r = run_eval(cfg)  # train.finetune: full -> the tuned images come from the base pipeline with train/unet
    assert r["unet"] == str(unet_dir) and "lora" not in r and r["n"] == 4
    import pyarrow.parquet as pq

    scores = pq.read_table(tmp_path / "two" / "eval" / "scores.parquet").to_pydict()
    assert scores["base_score_clip"] != scores["tuned_score_clip"]  # the images changed: the UNet was swapped in


def test_eval_without_lora_is_a_clear_error(built_run, tmp_path):
    from raypref.evaluate import run_eval

    with pytest.raises(FileNotFoundError, match="eval.lora: no pytorch_lora_weights.safetensors"):
        run_eval(_cfg(built_run, tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="eval.unet: no diffusion_pytorch_model.safetensors"):
        run_eval(_cfg(built_run, tmp_path / "none", finetune="full"))
    cfg = _cfg(built_run, tmp_path / "none")
    with pytest.raises(ValueError, match="eval.lora and eval.unet are both set"):
        run_eval(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"lora": "x", "unet": "y"})}))
