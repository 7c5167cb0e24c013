"""Reward feedback learning: the loss on hand values, the reward model's differentiable pixels against
its PIL preprocessing, the gradient reaching the UNet through one drawn step, and a ReFL run in Ray
Train that exports a LoRA."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from raypref.losses import refl_loss
from raypref.reward_model import ASPECTS, RewardModel
from raypref.train_refl import grad_step_index


def test_refl_loss_hand_values():
    # ImageReward Sec. 4.2, phi(r) = ReLU(margin - r): rewards 1, 3, -1 with margin 2 -> 1, 0, 3; mean 4/3
    loss = refl_loss(torch.tensor([1.0, 3.0, -1.0]), margin=2.0, weight=0.5)
    assert loss.item() == pytest.approx(0.5 * 4 / 3)
    r = torch.tensor([1.0, 3.0], requires_grad=True)
    refl_loss(r, 2.0, 1.0).backward()
    assert r.grad.tolist() == [-0.5, 0.0]  # above the margin: no gradient


def test_grad_step_index_stays_in_the_last_steps():
    g = torch.Generator().manual_seed(0)
    seen = {grad_step_index(20, (1, 10), g) for _ in range(400)}
    assert seen == set(range(10, 20))  # index 19 is the last step
    assert {grad_step_index(20, (3, 3), g) for _ in range(20)} == {17}


@pytest.mark.parametrize("kind,ref", [("open_clip", "tiny:clip"), ("film", "tiny:clip"), ("blip", "tiny:blip_itm")])
def test_differentiable_pixels_match_the_pil_preprocessing(kind, ref):
    from raypref.models import resolve_model

    model = RewardModel.create(resolve_model(ref), aspects=[], hidden=8, kind=kind)
    rng = np.random.default_rng(0)
    # smooth images, so bicubic resizing in PIL and in torch agree to within rounding
    base = rng.uniform(0, 1, (2, 3, 4, 4)).astype(np.float32)
    x = torch.nn.functional.interpolate(torch.from_numpy(base), size=(48, 48), mode="bilinear", align_corners=False)
    pil = [Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for im in x]
    want, tokens = model.backbone.inputs(pil, ["a red circle", "two blue squares"])
    got = model.pixels_from_tensor(torch.stack([torch.from_numpy(np.asarray(p, np.float32) / 255).permute(2, 0, 1) for p in pil]))
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=0.05, rtol=0)
    assert torch.equal(model.backbone.text_inputs(["a red circle", "two blue squares"]), tokens)


def _smooth_images(h: int, w: int, n: int = 3):
    """Smooth RGB images as PIL and as the [0, 1] tensor of the same bytes (bicubic resizing in PIL and
    in torch agree on smooth images to within rounding)."""
    base = torch.from_numpy(np.random.default_rng(1).uniform(0, 1, (n, 3, 4, 4)).astype(np.float32))
    x = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    pil = [Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for im in x]
    return pil, torch.stack([torch.from_numpy(np.asarray(p, np.float32) / 255).permute(2, 0, 1) for p in pil])


@pytest.mark.parametrize("cls,model,args", [
    ("clip_score", "tiny:clip", {"floor_at_zero": False}), ("aesthetic", "tiny:aesthetic", {}),
    ("pickscore", "tiny:pickscore", {}), ("hpsv2", "tiny:hpsv2", {}), ("image_reward", "tiny:image_reward", {}),
    ("reward_model", None, {})])
@pytest.mark.parametrize("hw", [(40, 56)])  # not square: the crop (and HPSv2's pad) too
def test_differentiable_scores_match_the_scorers_own(cls, model, args, hw, tiny_rm):
    from raypref.models import resolve_model
    from raypref.registry import resolve

    scorer = resolve(cls)(name=cls, model=resolve_model(model) if model else str(tiny_rm), **args)
    prompts = ["a red circle", "two blue squares", "a green star"]
    pil, x = _smooth_images(*hw)
    want = scorer.score(pil, prompts)
    want = want if isinstance(want, dict) else {"": want}
    x.requires_grad_(True)
    got = scorer.differentiable_score(x, prompts)
    assert got.keys() == want.keys()  # aspect heads read the same pixels; the main score is compared
    # within 2% of the scores or of their spread: PIL's and torch's resampling round apart
    np.testing.assert_allclose(got[""].detach().numpy(), want[""], rtol=0.02, atol=0.02 * float(np.ptp(want[""])))
    got[""].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # the score reaches the pixels


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory, tiny_clip):
    d = tmp_path_factory.mktemp("rm") / "model"
    torch.manual_seed(0)
    RewardModel.create(tiny_clip, aspects=ASPECTS, hidden=8, kind="film", film={"width": 8, "blocks": 2}).save(d)
    return d


def _refl_cfg(tiny_sd, tiny_rm, **refl):
    from raypref.build import scorer_kwargs
    from raypref.config import ScorerConf

    s = ScorerConf(name="rm", cls="reward_model", model=str(tiny_rm))
    r = {"scorer": "rm", "scorer_cls": s.cls, "scorer_kwargs": scorer_kwargs(s), "head": "prompt_following",
         "sampler": "ddim", "num_inference_steps": 4, "guidance_scale": 2.0, "last_steps": [1, 2], "margin": 1e6, "weight": 1.0,
         "pretrain_weight": 0.0, **refl}
    return {"base_model": tiny_sd, "lora_rank": 2, "lora_alpha": 2.0, "lora_targets": ["to_q", "to_v"],
            "gradient_checkpointing": False, "method": "refl", "refl": r}


def test_one_refl_step_sends_the_reward_gradient_to_the_lora(tiny_sd, tiny_rm):
    from raypref.train_dpo import load_for_training
    from raypref.train_refl import ReflParts, refl_step

    c = _refl_cfg(tiny_sd, tiny_rm)
    texts, vae, _, unet, params, ref = load_for_training(c, "cpu")
    assert ref.frozen is None  # no reference model: ReFL has no KL-to-reference term
    parts = ReflParts(c, "cpu")
    rm_params = list(parts.scorer.model.parameters())
    assert not any(p.requires_grad for p in rm_params)
    prompts = ["a red circle", "two blue squares"]
    loss, m = refl_step(unet, unet, prompts, texts, vae, parts, torch.Generator().manual_seed(0), "cpu")
    # margin 1e6: every image is below it, so loss = 1e6 - mean reward
    assert loss.item() == pytest.approx(1e6 - m["reward"].item(), rel=1e-6)
    assert m["grad_step"].item() in (1.0, 2.0)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert all(p.grad is None for p in rm_params)
    bad = ReflParts(_refl_cfg(tiny_sd, tiny_rm, head="nope"), "cpu")
    with pytest.raises(ValueError, match=r"train.refl.head: 'nope' is not an output of train.refl.scorer 'rm' \(outputs: \['', 'prompt_following'"):
        refl_step(unet, unet, prompts, texts, vae, bad, torch.Generator().manual_seed(0), "cpu")


def test_gradient_checkpointing_recomputes_the_decode_with_the_same_gradients(tiny_sd, tiny_rm):
    from raypref.train_dpo import load_for_training
    from raypref.train_refl import ReflParts, refl_step

    grads, recomputed = [], []
    for ckpt in (False, True):
        c = {**_refl_cfg(tiny_sd, tiny_rm), "gradient_checkpointing": ckpt}
        torch.manual_seed(0)  # the same LoRA init
        texts, vae, _, unet, params, _ = load_for_training(c, "cpu")
        calls = []
        # a pre-hook: a recomputation may stop once it has what the backward needs, before a post-hook
        hook = vae.decoder.mid_block.register_forward_pre_hook(lambda *_: calls.append(1))
        loss, _ = refl_step(unet, unet, ["a red circle"], texts, vae, ReflParts(c, "cpu"),
                            torch.Generator().manual_seed(0), "cpu")
        loss.backward()
        hook.remove()
        recomputed.append(len(calls))
        grads.append([p.grad.clone() for p in params])
    assert recomputed == [1, 2]  # with checkpointing the decoder's blocks run again in the backward pass
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_refl_draws_as_imagereward_by_default_ddpm_without_guidance(tiny_sd, tiny_rm):
    from diffusers import DDPMScheduler

    from raypref.config import validate
    from raypref.train_dpo import load_for_training
    from raypref.train_refl import ReflParts, refl_step

    r = validate({}).train.refl  # ImageReward's ReFL scripts: DDPM, 40 steps, no guidance, the last 10 of them
    assert (r.sampler, r.num_inference_steps, r.guidance_scale, r.last_steps) == ("ddpm", 40, 1.0, (1, 10))
    c = _refl_cfg(tiny_sd, tiny_rm, sampler="ddpm", guidance_scale=1.0, num_inference_steps=4)
    texts, vae, _, unet, params, _ = load_for_training(c, "cpu")
    parts = ReflParts(c, "cpu")
    assert isinstance(parts.sampler, DDPMScheduler) and len(parts.sampler.timesteps) == 4
    rows = []
    hook = unet.register_forward_pre_hook(lambda mod, args: rows.append(args[0].shape[0]))
    prompts = ["a red circle", "two blue squares"]
    loss, m = refl_step(unet, unet, prompts, texts, vae, parts, torch.Generator().manual_seed(0), "cpu")
    hook.remove()
    assert rows and set(rows) == {2}  # one UNet call a step on the prompts alone: no unconditional half
    assert len(rows) == 4 - m["grad_step"].item() + 1
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    # DDPM adds noise at each step, drawn from the generator: another seed, another image and reward
    again = refl_step(unet, unet, prompts, texts, vae, parts, torch.Generator().manual_seed(0), "cpu")[1]["reward"]
    other = refl_step(unet, unet, prompts, texts, vae, parts, torch.Generator().manual_seed(1), "cpu")[1]["reward"]
    assert again == m["reward"] and other != m["reward"]


def test_a_refl_step_on_sdxl_conditions_on_pooled_text_and_sizes(tiny_sdxl, tiny_rm):
    from raypref.train_dpo import load_for_training
    from raypref.train_refl import ReflParts, refl_step

    c = _refl_cfg(tiny_sdxl, tiny_rm)
    texts, vae, _, unet, params, _ = load_for_training(c, "cpu")
    calls = []
    hook = unet.add_embedding.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape))
    loss, m = refl_step(unet, unet, ["a red circle", "two blue squares"], texts, vae, ReflParts(c, "cpu"),
                        torch.Generator().manual_seed(0), "cpu")
    hook.remove()
    # every UNet call took SDXL's added embedding (6 size ids x 8 + the pooled 32), guided (2 x 2 rows)
    assert calls and all(s == (4, 6 * 8 + 32) for s in calls)
    assert loss.item() == pytest.approx(1e6 - m["reward"].item(), rel=1e-6)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_refl_summary_warns_when_no_image_was_below_the_margin():
    from raypref.report import summary_line

    s = {"method": "refl", "finetune": "lora", "prompts": 4, "scorer": "clip", "head": "main", "workers": 1,
         "final_step": 2, "reward_first_last": [60.0, 61.0], "margin": 2.0, "seconds": 1.0, "weights": "w"}
    assert "WARNING no image scored below train.refl.margin" in summary_line("train", {**s, "below_margin": 0.0}, "x")
    assert "WARNING" not in summary_line("train", {**s, "below_margin": 0.5}, "x")
    # first_last_means averages the first and last 20 steps, or all of a shorter run's
    assert "reward (mean of 2 steps) 60.0000 -> 61.0000" in summary_line("train", {**s, "below_margin": 0.5}, "x")
    assert "reward (mean of 20 steps)" in summary_line("train", {**s, "below_margin": 0.5, "final_step": 300}, "x")
    p = {"what": "t2i", "workers": 1, "steps": 1, "loss": [0.5, 0.5], "seconds": 1.0}
    assert "1 steps, loss (mean of 1 step) 0.5000 -> 0.5000" in summary_line("pretrain", p, "x")


@pytest.mark.slow
def test_refl_with_pretraining_trains_in_ray_train_and_exports_a_lora(built_run, tmp_path, capsys):
    from raypref import stages
    from raypref.config import validate
    from raypref.lora import LORA_FILE
    from tests.test_train_eval import _lora_b_norm

    base, _ = built_run
    d = base.model_dump(mode="json")
    d["output_dir"] = str(tmp_path / "r")
    # the reward: the build's CLIP score (tiny:clip), through its differentiable path; with ImageReward's
    # L_pre, each step is a ReFL micro-batch and a denoising one on the build's images
    d["train"].update(max_steps=2, checkpoint_every=2, batch_size=2,
                      refl={"scorer": "clip", "num_inference_steps": 3, "last_steps": [1, 2], "margin": 100.0,
                            "pretrain_weight": 0.5, "pretrain_samples": str(base.stage_dir("build") / "samples")})
    s = stages.train_refl(validate(d))
    assert s["method"] == "refl" and s["final_step"] == 2 and s["prompts"] == 4 and s["head"] == "main"
    assert _lora_b_norm(tmp_path / "r" / "train" / "lora" / LORA_FILE) > 0  # B starts at zero: the adapter learned
    hist = [json.loads(x) for x in (tmp_path / "r" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [1, 2] and [h["micro_batches"] for h in hist] == [2, 2]
    assert all(np.isfinite([h["loss"], h["reward"], h["pretrain_loss"]]).all() for h in hist)
    assert s["below_margin"] == 1.0  # 100 x cosine never reaches 100: every image gave a gradient
    assert s["pretrain_weight"] == 0.5 and len(s["pretrain_loss_first_last"]) == 2
    out = capsys.readouterr().out
    assert "[train] refl (lora) on 4 prompts, reward: clip (main)" in out and "100% of images below the margin 100" in out
    assert "pretraining loss (x 0.5)" in out

    d["output_dir"] = str(tmp_path / "errors")  # input errors, each found before anything trains
    d["train"]["num_workers"] = 5
    with pytest.raises(ValueError, match=r"train.num_workers=5: 4 prompts in .* give each worker 0"):
        stages.train_refl(validate(d))
    d["train"]["num_workers"] = 1
    d["train"]["refl"]["pretrain_samples"] = str(tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="train.refl.pretrain_samples: no samples at"):
        stages.train_refl(validate(d))
    d["train"]["refl"]["last_steps"] = [2, 5]
    with pytest.raises(ValueError, match=r"train.refl.last_steps: need 1 <= lo <= hi <= num_inference_steps \(3\)"):
        stages.train_refl(validate(d))
    d["train"]["refl"]["scorer"] = "jpeg"
    with pytest.raises(ValueError, match=r"train.refl.scorer: 'jpeg' \(jpeg_compressibility\) has no differentiable score"):
        stages.train_refl(validate(d))
    d["train"]["refl"]["scorer"] = "nope"
    with pytest.raises(ValueError, match=r"train.refl.scorer: no build scorer named 'nope' \(known: \['clip', 'jpeg'\]\)"):
        stages.train_refl(validate(d))


def test_pretrain_samples_without_a_loop_column_are_refused_before_ray(tiny_sd, tiny_clip, tmp_path, ray_refused):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raypref import images as I
    from raypref import schema as S
    from raypref.config import validate
    from raypref.train_refl import run_train_refl
    from tests.conftest import tiny_config_dict

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    own = tmp_path / "own_set"  # a pretraining set of one's own: prompts and images, no sample ids
    own.mkdir()
    pq.write_table(pa.table({S.PROMPT: ["a red circle"], S.IMAGE: [I.encode(Image.new("RGB", (8, 8)))]}),
                   own / "part-0.parquet")
    d = tiny_config_dict(tmp_path / "run", prompts)
    d["train"]["refl"] = {"scorer": "clip", "num_inference_steps": 2, "last_steps": [1, 1],
                          "pretrain_weight": 0.5, "pretrain_samples": str(own)}
    with pytest.raises(ValueError, match=r"train.refl.pretrain_samples: .*own_set has no column\(s\) \['sample_id'\]"):
        run_train_refl(validate(d))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_refl_step_on_gpu_moves_the_scorer_to_the_workers_device(tiny_sd, tiny_rm):
    from raypref.train_dpo import load_for_training
    from raypref.train_refl import ReflParts, refl_step

    c = _refl_cfg(tiny_sd, tiny_rm)
    texts, vae, _, unet, params, _ = load_for_training(c, "cuda")
    parts = ReflParts(c, torch.device("cuda"))
    assert all(p.device.type == "cuda" for p in parts.scorer.model.parameters())
    loss, _ = refl_step(unet, unet, ["a red circle"], texts, vae, parts, torch.Generator().manual_seed(0), "cuda")
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
