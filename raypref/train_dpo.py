"""Diffusion-DPO on the UNet, a LoRA or every weight (train.finetune; raypref.finetune), data-parallel
in a Ray Train TorchTrainer (its loop also runs SFT on kept images, raypref.train_sft, and reward
feedback learning on prompts, raypref.train_refl).

With a LoRA the reference model is the same UNet with the adapter disabled, so one copy of the
weights is in memory; a full fine-tune keeps a frozen copy as the reference. Checkpoints (the
trained weights + optimizer + step) are reported with ray.train.report to <output_dir>/train/ray;
rerunning the same config resumes from the latest. The final weights are copied to
<output_dir>/train/lora (loadable with ``pipe.load_lora_weights``) or <output_dir>/train/unet (a
diffusers UNet directory: a generator's ``unet`` key).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from raypref import schema as S
from raypref.config import Config, write_run_meta
from raypref.finetune import export_file, export_name
from raypref.metrics import json_text
from raypref.parquet_read import read_parquet
from raypref.session import init_ray
from raypref.train_checkpoint import (check_rows_per_worker, fit_and_export, guard_resume, load_state,
                                      materialize_if_small, report_step, scheduled_optimizer)

OPTIM_FILE = "optimizer.pt"


def load_frozen_parts(base: str, device):
    """Text encoder(s) (raypref.conditioning.TextEncoders), VAE, noise scheduler and UNet of a diffusers
    SD 1.x / 2.x or SDXL pipeline directory."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from raypref.conditioning import TextEncoders

    texts = TextEncoders(base, device)
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae").to(device).requires_grad_(False)
    sched = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet").to(device)
    return texts, vae, sched, unet


def load_for_training(c: dict, device):
    """load_frozen_parts, then what trains (c["finetune"]: a LoRA, or the whole UNet with a frozen
    copy as DPO's reference) and gradient checkpointing if asked (the UNet's and the VAE's):
    (texts, vae, sched, unet, trainable params, finetune.Reference)."""
    from raypref.finetune import Reference, make_trainable

    texts, vae, sched, unet = load_frozen_parts(c["base_model"], device)
    params, frozen = make_trainable(unet, c, reference=c.get("method", "dpo") == "dpo")
    if c["gradient_checkpointing"]:
        unet.enable_gradient_checkpointing()
        # ReFL backpropagates through the decode at full image size; elsewhere the VAE runs without
        # gradient, where diffusers skips checkpointing
        vae.enable_gradient_checkpointing()
    return texts, vae, sched, unet, params, Reference(unet, frozen)


def image_size(unet, vae) -> int:
    """The pixel size the UNet's latents decode to (its sample size times the VAE's downsampling)."""
    return unet.config.sample_size * (2 ** (len(vae.config.block_out_channels) - 1))


def encode_images(images, rows, vae, size: int, device, flip=None):
    """Decode encoded images (``rows`` name them in an error), mirror those ``flip`` marks, and encode
    them with the frozen VAE: (scaled latents, each image's crop box for SDXL's size ids: images.crop_boxes,
    of the mirrored image where mirrored)."""
    import torch

    from raypref import images as I
    from raypref.mirroring import mirror_images

    decoded = mirror_images(I.decode_rows(images, rows), flip)
    pix = I.to_tensor(decoded, size=size).to(device)
    # in the VAE's own float32 even under bf16 autocast, as the diffusers SDXL scripts keep it
    with torch.no_grad(), torch.autocast(device_type=torch.device(device).type, enabled=False):
        return vae.encode(pix).latent_dist.sample() * vae.config.scaling_factor, I.crop_boxes(decoded, size)


def pair_batch_to_latents(batch: dict, texts, vae, size: int, device, flip=None):
    """Chosen then rejected images as latents, and their conditioning: (2B latents, a 2B-row
    conditioning.Cond; SDXL's size ids each image's own). ``flip`` (one per pair) mirrors both
    images of a pair; its prompt is the caller's to swap (raypref.mirroring)."""
    rows = [f"pairs row chosen_id={c!r}, {side}" for side in (S.CHOSEN_IMAGE, S.REJECTED_IMAGE) for c in batch[S.CHOSEN_ID]]
    both = None if flip is None else np.concatenate([flip, flip])
    latents, boxes = encode_images(list(batch[S.CHOSEN_IMAGE]) + list(batch[S.REJECTED_IMAGE]), rows, vae, size, device, both)
    return latents, texts(batch[S.PROMPT]).repeat(2).with_sizes(boxes, size)


def noised(sched, latents, noise, t):
    """(x_t, the model's regression target): the noise, the velocity or the clean latents, as the
    scheduler's prediction_type says."""
    kind = sched.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = sched.get_velocity(latents, noise, t)
    elif kind == "sample":
        target = latents
    else:
        raise ValueError(f"the pipeline's scheduler/scheduler_config.json: prediction_type {kind!r} is not one of "
                         "epsilon, v_prediction, sample")
    return sched.add_noise(latents, noise, t), target


def worker_generators(seed: int, rank: int, step: int):
    """A training worker's three random streams from where it starts (``step``): the noise and timesteps, the
    dropped prompts, and the mirrored rows. The noise and timesteps keep their original seed; the other two come from
    SeedSequence (seed, rank, step, purpose), so they repeat neither the noise nor each other. The dropped prompts'
    seed was once made the noise's way, which for seed 0 on rank 0 was ``step`` for both, so the rows blanked followed
    the first noise values drawn (runs with empty_prompt_fraction > 0 now blank other rows than before)."""
    import torch

    def stream(purpose: int):
        return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, rank, step, purpose]).generate_state(1)[0]))

    return torch.Generator().manual_seed(seed * 100003 + rank * 1009 + step), stream(1), stream(2)


def drop_prompts(prompts, fraction: float, gen) -> list[str]:
    """The prompts with each replaced by '' with probability ``fraction`` (one draw per row from
    ``gen``, a torch.Generator): the unconditional rows that keep classifier-free guidance working,
    as Wallace et al.'s proportion_empty_prompts."""
    import torch

    prompts = list(prompts)
    if fraction <= 0:
        return prompts
    keep = torch.rand(len(prompts), generator=gen) >= fraction
    return [p if k else "" for p, k in zip(prompts, keep.tolist())]


def dpo_step(unet_ddp, reference, latents, enc, sched, beta: float, gen):
    """One Diffusion-DPO forward: the same noise and timestep for winner and loser; ``reference``
    (raypref.finetune.Reference) predicts for the frozen reference model. ``enc``: a
    conditioning.Cond, or an SD model's hidden states."""
    import torch

    from raypref.conditioning import Cond
    from raypref.losses import diffusion_dpo_loss

    kw = Cond.of(enc).unet_kwargs()

    b = latents.shape[0] // 2
    noise = torch.randn(latents[:b].shape, generator=gen).to(latents.device).repeat(2, 1, 1, 1)
    t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=gen).to(latents.device).repeat(2)
    noisy, target = noised(sched, latents, noise, t)

    pred = unet_ddp(noisy, t, **kw).sample
    err = ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
    with torch.no_grad():
        ref = reference(noisy, t, **kw)
        ref_err = ((ref.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
    return diffusion_dpo_loss(err[:b], err[b:], ref_err[:b], ref_err[b:], beta)


def train_loop_per_worker(c: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch

    from raypref.finetune import load_trained, save_trained
    from raypref.mirroring import draw_flips, mirror_prompts
    from raypref.train_step import accumulate, micro_groups, skip_groups

    torch.manual_seed(c["seed"])
    device = ray.train.torch.get_device()
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    texts, vae, sched, unet, params, reference = load_for_training(c, device)
    size = image_size(unet, vae)

    state, history, ckpt_dir = load_state(ray.train.get_checkpoint())
    # in_epoch: the optimizer steps the checkpoint had taken in its epoch, which a resume skips
    step, epoch, done = state.get("step", 0), state.get("epoch", 0), state.get("in_epoch", 0)
    if ckpt_dir is not None:
        load_trained(unet, ckpt_dir, c["finetune"])
    opt, lr_sched = scheduled_optimizer(params, c["learning_rate"], c["lr_schedule"], c["warmup_steps"], c["max_steps"],
                                        ckpt_dir, step, OPTIM_FILE, c["optimizer"])

    def write(d):
        save_trained(unet, d, c["finetune"])
        torch.save(opt.state_dict(), Path(d) / OPTIM_FILE)

    unet_ddp = ray.train.torch.prepare_model(unet)
    gen, drop, mirror = worker_generators(c["seed"], rank, step)
    shard = ray.train.get_dataset_shard("train")
    if step >= c["max_steps"]:  # a rerun of a finished run: report its final state again
        report_step(rank, {"step": step}, history, {"step": step, "epoch": epoch, "in_epoch": done}, write)

    refl = None
    if c["method"] == "refl":  # prompts only: images are drawn and scored (raypref.train_refl)
        from raypref.train_refl import ReflParts

        refl = ReflParts(c, device)

    def forward(batch):
        if refl is not None and S.IMAGE not in batch:
            from raypref.train_refl import refl_step

            return refl_step(unet_ddp, unet, list(batch[S.PROMPT]), texts, vae, refl, gen, device)
        flip = draw_flips(len(batch[S.PROMPT]), c["hflip"], mirror)
        prompts = mirror_prompts(batch[S.PROMPT], flip, c["hflip_swap"])
        if S.IMAGE in batch:  # sft's kept images, or refl's pretraining images (raypref.train_sft, train_refl)
            from raypref.train_sft import sft_step

            latents, boxes = encode_images(batch[S.IMAGE], [f"samples row sample_id={s!r}" for s in batch[S.SAMPLE_ID]],
                                           vae, size, device, flip)
            prompts = prompts if refl is not None else drop_prompts(prompts, c["empty_prompt_fraction"], drop)
            loss, m = sft_step(unet_ddp, latents, texts(prompts).with_sizes(boxes, size), sched, gen)
            if refl is None:
                return loss, m
            return refl.pretrain_weight * loss, {"pretrain_loss": loss.detach()}
        batch = {**batch, S.PROMPT: drop_prompts(prompts, c["empty_prompt_fraction"], drop)}
        latents, enc = pair_batch_to_latents(batch, texts, vae, size, device, flip)
        return dpo_step(unet_ddp, reference, latents, enc, sched, c["beta"], gen)

    pretrain = None
    if refl is not None and refl.pretrain_weight > 0:  # ImageReward's L_pre: a denoising micro-batch per ReFL one
        from raypref.train_refl import endless_batches

        pretrain = endless_batches(ray.train.get_dataset_shard("pretrain"), c["batch_size"])
    while step < c["max_steps"]:
        # the groups a resumed epoch's checkpoint had trained on are read past, not trained again
        seen, skip, done = done, done, 0
        batches = shard.iter_batches(batch_size=c["batch_size"], batch_format="numpy", drop_last=False,
                                     local_shuffle_buffer_size=c["shuffle_buffer"] or None,
                                     local_shuffle_seed=c["seed"] * 1000003 + epoch * 1009 + rank)
        per_step = c["grad_accum_steps"]
        if pretrain is not None:
            from raypref.train_refl import alternate

            batches, per_step = alternate(batches, pretrain), 2 * per_step
        for group in skip_groups(micro_groups(batches, per_step), skip):
            seen += 1
            opt.zero_grad(set_to_none=True)
            loss, m, micro = accumulate(unet_ddp, group, forward, device, c["precision"])
            if c["max_grad_norm"]:
                torch.nn.utils.clip_grad_norm_(params, c["max_grad_norm"])
            opt.step()
            lr = lr_sched.get_last_lr()[0]  # the rate this step took
            lr_sched.step()
            step += 1
            metrics = {"step": step, "epoch": epoch, "loss": loss, "lr": lr, "micro_batches": micro, **m}
            history.append(metrics)
            last = step >= c["max_steps"]
            report_step(rank, metrics, history, {"step": step, "epoch": epoch, "in_epoch": seen},
                        write if last or step % c["checkpoint_every"] == 0 else None)
            if last:
                break
        epoch += 1
        if seen == 0:
            what = {"sft": "kept images", "refl": "prompts"}.get(c["method"], "pairs")
            raise ValueError(f"train: the {what} gave this worker no batch; is it empty?")


def base_model_ref(cfg: Config) -> str:
    """train.base_model, else the build's first generator, resolved to what diffusers loads."""
    from raypref.models import resolve_model

    t = cfg.train
    return resolve_model(t.base_model or (cfg.build.generators[0].model if cfg.build.generators else ""),
                         what="train.base_model")


PAIR_COLUMNS = [S.PROMPT, S.CHOSEN_ID, S.CHOSEN_IMAGE, S.REJECTED_IMAGE]  # what the loop reads of a pair


def check_pairs(pairs_dir: Path) -> tuple[int, int]:
    """(pairs, ties among them) of a pairs dir, checked with pyarrow alone (no Ray, no image read).

    Diffusion-DPO's loss (Eq. 14) needs a winner; a tie (imported, or kept by build.pairs.keep_ties)
    has none, so it is left out and counted. The labels alone are read to count them. Any other label
    (0, a soft one, NaN, null) is an error naming the first such row: trained as is, it would teach the
    rejected image, or a preference the pair does not state.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pds

    data = pds.dataset(str(pairs_dir), format="parquet")
    cols = PAIR_COLUMNS
    missing = [c for c in cols if c not in data.schema.names]
    if missing:
        raise ValueError(f"train.pairs: {pairs_dir} has no column(s) {missing}; is it a raypref pairs dir?")
    if S.LABEL in data.schema.names:
        labels = data.to_table(columns=[S.LABEL]).column(S.LABEL)
        n, ties = len(labels), int(pc.sum(pc.equal(labels, S.TIE)).as_py() or 0)
    else:  # as the raypref pairs reader takes them: strict preferences
        n, ties = data.count_rows(), 0
    if n == 0:
        raise ValueError(f"train.pairs: {pairs_dir} has no pairs")
    if S.LABEL in data.schema.names:
        usable = pc.is_in(labels, value_set=pa.array([S.STRICT, S.TIE], labels.type))  # null and NaN: false
        if not pc.all(usable).as_py():
            i = pc.index(usable, False).as_py()
            for frag in data.get_fragments():  # the table is the fragments in order: name the file and its row
                if i < (m := frag.count_rows()):
                    break
                i -= m
            row = frag.to_table(columns=[S.CHOSEN_ID, S.LABEL]).slice(i, 1).to_pylist()[0]
            raise ValueError(f"train.pairs: {frag.path} row {i} (chosen_id={row[S.CHOSEN_ID]!r}) has {S.LABEL} "
                             f"{row[S.LABEL]!r}, not {S.STRICT} (chosen preferred) or {S.TIE} (a tie); "
                             f"{n - int(pc.sum(usable).as_py())} of {n} pairs have such a label")
    if ties == n:
        raise ValueError(f"train.pairs: all {n} pairs in {pairs_dir} are ties ({S.LABEL} {S.TIE}); "
                         "Diffusion-DPO needs a preferred image")
    return n, ties


def strict_pairs(pairs_dir: Path, cache_max_mb: float):
    """(Ray dataset of the prompt, chosen id and both images of every strict pair, their number, ties
    left out), once check_pairs passes."""
    n, ties = check_pairs(pairs_dir)
    return _strict_dataset(pairs_dir, n, ties, cache_max_mb), n - ties, ties


def _strict_dataset(pairs_dir: Path, n: int, ties: int, cache_max_mb: float):
    ds = read_parquet(str(pairs_dir), columns=PAIR_COLUMNS + ([S.LABEL] if ties else []))
    if ties:
        ds = ds.filter(expr=f"{S.LABEL} != {S.TIE}")
    return materialize_if_small(ds.select_columns(PAIR_COLUMNS), [pairs_dir], cache_max_mb, share=1 - ties / n)


# the train keys each method does not read: a change to them does not make a new run of it
UNREAD = {
    "dpo": ("method", "samples", "sft_score", "sft_top_p", "sft_per_prompt", "refl"),
    "sft": ("method", "pairs", "beta", "refl"),
    "refl": ("method", "pairs", "samples", "sft_score", "sft_top_p", "sft_per_prompt", "beta", "empty_prompt_fraction"),
}


def guard_train_resume(cfg: Config, method: str, base: str) -> None:
    """guard_resume for a train method: the train section, with the base model as resolved."""
    t = cfg.train
    guard_resume(cfg.stage_dir("train"), method, "train",
                 {**t.dump(mode="json"), "base_model": base}, ignore=UNREAD[method])


def run_train_dpo(cfg: Config) -> dict:
    t = cfg.train
    base = base_model_ref(cfg)
    pairs_dir = Path(t.pairs or cfg.stage_dir("build") / "pairs").resolve()
    if not pairs_dir.exists():
        raise FileNotFoundError(f"train.pairs: no pairs at {pairs_dir} (run the build first)")
    n, ties = check_pairs(pairs_dir)
    check_rows_per_worker(n - ties, "strict pairs", t.num_workers, "train.num_workers")
    # once every input is checked: a refused run leaves output_dir (a resumed run's records too) as it was
    out = write_run_meta(cfg, cfg.stage_dir("train"), "train", guard=lambda: guard_train_resume(cfg, "dpo", base))
    init_ray(cfg.ray)  # once its inputs are checked (a no-op where the caller's Ray runs)
    ds, n_pairs = _strict_dataset(pairs_dir, n, ties, t.cache_pairs_max_mb), n - ties
    loop_cfg = {**t.dump(), "base_model": base, "method": "dpo"}
    t0 = time.time()
    name = export_name(t.finetune)
    history = fit_and_export(train_loop_per_worker, t, loop_cfg, out, "dpo", name, out / name, datasets={"train": ds},
                             section="train")
    summary = {
        "pairs": n_pairs,
        "ties_left_out": ties,
        "finetune": t.finetune,
        "workers": t.num_workers,
        "final_step": history[-1]["step"] if history else 0,
        "first_loss": history[0]["loss"] if history else None,
        "last_loss": history[-1]["loss"] if history else None,
        "last_implicit_acc": history[-1]["implicit_acc"] if history else None,
        "weights": str(out / name / export_file(t.finetune)),
        "seconds": round(time.time() - t0, 1),
    }
    (out / "summary.json").write_text(json_text(summary))
    return summary
