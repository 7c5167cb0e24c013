"""PC-CLIP (Sam et al. 2024) in a Ray Train TorchTrainer: fine-tune an open_clip model so that the
difference of two images' embeddings matches the embedding of a text saying how they differ.

Each step takes a batch of images with their prompts (a samples table: the build's, or any with
prompt and image columns), pairs every image with another of a different prompt (a seeded
permutation), has ``pcclip.text_generator`` write each pair's difference text, and minimises
``losses.difference_alignment_loss`` (contrastive, squared or hinge) plus ``pcclip.clip_weight``
times CLIP's own image-prompt loss on the same images. Prompts are split by a hash of their id;
before training, at every checkpoint and at the end, rank 0 measures on the held-out prompts'
images (fixed pairs) how often a difference picks its own text among the others of its chunk,
and how often an image picks its own prompt, by the prompts' embeddings and by comparative
prompting's (raypref/comparative_prompting.py). Checkpoints go to <output_dir>/pcclip/ray (a
rerun resumes); the model is exported as an open_clip directory (open_clip_config.json +
open_clip_model.safetensors) that a clip_score scorer loads as 'local-dir:<dir>'.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from raypref import schema as S
from raypref.config import Config, write_run_meta
from raypref.metrics import json_text
from raypref.parquet_read import check_columns, read_parquet
from raypref.session import init_ray
from raypref.train_checkpoint import (TREND_STEPS, check_export_dir, check_rows_per_worker, cosine_adamw, first_last_means,
                                      fit_and_export, guard_resume, load_state, materialize_if_small, mean_of, report_step)

STAGE = "pcclip"
MODEL_DIR = "model"
OPTIM_FILE = "optimizer.pt"
WEIGHTS_FILE = "open_clip_model.safetensors"  # as raypref.tiny.save_open_clip writes it
EVAL_CHUNK = 64  # held-out pairs scored against each other's texts, as a training batch is


def pair_within(prompts: list[str], rng: np.random.Generator, generator) -> tuple[list[int], list[int], list[str]]:
    """Image i with image perm[i] (a seeded permutation): (a indices, b indices, texts), leaving
    out pairs the generator has no text for (the same prompt, i paired with itself, or a failed
    LLM request)."""
    kept = _with_texts([(i, int(j)) for i, j in enumerate(rng.permutation(len(prompts))) if i != j], prompts, generator)
    return [x[0] for x in kept], [x[1] for x in kept], [x[2] for x in kept]


def _with_texts(cand: list[tuple[int, int]], prompts: list[str], generator) -> list[tuple[int, int, str]]:
    """(i, j, text) for each candidate pair of prompt indices the generator writes a text for
    (all at once where it can: raypref.difference_text.texts_for)."""
    from raypref.difference_text import texts_for

    found = texts_for(generator, [(prompts[i], prompts[j]) for i, j in cand])
    return [(i, j, t) for (i, j), t in zip(cand, found) if t]


def load_clip(ref: str, pretrained: str | None):
    """(model, preprocess, tokenizer, open_clip_config) of an open_clip reference."""
    import open_clip

    from raypref.models import open_clip_model

    model, preprocess, cfg = open_clip_model(ref, pretrained)
    if cfg is None:
        raise ValueError(f"pcclip.model {ref!r}: open_clip has no config for it")
    return model, preprocess, open_clip.get_tokenizer(ref), {"model_cfg": cfg, "preprocess_cfg": dict(model.visual.preprocess_cfg)}


def objective(model, c: dict):
    """The training objective as one nn.Module around the open_clip model, so that Ray Train's DDP
    wrapper sees a single forward (its gradient all-reduce hooks on forward, not on encode_*):
    (pixels, difference-text tokens, a, b, prompt tokens, each image's prompt index, each pair's
    difference-text id) -> (loss, metrics). Difference loss on the pairs plus clip_weight x CLIP's loss on the images."""
    import torch.nn as nn
    import torch.nn.functional as F

    from raypref.losses import difference_alignment_loss

    class Objective(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixels, diff_tokens, a, b, prompt_tokens, target, text_ids):
            # each embedding normalised before the difference, as the held-out evaluation and the
            # PC-CLIP authors' code take it: the difference of two directions, not of two raw vectors
            img = F.normalize(self.model.encode_image(pixels), dim=-1)
            scale = self.model.logit_scale.exp().detach()
            diff_scale = scale if c.get("logit_scale") is None else c["logit_scale"]
            loss, m = difference_alignment_loss(img[a] - img[b], self.model.encode_text(diff_tokens), c["loss"],
                                                diff_scale, c["margin"], text_ids)
            metrics = {"loss_diff": loss.detach(), "retrieval_acc": m["retrieval_acc"]}
            if c["clip_weight"] > 0:
                txt = F.normalize(self.model.encode_text(prompt_tokens), dim=-1)
                clip_loss = F.cross_entropy(scale * img @ txt.T, target)
                loss = loss + c["clip_weight"] * clip_loss
                metrics["loss_clip"] = clip_loss.detach()
            return loss, metrics

    return Objective()


def batch_inputs(batch: dict, preprocess, tokenizer, rng, generator, device):
    """A batch of images and prompts -> the objective's inputs, or None with fewer than 2 pairs.
    Each distinct prompt is encoded once: the same prompt twice is not a negative of itself; and
    pairs whose difference texts are equal share an id, so neither is the other's negative."""
    import torch

    from raypref import images as I

    prompts = list(batch[S.PROMPT])
    a, b, texts = pair_within(prompts, rng, generator)
    if len(a) < 2:
        return None
    uniq = list(dict.fromkeys(prompts))
    rows = [f"samples row sample_id={s!r}" for s in batch[S.SAMPLE_ID]]
    pixels = torch.stack([preprocess(x) for x in I.decode_rows(batch[S.IMAGE], rows)]).to(device)
    target = torch.tensor([uniq.index(p) for p in prompts], device=device)
    ids = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    return (pixels, tokenizer(texts).to(device), torch.tensor(a, device=device), torch.tensor(b, device=device),
            tokenizer(uniq).to(device), target, torch.tensor([ids[t] for t in texts], device=device))


def learnable(batches, make, world: int, rank: int, skipped: int = 0):
    """(inputs, batches skipped since the last yield) for each batch that ``make`` turns into inputs,
    then (None, the batches skipped after the last of them) when there are any, for the caller to carry
    into its next epoch (``skipped``: those carried in). A batch ``make`` cannot use (fewer than 2 pairs
    of different prompts: None) is skipped and counted on one worker, and an error on several, where
    skipping on one rank alone would leave the others waiting in DDP's all-reduce."""
    for batch in batches:
        inputs = make(batch)
        if inputs is None:
            if world > 1:
                raise ValueError(f"pcclip: a batch on rank {rank} has fewer than 2 pairs of different prompts; "
                                 "raise pcclip.shuffle_buffer or pcclip.batch_size so batches mix prompts")
            skipped += 1
            continue
        yield inputs, skipped
        skipped = 0
    if skipped:
        yield None, skipped


def comparative_texts(prompts: list[str], text, k: int, generator) -> tuple[list[tuple[int, int]], list[str]]:
    """Comparative prompting's inputs for classes ``prompts`` with text embeddings ``text``: for
    each class c, its k nearest other classes i and the generator's text for how i differs from c."""
    from raypref.comparative_prompting import nearest_others

    kept = _with_texts([(i, c) for c, others in enumerate(nearest_others(text, k)) for i in others], prompts, generator)
    return [(i, c) for i, c, _ in kept], [t for _, _, t in kept]


def heldout_eval(model, preprocess, tokenizer, rows: dict, c: dict, generator, device) -> dict:
    """Fixed pairs of the held-out images, in chunks of EVAL_CHUNK: difference -> own text among
    the chunk's texts (a text equal to the right one counts), and image -> own prompt among the
    chunk's prompts, by the prompts' own embeddings and (comparatives_per_class > 0) by their
    comparative-prompting embeddings. The same pairs at every evaluation."""
    import torch
    import torch.nn.functional as F

    from raypref import images as I
    from raypref.comparative_prompting import comparative_class_embeddings

    def encode_text(texts: list[str]):
        return torch.cat([model.encode_text(tokenizer(texts[s:s + 4 * EVAL_CHUNK]).to(device)).float()
                          for s in range(0, len(texts), 4 * EVAL_CHUNK)])

    prompts = list(rows[S.PROMPT])
    a, b, texts = pair_within(prompts, np.random.default_rng([c["seed"], 7]), generator)
    diff_hits = img_hits = comp_hits = n_img = 0
    model.eval()
    with torch.no_grad():  # images in chunks too: a large model on 1024 images at once could run out of memory
        names = [f"samples row sample_id={x!r}" for x in rows[S.SAMPLE_ID]]
        img = F.normalize(torch.cat([
            model.encode_image(torch.stack([preprocess(x) for x in I.decode_rows(
                rows[S.IMAGE][s:s + EVAL_CHUNK], names[s:s + EVAL_CHUNK])]).to(device))
            for s in range(0, len(prompts), EVAL_CHUNK)]).float(), dim=-1)
        for s in range(0, len(a), EVAL_CHUNK):
            ia, ib, tx = a[s:s + EVAL_CHUNK], b[s:s + EVAL_CHUNK], texts[s:s + EVAL_CHUNK]
            u = F.normalize(model.encode_text(tokenizer(tx).to(device)).float(), dim=-1)
            best = (F.normalize(img[ia] - img[ib], dim=-1) @ u.T).argmax(dim=1).tolist()
            diff_hits += sum(tx[k] == tx[i] for i, k in enumerate(best))
        for s in range(0, len(prompts), EVAL_CHUNK):
            ps = prompts[s:s + EVAL_CHUNK]
            uniq = list(dict.fromkeys(ps))
            t = F.normalize(encode_text(uniq), dim=-1)
            best = (img[s:s + EVAL_CHUNK] @ t.T).argmax(dim=1).tolist()
            img_hits += sum(uniq[k] == p for k, p in zip(best, ps))
            n_img += len(ps)
            if c["comparatives_per_class"] > 0:
                pairs, comp = comparative_texts(uniq, t, c["comparatives_per_class"], generator)
                d = encode_text(comp) if comp else t[:0]
                tc = comparative_class_embeddings(t, d, pairs, c["comparative_alpha"])
                best = (img[s:s + EVAL_CHUNK] @ tc.T).argmax(dim=1).tolist()
                comp_hits += sum(uniq[k] == p for k, p in zip(best, ps))
    model.train()

    def rate(hits: int, n: int) -> float:  # none measured is no value (null in the summary), not 0% right
        return hits / n if n else float("nan")

    out = {"heldout_diff_retrieval": rate(diff_hits, len(a)), "heldout_prompt_retrieval": rate(img_hits, n_img),
           "heldout_pairs": len(a)}
    if c["comparatives_per_class"] > 0:
        out["heldout_prompt_retrieval_comparative"] = rate(comp_hits, n_img)
    return out


def trainable(model, towers: str) -> list:
    """Freeze what pcclip.train_towers leaves out (the temperature always: fine-tuning keeps the
    model's own) and return the parameters that train."""
    model.logit_scale.requires_grad_(False)
    if towers == "text":
        model.visual.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def pcclip_loop(c: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch
    from safetensors.torch import load_file

    from raypref.difference_text import LLMDifferences, close_quietly, resolve
    from raypref.tiny import save_open_clip

    device = ray.train.torch.get_device()
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    torch.manual_seed(c["seed"])
    model, preprocess, tokenizer, cfg = load_clip(c["model"], c["pretrained"])
    state, history, ckpt_dir = load_state(ray.train.get_checkpoint())
    step = state.get("step", 0)
    if ckpt_dir is not None:
        model.load_state_dict(load_file(str(Path(ckpt_dir) / MODEL_DIR / WEIGHTS_FILE)))
    model.to(device)
    params = trainable(model, c.get("train_towers", "both"))
    obj = ray.train.torch.prepare_model(objective(model, c))
    opt, sched = cosine_adamw(params, c["learning_rate"], c["warmup_steps"], c["max_steps"], ckpt_dir, step, OPTIM_FILE)
    generator = resolve(c["text_generator"], c["llm"], c["llm_instruction"])
    try:
        held = c["heldout_rows"]

        def evaluate() -> dict:
            return heldout_eval(model, preprocess, tokenizer, held, c, generator, device) if rank == 0 and held else {}

        def write(d):
            save_open_clip(model, cfg, Path(d) / MODEL_DIR)
            torch.save(opt.state_dict(), Path(d) / OPTIM_FILE)

        if step == 0 and rank == 0:
            history.append({"step": 0, **evaluate()})  # the model as it came: the baseline
        if step >= c["max_steps"]:  # a rerun of a finished run: re-export
            report_step(rank, {"step": step}, history, {"step": step}, write)
        shard = ray.train.get_dataset_shard("train")

        def make(batch):
            return batch_inputs(batch, preprocess, tokenizer, np.random.default_rng([c["seed"], rank, step]), generator, device)

        carried = 0  # batches skipped at an epoch's end: counted with the next epoch's first step
        while step < c["max_steps"]:
            seen = 0
            batches = shard.iter_batches(batch_size=c["batch_size"], batch_format="numpy", drop_last=True,
                                         local_shuffle_buffer_size=c["shuffle_buffer"] or None,
                                         local_shuffle_seed=c["seed"] * 1009 + rank * 31 + step)
            for inputs, skipped in learnable(batches, make, world, rank, carried):
                carried = 0
                if inputs is None:
                    carried = skipped
                    break
                loss, m = obj(*inputs)
                metrics = {k: float(v) for k, v in m.items()} | {"pairs": len(inputs[2]), "skipped_batches": skipped}
                if hasattr(generator, "events"):  # the LLM's requests so far on this worker: failures are skipped pairs
                    metrics |= {f"texts_{k}": v for k, v in generator.events.items()}
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                seen += 1
                last = step >= c["max_steps"]
                ckpt = last or step % c["checkpoint_every"] == 0
                metrics = {"step": step, "loss": float(loss.detach()), **metrics, **(evaluate() if ckpt else {})}
                history.append(metrics)
                report_step(rank, metrics, history, {"step": step}, write if ckpt else None)
                if last:
                    break
            if seen == 0:
                raise ValueError("pcclip: no batch of batch_size images with two prompts reached this worker; "
                                 "fewer images than pcclip.batch_size, or one prompt only?")
    finally:
        if isinstance(generator, LLMDifferences):  # made here (a module:object of one's own is the user's to close)
            close_quietly(generator)


def run_train_pcclip(cfg: Config) -> dict:
    import pyarrow as pa
    import pyarrow.dataset as pads
    from ray.data.dataset import MaterializedDataset

    from raypref.difference_text import resolve
    from raypref.models import resolve_model, resolve_pretrained
    from raypref.train_reward import heldout_mask, split_counts

    p = cfg.pcclip
    if p.text_generator == "llm":  # no client in the driver: only the workers ask
        from raypref.judge_http import read_api_key

        read_api_key(p.llm.api_key_env)  # a missing key fails here, not in every worker
    else:
        resolve(p.text_generator)  # a bad name fails here, before Ray Train starts
    if p.export_dir:  # before Ray starts and reads the samples, not after
        check_export_dir(Path(p.export_dir), cfg.stage_dir(STAGE).parent, "pcclip.export_dir")
    samples = Path(p.samples or cfg.stage_dir("build") / "samples").resolve()
    if not samples.exists():
        raise FileNotFoundError(f"pcclip.samples: no samples at {samples} (run the build first)")
    check_columns(pads.dataset(str(samples), format="parquet").schema.names,
                  (S.SAMPLE_ID, S.PROMPT_ID, S.PROMPT, S.IMAGE), "pcclip.samples", samples)

    def split(batch: pa.Table, heldout: bool) -> pa.Table:
        mask = heldout_mask(batch.column(S.PROMPT_ID).to_pylist(), p.heldout_fraction, p.seed)
        return batch.filter(pa.array(mask if heldout else ~mask)).select([S.SAMPLE_ID, S.PROMPT, S.IMAGE])

    model = resolve_model(p.model, what="pcclip.model")
    pretrained = resolve_pretrained(model, p.pretrained, what="pcclip.pretrained")
    # a rerun with other settings is refused here, before Ray; the settings are recorded once the counts pass too
    guard_resume(cfg.stage_dir(STAGE), STAGE, STAGE, p.model_dump(mode="json"), write=False)
    init_ray(cfg.ray)  # once its inputs are checked (a no-op where the caller's Ray runs); the split counts need it
    n_train, n_held = split_counts([str(samples)], p.heldout_fraction, p.seed)
    # a worker's batches are whole (pcclip_loop drops a short last one)
    check_rows_per_worker(n_train, f"training images in {samples}", p.num_workers, "pcclip.num_workers",
                          per_worker=p.batch_size, why=" (pcclip.batch_size)")
    # once every input is checked, the worker count too: a refused run leaves output_dir (a resumed run's
    # records too) as it was; before the samples are read
    out = write_run_meta(cfg, cfg.stage_dir(STAGE), STAGE,
                         guard=lambda: guard_resume(cfg.stage_dir(STAGE), STAGE, STAGE, p.model_dump(mode="json")))
    ds = read_parquet(str(samples), columns=[S.SAMPLE_ID, S.PROMPT_ID, S.PROMPT, S.IMAGE])
    train = materialize_if_small(ds.map_batches(split, fn_kwargs={"heldout": False}, batch_format="pyarrow"),
                                 [samples], p.cache_samples_max_mb, share=n_train / max(n_train + n_held, 1))
    cached = isinstance(train, MaterializedDataset)
    # only the rows rank 0 measures are read from the held-out split (the read stops at the limit)
    held = ds.map_batches(split, fn_kwargs={"heldout": True}, batch_format="pyarrow").limit(p.eval_images).take_all()
    loop_cfg = {**p.model_dump(), "model": model, "pretrained": pretrained,
                "heldout_rows": {c: [r[c] for r in held] for c in (S.SAMPLE_ID, S.PROMPT, S.IMAGE)}}
    export = Path(p.export_dir) if p.export_dir else out / MODEL_DIR
    t0 = time.time()
    history = fit_and_export(pcclip_loop, p, loop_cfg, out, STAGE, MODEL_DIR, export, datasets={"train": train},
                             section=STAGE)
    evals = [h for h in history if "heldout_diff_retrieval" in h]
    losses = [h["loss"] for h in history if "loss" in h]
    summary = {
        "images_train": n_train,
        "images_heldout": n_held,
        "images_measured": len(held),
        "samples_cached": cached,  # the training split held in Ray's object store (under pcclip.cache_samples_max_mb)
        "heldout_pairs": evals[0]["heldout_pairs"] if evals else 0,
        "loss_kind": p.loss,
        "workers": p.num_workers,
        "final_step": history[-1]["step"] if history else 0,
        "loss": first_last_means(losses),
        "loss_mean_of": min(TREND_STEPS, len(losses)),  # the steps each of the two loss means averages
        "heldout_diff_retrieval": [evals[0]["heldout_diff_retrieval"], evals[-1]["heldout_diff_retrieval"]] if evals else None,
        "heldout_prompt_retrieval": [evals[0]["heldout_prompt_retrieval"], evals[-1]["heldout_prompt_retrieval"]] if evals else None,
        "heldout_prompt_retrieval_comparative": [evals[0]["heldout_prompt_retrieval_comparative"],
                                                 evals[-1]["heldout_prompt_retrieval_comparative"]]
        if evals and "heldout_prompt_retrieval_comparative" in evals[0] else None,
        "skipped_batches": sum(h.get("skipped_batches", 0) for h in history),
        "export": str(export),
        "seconds": round(time.time() - t0, 1),
    }
    texts = {k[len("texts_"):]: v for k, v in (history[-1] if history else {}).items() if k.startswith("texts_")}
    if texts:  # rank 0's LLM requests (its training pairs and the held-out measures)
        summary["llm_texts"] = texts
    (out / "summary.json").write_text(json_text(summary))
    return summary


def summary_text(s: dict) -> str:
    def pair(v):
        return "n/a" if not v else f"{v[0]:.3f} -> {v[1]:.3f}"

    return (f"[pcclip] {s['loss_kind']} on {s['images_train']} images, {s['workers']} worker(s), step {s['final_step']}: "
            + (f"loss ({mean_of(s['loss_mean_of'])}) {pair(s['loss'])}" if s["loss"] else "loss n/a")
            + f"; held-out ({s['images_measured']} of {s['images_heldout']} images, {s['heldout_pairs']} pairs): difference -> "
            f"its text {pair(s['heldout_diff_retrieval'])}, image -> its prompt {pair(s['heldout_prompt_retrieval'])} "
            f"(comparative prompting {pair(s.get('heldout_prompt_retrieval_comparative'))}) "
            + (f"; LLM texts on rank 0: {t.get('requests', 0)} requests, {t.get('ok', 0)} answered, "
               f"{t.get('failed', 0) + t.get('malformed', 0)} pairs without a text, {t.get('cache_hits', 0)} from its cache "
               if (t := s.get("llm_texts")) else "")
            + (f"; {s['skipped_batches']} batch(es) with under 2 pairs of different prompts skipped "
               if s.get("skipped_batches") else "")
            + f"in {s['seconds']}s -> {s['export']}")
