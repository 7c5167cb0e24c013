"""Reward feedback learning (ReFL; Xu et al. 2023, ImageReward, Sec. 4): the diffusion model learns
straight from a differentiable scorer's gradient on images it draws.

For each prompt the UNet draws from fresh noise (``train.refl.sampler``: DDPM, as ImageReward's ReFL
scripts, or DDIM; ImageReward's defaults: 40 steps, no guidance). All steps but one run without gradient;
the step that gets it is drawn among the last ``train.refl.last_steps``. Its x0 prediction is
decoded by the frozen VAE and scored by the scorer's ``differentiable_score`` (its preprocessing done
on tensors: raypref.pixels); ``losses.refl_loss`` of the reward trains the UNet (a LoRA, or every
weight: ``train.finetune``). The scorer (``train.refl.scorer``, a build scorer: ImageReward,
PickScore, HPSv2, CLIP score, the aesthetic predictor, or a `raypref train reward` export) stays
frozen. With ``train.refl.pretrain_weight`` > 0, each ReFL micro-batch is followed by one of the
plain denoising loss on pretraining images (ImageReward's L_pre), which holds the model near that
data. Training runs in the Ray Train loop DPO and SFT share
(raypref.train_dpo): the same checkpoints, resume and export to <output_dir>/train/lora or
train/unet, so `raypref eval` measures the tuned model.
"""

from __future__ import annotations

import time
from pathlib import Path

from raypref import schema as S
from raypref.config import Config, write_run_meta
from raypref.metrics import json_text
from raypref.parquet_read import check_columns, read_parquet


def grad_step_index(num_steps: int, last_steps, gen) -> int:
    """Index (0-based, of ``num_steps``) of the denoising step that gets the gradient: one of the last
    lo..hi steps, uniformly (1 = the last step)."""
    import torch

    lo, hi = last_steps
    return num_steps - int(torch.randint(lo, hi + 1, (1,), generator=gen))


class ReflParts:
    """What a ReFL step needs besides the UNet: the frozen scorer and the sampler's schedule."""

    def __init__(self, c: dict, device):
        import torch
        from diffusers import DDIMScheduler, DDPMScheduler

        from raypref.registry import resolve

        r = c["refl"]
        self.scorer = resolve(r["scorer_cls"])(**r["scorer_kwargs"])  # loaded on the CPU, then moved:
        for part in vars(self.scorer).values():  # the worker's device may be any of its node's GPUs
            if isinstance(part, torch.nn.Module):
                part.requires_grad_(False).to(device)  # the scorer's weights stay as they are
        if hasattr(self.scorer, "device"):
            self.scorer.device = device
        self.what = f"train.refl.scorer {r['scorer']!r}"
        self.head, self.margin, self.weight = r["head"], r["margin"], r["weight"]
        self.pretrain_weight = r["pretrain_weight"]
        self.guidance, self.last = r["guidance_scale"], tuple(r["last_steps"])
        cls = DDPMScheduler if r["sampler"] == "ddpm" else DDIMScheduler
        self.sampler = cls.from_pretrained(c["base_model"], subfolder="scheduler")
        self.sampler.set_timesteps(r["num_inference_steps"])

    def reward(self, images, prompts):
        """The chosen output of the scorer's differentiable_score: one reward per image."""
        out = self.scorer.differentiable_score(images, list(prompts))
        if self.head not in out:
            raise ValueError(f"train.refl.head: {self.head!r} is not an output of {self.what} (outputs: {list(out)})")
        return out[self.head].float()


def endless_batches(shard, batch_size: int):
    """A Ray Train dataset shard's batches, epoch after epoch, without end (the pretraining images)."""
    while True:
        n = 0
        for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=False):
            n += 1
            yield batch
        if n == 0:
            raise ValueError("train.refl.pretrain_samples gave this worker no batch; is it empty?")


def alternate(batches, pretrain):
    """Each ReFL batch (prompts), then one pretraining batch (images): their micro-batches alternate."""
    for batch in batches:
        yield batch
        yield next(pretrain)


def _eps(unet, x, t, cond, uncond, guidance: float):
    """Classifier-free-guided noise prediction (one UNet call on the doubled batch)."""
    import torch

    from raypref.conditioning import Cond

    if guidance <= 1.0:
        return unet(x, t, **cond.unet_kwargs()).sample
    un, co = unet(torch.cat([x, x]), t, **Cond.cat([uncond, cond]).unet_kwargs()).sample.chunk(2)
    return un + guidance * (co - un)


def refl_step(unet_ddp, unet, prompts, texts, vae, parts: ReflParts, gen, device):
    """One ReFL forward on a batch of prompts: (loss, metrics). ``unet`` runs the steps without
    gradient; ``unet_ddp`` (the same module, DDP-wrapped) runs the one with it."""
    import torch

    from raypref.losses import refl_loss
    from raypref.train_dpo import image_size

    size = image_size(unet, vae)  # drawn at the UNet's own size, uncropped
    cond = texts(prompts).with_default_sizes(size)
    uncond = texts.unconditional(len(prompts)).with_default_sizes(size)
    shape = (len(prompts), unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    s = parts.sampler
    x = torch.randn(shape, generator=gen).to(device) * s.init_noise_sigma
    stop = grad_step_index(len(s.timesteps), parts.last, gen)
    with torch.no_grad():
        for t in s.timesteps[:stop]:  # DDPM's added noise comes from gen too (DDIM, eta 0, adds none)
            x = s.step(_eps(unet, x, t, cond, uncond, parts.guidance), t, x, generator=gen).prev_sample
    t = s.timesteps[stop]
    x0 = s.step(_eps(unet_ddp, x, t, cond, uncond, parts.guidance), t, x, generator=gen).pred_original_sample
    images = (vae.decode(x0 / vae.config.scaling_factor).sample.float() / 2 + 0.5).clamp(0, 1)
    reward = parts.reward(images, prompts)
    loss = refl_loss(reward, parts.margin, parts.weight)
    below = (reward.detach() < parts.margin).float().mean()  # the images that give a gradient
    return loss, {"reward": reward.detach().mean(), "below_margin": below,
                  "grad_step": torch.tensor(float(len(s.timesteps) - stop))}


def resolved(cfg: Config) -> dict:
    """train.refl with its defaults filled from build.generators[0] and its scorer's class and
    constructor arguments (model references resolved here, on the driver), checked: a dict for the loop."""
    from raypref.build import scorer_kwargs
    from raypref.registry import resolve

    r = cfg.train.refl
    if not r.scorer:
        raise ValueError("train.refl.scorer: no scorer given (the name of a build scorer with a differentiable score)")
    s = cfg.scorer(r.scorer, what="train.refl.scorer")
    if not hasattr(resolve(s.cls), "differentiable_score"):
        raise ValueError(f"train.refl.scorer: {r.scorer!r} ({s.cls}) has no differentiable score; use clip_score, "
                         "aesthetic, pickscore, hpsv2, image_reward or reward_model")
    g = cfg.build.generators[0] if cfg.build.generators else None
    steps = r.num_inference_steps or (g.num_inference_steps if g else None)
    guidance = r.guidance_scale if r.guidance_scale is not None else (g.guidance_scale if g else None)
    if steps is None or guidance is None:
        raise ValueError("train.refl: set num_inference_steps and guidance_scale (no build.generators to take them from)")
    lo, hi = r.last_steps
    if not 1 <= lo <= hi <= steps:
        raise ValueError(f"train.refl.last_steps: need 1 <= lo <= hi <= num_inference_steps ({steps}), got [{lo}, {hi}]")
    kwargs = {**scorer_kwargs(s), "num_gpus": 0.0}  # loads on the CPU; ReflParts moves it to the worker's device
    return {**r.model_dump(), "scorer_cls": s.cls, "scorer_kwargs": kwargs, "num_inference_steps": steps,
            "guidance_scale": guidance, "last_steps": [lo, hi]}


def run_train_refl(cfg: Config) -> dict:
    import pyarrow.dataset as pads
    import ray.data

    from raypref.finetune import export_file, export_name
    from raypref.paths import resolve_path
    from raypref.prompts import read_prompts
    from raypref.session import init_ray
    from raypref.train_checkpoint import check_rows_per_worker, fit_and_export, first_last_means, materialize_if_small
    from raypref.train_dpo import base_model_ref, guard_train_resume, train_loop_per_worker

    t = cfg.train
    refl = resolved(cfg)
    base = base_model_ref(cfg)
    source = t.refl.prompts or cfg.build.prompts
    if not source:
        raise ValueError("train.refl.prompts: no prompts given (nor build.prompts)")
    key = "train.refl.prompts" if t.refl.prompts else "build.prompts"
    prompts = read_prompts(resolve_path(source), limit=t.refl.limit, key=key).select([S.PROMPT_ID, S.PROMPT])
    if prompts.num_rows == 0:
        raise ValueError(f"train.refl.prompts: {source} has no prompts")
    check_rows_per_worker(prompts.num_rows, f"prompts in {source}", t.num_workers, "train.num_workers")
    if refl["pretrain_weight"] > 0:
        pre = Path(t.refl.pretrain_samples or cfg.stage_dir("build") / "samples").resolve()
        if not pre.exists():
            raise FileNotFoundError(f"train.refl.pretrain_samples: no samples at {pre} (run a build, or set it)")
        data = pads.dataset(str(pre), format="parquet")
        check_columns(data.schema.names, (S.SAMPLE_ID, S.PROMPT, S.IMAGE), "train.refl.pretrain_samples", pre)
        check_rows_per_worker(data.count_rows(), f"samples in {pre}", t.num_workers, "train.num_workers")
    # once every input is checked: a refused run leaves output_dir (a resumed run's records too) as it was
    out = write_run_meta(cfg, cfg.stage_dir("train"), "train", guard=lambda: guard_train_resume(cfg, "refl", base))
    init_ray(cfg.ray)  # once its inputs are checked (a no-op where the caller's Ray runs)
    datasets = {"train": ray.data.from_arrow(prompts)}
    if refl["pretrain_weight"] > 0:
        datasets["pretrain"] = materialize_if_small(
            read_parquet(str(pre), columns=[S.SAMPLE_ID, S.PROMPT, S.IMAGE]), [pre], t.cache_pairs_max_mb)
    loop_cfg = {**t.dump(), "method": "refl", "base_model": base, "refl": refl}
    t0 = time.time()
    name = export_name(t.finetune)
    history = fit_and_export(train_loop_per_worker, t, loop_cfg, out, "refl", name, out / name, datasets=datasets,
                             section="train")
    rewards = first_last_means([h["reward"] for h in history])
    summary = {
        "method": "refl",
        "finetune": t.finetune,
        "prompts": prompts.num_rows,
        "scorer": refl["scorer"],
        "head": refl["head"] or "main",
        "workers": t.num_workers,
        "final_step": history[-1]["step"] if history else 0,
        "first_loss": history[0]["loss"] if history else None,
        "last_loss": history[-1]["loss"] if history else None,
        "reward_first_last": rewards,
        "margin": refl["margin"],
        "below_margin": sum(h["below_margin"] for h in history) / len(history) if history else None,
        "pretrain_weight": refl["pretrain_weight"],
        "pretrain_loss_first_last": first_last_means([h["pretrain_loss"] for h in history if "pretrain_loss" in h]),
        "weights": str(out / name / export_file(t.finetune)),
        "seconds": round(time.time() - t0, 1),
    }
    (out / "summary.json").write_text(json_text(summary))
    return summary
