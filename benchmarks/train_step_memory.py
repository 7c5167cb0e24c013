"""A training step's cost: bf16 autocast, gradient checkpointing, accumulation and (DPO) full fine-tuning
against fp32 with a LoRA.

Each setting runs in a fresh child process on the same model, pairs per step and inputs:
``precision``, ``gradient_checkpointing``, and ``grad_accum_steps`` (the same pairs per step in
smaller micro-batches), and for DPO ``finetune: full`` (every UNet weight trained, a frozen copy as the
reference). A step is the training loop's own: raypref.train_step.accumulate over
raypref.train_dpo.dpo_step (``--loop dpo``, a LoRA on the UNet) or over
raypref.train_reward.forward_pairs and the Bradley-Terry loss (``--loop reward``, the whole reward
model), then the setting's optimizer (AdamW unless it says Adafactor). Prints seconds per step; the activation memory, as the bytes autograd keeps
for the backward pass of one micro-batch (counted with torch.autograd.graph.saved_tensors_hooks,
on any device: each saved storage once, the models' weights not at all; checkpointing also keeps
each recomputed block's inputs, outside those hooks); the
training state, as the bytes of the trained weights' gradients, the optimizer's state (AdamW's moments, or
Adafactor's factored second moments) and the DPO
reference's frozen copy (counted from those tensors after a step); on CUDA also the peak allocated
memory of a step; each as a ratio to the first setting run by this invocation (fp32 unless ``--settings`` says otherwise).

    .venv/bin/python benchmarks/train_step_memory.py                      # DPO, shapes:sd, this machine
    .venv/bin/python benchmarks/train_step_memory.py --loop reward        # open_clip ViT-B-32 (random init)
    .venv/bin/python benchmarks/train_step_memory.py --model /models/sd15 --pairs 8 --device cuda
    .venv/bin/python benchmarks/full_size_pipelines.py sdxl /tmp/sdxl --device cuda   # SDXL's size, random weights
    .venv/bin/python benchmarks/train_step_memory.py --model /tmp/sdxl --pairs 2 --settings "bf16;bf16 + checkpointing"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = "a red circle left of a blue square"
SETTINGS = [  # (label, precision, gradient checkpointing, micro-batches per step, finetune, train.optimizer)
    ("fp32", "fp32", False, 1, "lora", "adamw"),
    ("bf16", "bf16", False, 1, "lora", "adamw"),
    ("fp32 + checkpointing", "fp32", True, 1, "lora", "adamw"),
    ("bf16 + checkpointing", "bf16", True, 1, "lora", "adamw"),
    ("fp32, 2 micro-batches", "fp32", False, 2, "lora", "adamw"),
    # dpo only: the reward loop trains the whole model anyway
    ("fp32, full fine-tune", "fp32", False, 1, "full", "adamw"),
    ("bf16, full fine-tune", "bf16", False, 1, "full", "adamw"),  # the reference copy in bf16
    ("bf16, full fine-tune, Adafactor", "bf16", False, 1, "full", "adafactor"),  # factored second moments
]


class SavedBytes:
    """Bytes autograd keeps for backward while active (what checkpointing and bf16 shrink): each
    saved tensor's storage once, and none of the models' own weights. A tensor's numel would count
    a weight again each time a layer saves it, and an expanded view (open_clip's attention saves
    its projection weight broadcast over the sequence) at its logical size."""

    def __init__(self, weights: set[int]):
        self.total, self.seen, self.weights = 0, set(), weights

    def pack(self, t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.seen and ptr not in self.weights:
            self.seen.add(ptr)
            self.total += storage.nbytes()
        return t


def weight_storages() -> set[int]:
    """The storages of every live module's parameters and buffers: memory held whether or not a step runs."""
    import gc
    import warnings

    import torch

    with warnings.catch_warnings():  # isinstance on every live object wakes torch's deprecated aliases
        warnings.simplefilter("ignore", FutureWarning)
        return {t.untyped_storage().data_ptr() for o in gc.get_objects() if isinstance(o, torch.nn.Module)
                for t in (*o.parameters(recurse=False), *o.buffers(recurse=False))}


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def dpo_setup(a: dict, device):
    """(module, micro-batches, forward, trainable params, bytes of the reference's own copy) of a DPO
    step on random latents."""
    import torch

    from raypref.train_dpo import dpo_step, image_size, load_for_training

    c = {"base_model": a["model"], "lora_rank": a["lora_rank"], "lora_alpha": float(a["lora_rank"]),
         "lora_targets": ["to_q", "to_k", "to_v", "to_out.0"], "gradient_checkpointing": a["checkpointing"],
         "finetune": a["finetune"], "precision": a["precision"]}  # as the loop passes it
    texts, vae, sched, unet, params, reference = load_for_training(c, device)
    copy_bytes = tensor_bytes(reference.frozen.parameters()) if reference.frozen is not None else 0
    g = torch.Generator().manual_seed(0)
    cfg = unet.config
    n = a["pairs"]
    per = n // a["micro"]
    latents = torch.randn(2 * n, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g).to(device)
    with torch.no_grad():
        # one prompt throughout, so every micro-batch's conditioning is the same: winners then losers
        enc = texts([PROMPT] * per).with_default_sizes(image_size(unet, vae)).repeat(2)
    # a micro-batch holds its winners then its losers, as pair_batch_to_latents builds them
    group = [(torch.cat([latents[i * per:(i + 1) * per], latents[n + i * per:n + (i + 1) * per]]), enc)
             for i in range(a["micro"])]
    return unet, group, lambda b: dpo_step(unet, reference, b[0], b[1], sched, 5000.0, g), params, copy_bytes


def refl_setup(a: dict, device):
    """(module, micro-batches, forward, trainable params) of a ReFL step: draw with DDIM from noise, the
    gradient through the last step only (last_steps [1, 1], so every setting times the same work),
    the frozen VAE's decode and a CLIP-score reward (``--scorer``, an open_clip model name built with
    random weights, or a local-dir: / hub reference)."""
    import torch

    from raypref.train_dpo import load_for_training
    from raypref.train_refl import ReflParts, refl_step

    scorer = {"name": "clip", "model": a["scorer"], "pretrained": None, "num_gpus": 0.0}
    refl = {"scorer": "clip", "scorer_cls": "clip_score", "scorer_kwargs": scorer, "head": "",
            "sampler": "ddim", "num_inference_steps": a["refl_steps"], "guidance_scale": 5.0, "last_steps": [1, 1], "margin": 1e9,
            "weight": 1e-3, "pretrain_weight": 0.0}
    c = {"base_model": a["model"], "lora_rank": a["lora_rank"], "lora_alpha": float(a["lora_rank"]),
         "lora_targets": ["to_q", "to_k", "to_v", "to_out.0"], "gradient_checkpointing": a["checkpointing"],
         "finetune": a["finetune"], "method": "refl", "refl": refl}
    texts, vae, _, unet, params, _ = load_for_training(c, device)
    parts = ReflParts(c, device)
    g = torch.Generator().manual_seed(0)
    per = a["pairs"] // a["micro"]
    return unet, [[PROMPT] * per for _ in range(a["micro"])], \
        lambda b: refl_step(unet, unet, b, texts, vae, parts, g, device), params, 0


def reward_setup(a: dict, device):
    """(module, micro-batches, forward, trainable params) of a reward-model step on random images."""
    import numpy as np
    from PIL import Image

    from raypref import images as I
    from raypref import schema as S
    from raypref.losses import reward_model_loss
    from raypref.models import resolve_model
    from raypref.reward_model import RewardModel
    from raypref.train_reward import forward_pairs

    model = RewardModel.create(resolve_model(a["model"], what="--model"), None, aspects=(), kind=a["kind"]).to(device)
    model.train()
    if a["checkpointing"]:
        model.backbone.set_grad_checkpointing(True)
    size = model.backbone.preprocess_cfg()["size"]
    size = size if isinstance(size, int) else size[0]
    rng = np.random.default_rng(0)
    per = a["pairs"] // a["micro"]

    def image():
        return I.encode(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))

    def batch(i):
        ids = range(i * per, (i + 1) * per)
        return {S.PROMPT: np.array([PROMPT] * per, dtype=object), S.LABEL: np.ones(per, dtype=np.float32),
                S.CHOSEN_ID: np.array([f"c{j}" for j in ids], dtype=object),
                S.REJECTED_ID: np.array([f"r{j}" for j in ids], dtype=object),
                S.CHOSEN_IMAGE: np.array([image() for _ in ids], dtype=object),
                S.REJECTED_IMAGE: np.array([image() for _ in ids], dtype=object)}

    def forward(b):
        oc, orj, _, _, label, _, _ = forward_pairs(model, model.backbone, b, [], device)
        return reward_model_loss(oc[""], orj[""], label)

    params = [p for p in model.parameters() if p.requires_grad]
    return model, [batch(i) for i in range(a["micro"])], forward, params, 0


def child(a: dict) -> dict:
    import torch

    from raypref.train_checkpoint import scheduled_optimizer
    from raypref.train_step import accumulate, micro_groups

    torch.manual_seed(0)
    device = torch.device(a["device"])
    setup = {"dpo": dpo_setup, "refl": refl_setup, "reward": reward_setup}[a["loop"]]
    module, group, plain, params, copy_bytes = setup(a, device)
    # the loops' own optimizer (AdamW, or Adafactor's factored state), at a constant rate
    opt, _ = scheduled_optimizer(params, 1e-5, "constant", 0, a["steps"] + 1, None, 0, kind=a.get("optimizer", "adamw"))

    def step(forward):
        opt.zero_grad(set_to_none=True)
        accumulate(module, next(micro_groups(group, len(group))), forward, device, a["precision"])
        opt.step()

    saved, weights = [], weight_storages()

    def counted(b):
        c = SavedBytes(weights)
        with torch.autograd.graph.saved_tensors_hooks(c.pack, lambda t: t):
            out = plain(b)
        saved.append(c.total)
        return out

    step(counted)  # also the warm-up: allocator, kernels, AdamW state
    state = tensor_bytes([p.grad for p in params if p.grad is not None]) + copy_bytes + tensor_bytes(
        [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(a["steps"]):
        step(plain)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"seconds_per_step": (time.perf_counter() - t0) / a["steps"], "saved_bytes": max(saved),
            "state_bytes": state, "trained_params": sum(p.numel() for p in params),
            "peak_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--loop", choices=["dpo", "refl", "reward"], default="dpo")
    ap.add_argument("--model", help="dpo: diffusers SD pipeline dir, hub name or shapes:sd (default); reward: an "
                    "open_clip model name built with random weights (default ViT-B-32), or a reward.backbone reference")
    ap.add_argument("--kind", default="open_clip", help="reward: reward.backbone_kind (open_clip, blip, film)")
    ap.add_argument("--pairs", type=int, default=16, help="pairs per optimizer step (even); refl: prompts")
    ap.add_argument("--scorer", default="ViT-L-14", help="refl: the CLIP-score reward's open_clip model (random weights)")
    ap.add_argument("--refl-steps", type=int, default=20, help="refl: DDIM steps of each drawing")
    ap.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    ap.add_argument("--lora-rank", type=int, default=4, help="dpo: LoRA rank")
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--settings", help="semicolon-separated labels of the settings to run (default: all); the "
                    "first is the baseline of the ratios. Labels: " + "; ".join(s[0] for s in SETTINGS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.pairs % 2:
        ap.error("--pairs must be even (the accumulation setting halves it)")
    from raypref.models import resolve_model

    if args.loop in ("dpo", "refl"):
        model = resolve_model(args.model or "shapes:sd", what="--model")
    else:
        model = args.model or "ViT-B-32"
    settings = SETTINGS
    if args.settings:
        by_label = {s[0]: s for s in SETTINGS}
        unknown = [x for x in args.settings.split(";") if x.strip() not in by_label]
        if unknown:
            ap.error(f"--settings: unknown {unknown}; the labels are {list(by_label)}")
        settings = [by_label[x.strip()] for x in args.settings.split(";")]
    rows = []
    for label, precision, ckpt, micro, finetune, optimizer in settings:
        if finetune != "lora" and args.loop == "reward":
            continue
        a = {"finetune": finetune, "loop": args.loop, "model": model, "kind": args.kind, "pairs": args.pairs, "steps": args.steps,
             "lora_rank": args.lora_rank, "device": args.device, "precision": precision, "checkpointing": ckpt,
             "micro": micro, "scorer": args.scorer, "refl_steps": args.refl_steps, "optimizer": optimizer}
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(a)], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{label}: the child failed:\n{out.stderr[-3000:]}")
        rows.append((label, json.loads(out.stdout.strip().splitlines()[-1])))
    base_label, base = rows[0]
    cuda = base["peak_bytes"] is not None
    what = {"dpo": f"DPO step, {args.model or 'shapes:sd'}, LoRA rank {args.lora_rank} (full fine-tunes: every weight), "
                   f"{args.pairs} pairs",
            "refl": f"ReFL step, {args.model or 'shapes:sd'}, LoRA rank {args.lora_rank}, {args.pairs} prompts, "
                    f"{args.refl_steps} DDIM steps, CLIP-score reward {args.scorer}",
            "reward": f"reward-model step, {args.kind} {model}, whole model trained, {args.pairs} pairs"}[args.loop]
    print(f"{what} a step, {args.device}, {args.steps} timed steps each; ratios against {base_label}")
    print("| setting | trained params | s / step | ratio | saved for backward (MiB) | ratio "
          "| grads + optimizer state + reference copy (MiB) | ratio |" + (" peak allocated (MiB) | ratio |" if cuda else ""))
    print("|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if cuda else ""))
    for label, r in rows:
        line = (f"| {label} | {r['trained_params']:,} | {r['seconds_per_step']:.3f} "
                f"| {r['seconds_per_step'] / base['seconds_per_step']:.2f}x "
                f"| {r['saved_bytes'] / 2**20:.1f} | {r['saved_bytes'] / base['saved_bytes']:.2f}x "
                f"| {r['state_bytes'] / 2**20:.2f} | {r['state_bytes'] / base['state_bytes']:.2f}x |")
        if cuda:
            line += f" {r['peak_bytes'] / 2**20:.1f} | {r['peak_bytes'] / base['peak_bytes']:.2f}x |"
        print(line)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
