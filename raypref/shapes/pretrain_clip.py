"""Contrastively pretrain the shapes world's tiny CLIP (open_clip custom config) in Ray Train.

Batches are rendered on the fly with distinct prompts (every other text in a batch is a
negative). The result is an open_clip directory (open_clip_config.json + safetensors) that the
CLIP-score scorer loads as 'local-dir:<path>'.
"""

from __future__ import annotations

import time
from pathlib import Path

from raypref.config import Config, write_run_meta
from raypref.metrics import json_text
from raypref.session import init_ray
from raypref.train_checkpoint import (check_export_dir, cosine_adamw, first_last_means, fit_and_export, guard_resume,
                                      load_state, report_step)

MODEL_DIR = "clip"
OPTIM_FILE = "optimizer.pt"


def arch(c: dict) -> dict:
    from raypref.tiny import open_clip_cfg

    keys = ("image_size", "embed_dim", "vision_width", "patch_size", "text_width", "layers", "context_length")
    return open_clip_cfg(**{k: c[k] for k in keys})


def clip_loop(c: dict) -> None:
    import numpy as np
    import open_clip
    import ray.train
    import ray.train.torch
    import torch
    from safetensors.torch import load_file

    from raypref.shapes.data import prompts_by_template, sample_batch
    from raypref.shapes.objectives import ContrastiveCLIP
    from raypref.tiny import save_open_clip

    device = ray.train.torch.get_device()
    rank = ray.train.get_context().get_world_rank()
    cfg = arch(c)
    torch.manual_seed(c["seed"])
    clip = open_clip.CLIP(**cfg["model_cfg"])
    state, history, ckpt_dir = load_state(ray.train.get_checkpoint())
    step = state.get("step", 0)
    if ckpt_dir is not None:
        clip.load_state_dict(load_file(str(Path(ckpt_dir) / MODEL_DIR / "open_clip_model.safetensors")))
    preprocess = open_clip.image_transform(c["image_size"], is_train=False, mean=cfg["preprocess_cfg"]["mean"],
                                           std=cfg["preprocess_cfg"]["std"])
    objective = ContrastiveCLIP(clip).to(device)
    model = ray.train.torch.prepare_model(objective)
    opt, lr = cosine_adamw(objective.parameters(), c["learning_rate"], c["warmup_steps"], c["steps"], ckpt_dir, step,
                           OPTIM_FILE)
    prompts = prompts_by_template(c["split"])

    def write(d):
        save_open_clip(clip, cfg, Path(d) / MODEL_DIR)
        torch.save(opt.state_dict(), Path(d) / OPTIM_FILE)

    if step >= c["steps"]:  # a rerun of a finished run: re-export
        report_step(rank, {"step": step}, history, {"step": step}, write)
    while step < c["steps"]:
        rng = np.random.default_rng([c["seed"], rank, step])
        images, texts = sample_batch(prompts, c["batch_size"], rng, c["image_size"], distinct=True)
        pixels = torch.stack([preprocess(im) for im in images]).to(device)
        tokens = open_clip.tokenize(texts, context_length=c["context_length"]).to(device)
        loss = model(pixels, tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr.step()
        step += 1
        metrics = {"step": step, "loss": float(loss.detach())}
        history.append(metrics)
        last = step == c["steps"]
        report_step(rank, metrics, history, {"step": step}, write if last or step % c["checkpoint_every"] == 0 else None)


def run_pretrain_clip(cfg: Config) -> dict:
    p = cfg.pretrain.clip
    export = Path(p.export_dir) if p.export_dir else cfg.stage_dir("pretrain") / "clip"
    check_export_dir(export, cfg.stage_dir("pretrain"), "pretrain.clip.export_dir")
    # once every input is checked: a refused run leaves output_dir (a resumed run's records too) as it was
    out = write_run_meta(cfg, cfg.stage_dir("pretrain") / "clip_run", "pretrain_clip", guard=lambda: guard_resume(
        cfg.stage_dir("pretrain") / "clip_run", "clip", "pretrain.clip", p.model_dump(mode="json")))
    init_ray(cfg.ray)  # once its inputs are checked (a no-op where the caller's Ray runs)
    t0 = time.time()
    history = fit_and_export(clip_loop, p, p.model_dump(), out, "clip", MODEL_DIR, export, section="pretrain.clip")
    losses = [h["loss"] for h in history]
    summary = {
        "what": "clip",
        "workers": p.num_workers,
        "steps": len(losses),
        "loss": first_last_means(losses),
        "export": str(export),
        "seconds": round(time.time() - t0, 1),
    }
    (out / "summary.json").write_text(json_text(summary))
    return summary
