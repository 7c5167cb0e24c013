"""Supervised fine-tuning (SFT) of the diffusion model on its own best images: the self-reward recipe.

The build's judges score every image; ``top_images`` keeps exactly the best ``train.sft_top_p`` of
them by ``train.sft_score`` over the whole samples table, and the UNet (a LoRA, or every weight:
``train.finetune``) learns to denoise those images given their prompts (``losses.diffusion_sft_loss``).
Training runs in the same Ray Train loop as Diffusion-DPO (raypref.train_dpo), with the same
checkpoints, resume and export to <output_dir>/train/lora or train/unet; the images kept are
listed in <output_dir>/train/sft_selected.parquet.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raypref import schema as S
from raypref.config import Config, write_run_meta
from raypref.metrics import json_text
from raypref.parquet_read import check_columns, read_parquet

SELECTED_FILE = "sft_selected.parquet"


def top_images(sample_ids, scores, top_p: float, prompt_ids=None, per_prompt: int | None = None) -> tuple[np.ndarray, dict]:
    """The best K = ceil(top_p * n_valid) images by score (n_valid: those with a finite score),
    ties at the cut broken by sample_id ascending, so exactly K are kept whatever the row order.
    With ``per_prompt`` k (and ``prompt_ids``), only each prompt's best k images (ties by sample_id)
    take part, and n_valid counts those: k = 1 keeps at most one image a prompt, its best of N.
    Returns the keep mask and counts {n, valid (finite scores), eligible (those taking part: each
    prompt's best k, or all valid), kept, cut (the K-th score, None if K = 0)}."""
    from raypref.select import top_k_count

    if not 0 < top_p <= 1:
        raise ValueError(f"train.sft_top_p must be in (0, 1], got {top_p}")
    ids = np.asarray(sample_ids, dtype=object)
    s = np.asarray(scores, dtype=np.float64)
    valid = np.flatnonzero(np.isfinite(s))
    eligible = valid
    if per_prompt is not None:
        eligible = valid[_best_per_prompt(np.asarray(prompt_ids, dtype=object)[valid], s[valid], ids[valid], per_prompt)]
    k = top_k_count(top_p, len(eligible))  # on p's decimal value: 0.07 x 100 is 7, where float math gives 8
    keep = np.zeros(len(s), dtype=bool)
    cut = None
    if k:
        best = _order(s[eligible], ids[eligible])[:k]
        keep[eligible[best]] = True
        cut = float(s[eligible[best[-1]]])
    return keep, {"n": len(s), "valid": len(valid), "eligible": len(eligible), "kept": k, "cut": cut}


def _order(s: np.ndarray, ids: np.ndarray, *first) -> np.ndarray:
    """Positions by score descending, then sample id ascending (after any ``first`` keys, ascending)."""
    cols = {f"k{i}": pa.array([str(x) for x in key], pa.string()) for i, key in enumerate(first)}
    t = pa.table({**cols, "s": s, "id": pa.array([str(i) for i in ids], pa.string())})
    keys = [(c, "ascending") for c in cols] + [("s", "descending"), ("id", "ascending")]
    return pc.sort_indices(t, sort_keys=keys).to_numpy()


def _best_per_prompt(prompts: np.ndarray, s: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Positions of each prompt's best k (score descending, then sample id)."""
    order = _order(s, ids, prompts)
    grouped = prompts[order]
    starts = np.r_[True, grouped[1:] != grouped[:-1]]
    first = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
    return np.sort(order[np.arange(len(order)) - first < k])


def sft_step(unet_ddp, latents, enc, sched, gen):
    """One denoising step on kept images: random noise and timestep per image. ``enc``: a
    conditioning.Cond, or an SD model's hidden states."""
    import torch

    from raypref.conditioning import Cond
    from raypref.losses import diffusion_sft_loss
    from raypref.train_dpo import noised

    noise = torch.randn(latents.shape, generator=gen).to(latents.device)
    t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), generator=gen).to(latents.device)
    noisy, target = noised(sched, latents, noise, t)
    return diffusion_sft_loss(unet_ddp(noisy, t, **Cond.of(enc).unet_kwargs()).sample, target)


def select(cfg: Config) -> tuple[Path, pa.Table, dict]:
    """Score column of the samples table (no images read) -> the kept images' ids, with their prompt and
    score (run_train_sft lists them in train/sft_selected.parquet)."""
    import pyarrow.dataset as pads

    t = cfg.train
    samples = Path(t.samples or cfg.stage_dir("build") / "samples").resolve()
    if not samples.exists():
        raise FileNotFoundError(f"train.samples: no samples at {samples} (run the build first)")
    data = pads.dataset(str(samples), format="parquet")
    # the selection reads the ids and prompts, the training loop the images
    check_columns(data.schema.names, (S.SAMPLE_ID, S.PROMPT_ID, S.PROMPT, S.IMAGE), "train.samples", samples)
    if t.sft_score not in data.schema.names:
        cols = [c for c in data.schema.names if c == S.SCORE or c.startswith(S.SCORE_PREFIX)]
        raise ValueError(f"train.sft_score: no column {t.sft_score!r} in {samples} (score columns: {cols})")
    table = data.to_table(columns=[S.SAMPLE_ID, S.PROMPT_ID, S.PROMPT, t.sft_score])
    keep, counts = top_images(table.column(S.SAMPLE_ID).to_pylist(),
                              table.column(t.sft_score).to_numpy(zero_copy_only=False), t.sft_top_p,
                              table.column(S.PROMPT_ID).to_pylist(), t.sft_per_prompt)
    if counts["kept"] == 0:
        raise ValueError(f"train.sft_score: no image in {samples} has a finite {t.sft_score!r}")
    kept = table.filter(pa.array(keep)).rename_columns([S.SAMPLE_ID, S.PROMPT_ID, S.PROMPT, S.SELECTED_SCORE])
    return samples, kept, counts


def kept_images(samples: Path, kept: pa.Table, cache_max_mb: float, share: float):
    """Ray dataset of the kept images (sample id, prompt, image), read from the samples table."""
    from raypref.train_checkpoint import materialize_if_small

    ids = kept.column(S.SAMPLE_ID).combine_chunks()

    def only_kept(batch: pa.Table) -> pa.Table:
        return batch.filter(pc.is_in(batch[S.SAMPLE_ID], value_set=ids))

    ds = read_parquet(str(samples), columns=[S.SAMPLE_ID, S.PROMPT, S.IMAGE])
    return materialize_if_small(ds.map_batches(only_kept, batch_format="pyarrow"), [samples], cache_max_mb, share=share)


def run_train_sft(cfg: Config) -> dict:
    from raypref.finetune import export_file, export_name
    from raypref.session import init_ray
    from raypref.train_checkpoint import check_rows_per_worker, fit_and_export
    from raypref.train_dpo import base_model_ref, guard_train_resume, train_loop_per_worker

    t = cfg.train
    base = base_model_ref(cfg)
    samples, kept, counts = select(cfg)
    check_rows_per_worker(counts["kept"], "kept images", t.num_workers, "train.num_workers")
    # once every input is checked: a refused run leaves output_dir (a resumed run's records too) as it was
    out = write_run_meta(cfg, cfg.stage_dir("train"), "train", guard=lambda: guard_train_resume(cfg, "sft", base))
    pq.write_table(kept, out / SELECTED_FILE)
    init_ray(cfg.ray)  # once its inputs are checked (a no-op where the caller's Ray runs)
    ds = kept_images(samples, kept, t.cache_pairs_max_mb, t.sft_top_p)
    loop_cfg = {**t.dump(), "method": "sft", "base_model": base}
    t0 = time.time()
    name = export_name(t.finetune)
    history = fit_and_export(train_loop_per_worker, t, loop_cfg, out, "sft", name, out / name, datasets={"train": ds},
                             section="train")
    summary = {
        "method": "sft",
        "finetune": t.finetune,
        "images": counts["kept"],
        "images_scored": counts["valid"],
        "images_unscored": counts["n"] - counts["valid"],
        "images_eligible": counts["eligible"],
        "score": t.sft_score,
        "top_p": t.sft_top_p,
        "per_prompt": t.sft_per_prompt,
        "score_cut": counts["cut"],
        "prompts": len(set(kept.column(S.PROMPT_ID).to_pylist())),
        "workers": t.num_workers,
        "final_step": history[-1]["step"] if history else 0,
        "first_loss": history[0]["loss"] if history else None,
        "last_loss": history[-1]["loss"] if history else None,
        "weights": str(out / name / export_file(t.finetune)),
        "selected": str(out / SELECTED_FILE),
        "seconds": round(time.time() - t0, 1),
    }
    (out / "summary.json").write_text(json_text(summary))
    return summary
