"""Pretrain the shapes world's text-to-image model in a Ray Train TorchTrainer.

Phase 1 trains the VAE to reconstruct rendered images. Phase 2 freezes it, sets its
scaling_factor to 1/std of the latents (as SD does), and trains the UNet and the CLIP text
encoder together on the denoising loss, with prompt dropout for classifier-free guidance and an
EMA of the weights. Data is rendered on the fly from the prompt split, seeded by (seed, rank,
step), so a resumed run sees the same batches it would have seen. The result is a standard
StableDiffusionPipeline directory (safetensors) that ``from_pretrained(path)`` loads.
"""

from __future__ import annotations

import time
from pathlib import Path

from raypref.config import Config, write_run_meta
from raypref.metrics import json_text
from raypref.session import init_ray
from raypref.train_checkpoint import (check_export_dir, first_last_means, fit_and_export, guard_resume, load_state,
                                      report_step)

PIPELINE_DIR = "pipeline"  # inside each checkpoint: the loadable pipeline (EMA weights)
RAW_FILE = "raw.safetensors"  # the trained (non-EMA) weights of the current phase, for resume
OPTIM_FILE = "optimizer.pt"
EMA_FILE = "ema.pt"


def _arch(c: dict) -> dict:
    keys = ("image_size", "hidden", "text_layers", "max_length", "beta_schedule", "beta_start", "beta_end")
    return {"seed": c["seed"], "unet_channels": tuple(c["unet_channels"]),
            "unet_attention": tuple(c["unet_attention"]), **{k: c[k] for k in keys}}


def _rng(c: dict, rank: int, step: int, phase: int):
    import numpy as np

    return np.random.default_rng([c["seed"], rank, step, phase])


def _pixels(images, device):
    from raypref import images as I

    return I.to_tensor(images).to(device)


def t2i_loop(c: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from safetensors.torch import load_file, save_file

    from raypref.shapes.data import prompts_by_template, sample_batch
    from raypref.shapes.objectives import TextToImageDenoising, VAEReconstruction
    from raypref.tiny import save_sd_pipeline, sd_parts

    device = ray.train.torch.get_device()
    rank = ray.train.get_context().get_world_rank()
    parts = sd_parts(**_arch(c))  # the same seeded init on every worker
    prompts = prompts_by_template(c["split"])
    state, history, ckpt_dir = load_state(ray.train.get_checkpoint())
    phase, step = state.get("phase", 1), state.get("step", 0)
    if ckpt_dir is not None:
        parts["vae"] = AutoencoderKL.from_pretrained(str(Path(ckpt_dir) / PIPELINE_DIR / "vae"))

    # Phase 1: the VAE. Its checkpoints hold the pipeline (so the VAE) and the optimizer.
    if phase == 1 and step < c["vae_steps"]:
        objective = VAEReconstruction(parts["vae"], c["vae_kl_weight"]).to(device)
        model = ray.train.torch.prepare_model(objective)
        opt = torch.optim.AdamW(objective.parameters(), lr=c["vae_lr"])
        lr = get_scheduler("cosine", opt, num_warmup_steps=c["warmup_steps"], num_training_steps=c["vae_steps"])
        if step > 0:
            opt.load_state_dict(torch.load(Path(ckpt_dir) / OPTIM_FILE, map_location="cpu", weights_only=True))
            for _ in range(step):
                lr.step()

        def write_phase1(d):
            save_sd_pipeline(parts, Path(d) / PIPELINE_DIR)
            torch.save(opt.state_dict(), Path(d) / OPTIM_FILE)

        while step < c["vae_steps"]:
            images, _ = sample_batch(prompts, c["batch_size"], _rng(c, rank, step, 1), c["image_size"])
            loss = model(_pixels(images, device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lr.step()
            step += 1
            metrics = {"phase": 1, "step": step, "vae_loss": float(loss.detach())}
            history.append(metrics)
            if step == c["vae_steps"]:  # phase 2 starts afresh: only the VAE carries over
                report_step(rank, metrics, history, {"phase": 2, "step": 0},
                            lambda d: save_sd_pipeline(parts, Path(d) / PIPELINE_DIR))
            else:
                report_step(rank, metrics, history, {"phase": 1, "step": step},
                            write_phase1 if step % c["checkpoint_every"] == 0 else None)
    if phase == 1:
        phase, step = 2, 0

    # Phase 2: UNet + text encoder on the frozen VAE's latents.
    vae = parts["vae"].to(device).requires_grad_(False).eval()
    with torch.no_grad():
        probe, _ = sample_batch(prompts, 256, _rng(c, 0, 0, 0), c["image_size"])
        std = float(vae.encode(_pixels(probe, device)).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=1.0 / std)
    sf = vae.config.scaling_factor
    tok = parts["tokenizer"]
    noise_sched = DDPMScheduler(beta_schedule=c["beta_schedule"], beta_start=c["beta_start"], beta_end=c["beta_end"])
    objective = TextToImageDenoising(parts["unet"], parts["text_encoder"]).to(device)
    if step > 0:
        objective.load_state_dict(load_file(str(Path(ckpt_dir) / RAW_FILE)))
    model = ray.train.torch.prepare_model(objective)
    opt = torch.optim.AdamW(objective.parameters(), lr=c["learning_rate"], weight_decay=0.01)
    lr = get_scheduler("cosine", opt, num_warmup_steps=c["warmup_steps"], num_training_steps=max(1, c["unet_steps"]))
    ema = EMAModel(objective.parameters(), decay=c["ema_decay"]) if c["ema_decay"] > 0 else None
    if step > 0:
        opt.load_state_dict(torch.load(Path(ckpt_dir) / OPTIM_FILE, map_location="cpu", weights_only=True))
        if ema is not None:
            ema.load_state_dict(torch.load(Path(ckpt_dir) / EMA_FILE, map_location=device, weights_only=True))  # EMAModel keeps the tensors as given
        for _ in range(step):
            lr.step()

    def write_phase2(d):
        params = list(objective.parameters())
        save_file({k: v.contiguous() for k, v in objective.state_dict().items()}, str(Path(d) / RAW_FILE))
        torch.save(opt.state_dict(), Path(d) / OPTIM_FILE)
        if ema is not None:
            torch.save(ema.state_dict(), Path(d) / EMA_FILE)
            ema.store(params)
            ema.copy_to(params)
        save_sd_pipeline({**parts, "vae": vae}, Path(d) / PIPELINE_DIR)
        if ema is not None:
            ema.restore(params)

    if step >= c["unet_steps"]:  # nothing left to train (a rerun of a finished run): re-export
        report_step(rank, {"phase": 2, "step": step}, history, {"phase": 2, "step": step}, write_phase2)
    while step < c["unet_steps"]:
        gen = _rng(c, rank, step, 2)
        images, texts = sample_batch(prompts, c["batch_size"], gen, c["image_size"])
        texts = ["" if gen.random() < c["cfg_dropout"] else t for t in texts]
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        tgen = torch.Generator().manual_seed(int(gen.integers(2**31 - 1)))
        with torch.no_grad():
            latents = vae.encode(_pixels(images, device)).latent_dist.sample(generator=None) * sf
        noise = torch.randn(latents.shape, generator=tgen).to(device)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (latents.shape[0],), generator=tgen).to(device)
        loss = model(noise_sched.add_noise(latents, noise, t), t, ids.to(device), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(objective.parameters(), 1.0)
        opt.step()
        lr.step()
        if ema is not None:
            ema.step(objective.parameters())
        step += 1
        metrics = {"phase": 2, "step": step, "loss": float(loss.detach()), "lr": lr.get_last_lr()[0]}
        history.append(metrics)
        last = step == c["unet_steps"]
        report_step(rank, metrics, history, {"phase": 2, "step": step},
                    write_phase2 if last or step % c["checkpoint_every"] == 0 else None)


def run_pretrain_t2i(cfg: Config) -> dict:
    """Train (or resume), then export the pipeline directory; returns the summary."""
    p = cfg.pretrain.t2i
    export = Path(p.export_dir) if p.export_dir else cfg.stage_dir("pretrain") / "sd"
    check_export_dir(export, cfg.stage_dir("pretrain"), "pretrain.t2i.export_dir")
    # once every input is checked: a refused run leaves output_dir (a resumed run's records too) as it was
    out = write_run_meta(cfg, cfg.stage_dir("pretrain") / "t2i", "pretrain_t2i", guard=lambda: guard_resume(
        cfg.stage_dir("pretrain") / "t2i", "t2i", "pretrain.t2i", p.model_dump(mode="json")))
    init_ray(cfg.ray)  # once its inputs are checked (a no-op where the caller's Ray runs)
    t0 = time.time()
    history = fit_and_export(t2i_loop, p, p.model_dump(), out, "t2i", PIPELINE_DIR, export, section="pretrain.t2i")
    vae_losses = [h["vae_loss"] for h in history if "vae_loss" in h]
    losses = [h["loss"] for h in history if "loss" in h]
    summary = {
        "what": "t2i",
        "workers": p.num_workers,
        "vae_steps": len(vae_losses),
        "unet_steps": len(losses),
        "vae_loss": [vae_losses[0], vae_losses[-1]] if vae_losses else None,
        "loss": first_last_means(losses),
        "export": str(export),
        "seconds": round(time.time() - t0, 1),
    }
    (out / "summary.json").write_text(json_text(summary))
    return summary
