"""Diffusion-DPO step cost: bf16 autocast, gradient checkpointing and accumulation against fp32.

Each setting runs in a fresh child process on the same model, pairs per step, noise and LoRA:
train.precision, train.gradient_checkpointing, and train.grad_accum_steps (the same pairs per
step in smaller micro-batches). A step is the training loop's own (raypref.train_step.accumulate
over raypref.train_dpo.dpo_step, then AdamW). Prints seconds per step; the activation memory, as
the bytes autograd keeps for the backward pass of one micro-batch (counted with
torch.autograd.graph.saved_tensors_hooks, on any device); on CUDA also the peak allocated memory
of a step; each as a ratio to the fp32 run of this invocation.

    .venv/bin/python benchmarks/dpo_step_memory.py                      # shapes:sd on this machine
    .venv/bin/python benchmarks/dpo_step_memory.py --model /models/sd15 --pairs 8 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SETTINGS = [  # (label, precision, gradient checkpointing, micro-batches per step)
    ("fp32", "fp32", False, 1),
    ("bf16", "bf16", False, 1),
    ("fp32 + checkpointing", "fp32", True, 1),
    ("bf16 + checkpointing", "bf16", True, 1),
    ("fp32, 2 micro-batches", "fp32", False, 2),
]


class SavedBytes:
    """Bytes of the tensors autograd saves for backward while active (what checkpointing and bf16 shrink)."""

    def __init__(self):
        self.total = 0

    def pack(self, t):
        self.total += t.numel() * t.element_size()
        return t


def child(a: dict) -> dict:
    import torch

    from raypref.train_dpo import dpo_step, load_for_training
    from raypref.train_step import accumulate

    torch.manual_seed(0)
    device = torch.device(a["device"])
    c = {"base_model": a["model"], "lora_rank": a["lora_rank"], "lora_alpha": float(a["lora_rank"]),
         "lora_targets": ["to_q", "to_k", "to_v", "to_out.0"], "gradient_checkpointing": a["checkpointing"]}
    tok, text, _, sched, unet, params = load_for_training(c, device)
    opt = torch.optim.AdamW(params, lr=1e-5)
    g = torch.Generator().manual_seed(0)
    cfg = unet.config
    n = a["pairs"]
    latents = torch.randn(2 * n, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g).to(device)
    ids = tok(["a red circle left of a blue square"] * n, padding="max_length", truncation=True,
              max_length=tok.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        enc = text(ids.to(device))[0].repeat(2, 1, 1)
    k = a["micro"]
    per = n // k
    # a micro-batch holds its winners then its losers, as pair_batch_to_latents builds them
    group = [(torch.cat([latents[i * per:(i + 1) * per], latents[n + i * per:n + (i + 1) * per]]),
              torch.cat([enc[i * per:(i + 1) * per], enc[n + i * per:n + (i + 1) * per]])) for i in range(k)]

    def step(forward):
        opt.zero_grad(set_to_none=True)
        accumulate(unet, group, forward, device, a["precision"])
        opt.step()

    def plain(b):
        return dpo_step(unet, unet, b[0], b[1], sched, 5000.0, g)

    saved = []

    def counted(b):
        c = SavedBytes()
        with torch.autograd.graph.saved_tensors_hooks(c.pack, lambda t: t):
            out = plain(b)
        saved.append(c.total)
        return out

    step(counted)  # also the warm-up: allocator, kernels, AdamW state
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(a["steps"]):
        step(plain)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"seconds_per_step": (time.perf_counter() - t0) / a["steps"], "saved_bytes": max(saved),
            "peak_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="shapes:sd", help="diffusers SD pipeline dir, hub name, or shapes:sd")
    ap.add_argument("--pairs", type=int, default=16, help="pairs per optimizer step (even)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    ap.add_argument("--lora-rank", type=int, default=4)
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.pairs % 2:
        ap.error("--pairs must be even (the accumulation setting halves it)")
    from raypref.models import resolve_model

    model = resolve_model(args.model, what="--model")
    rows = []
    for label, precision, ckpt, micro in SETTINGS:
        a = {"model": model, "pairs": args.pairs, "steps": args.steps, "lora_rank": args.lora_rank,
             "device": args.device, "precision": precision, "checkpointing": ckpt, "micro": micro}
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(a)], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{label}: the child failed:\n{out.stderr[-3000:]}")
        rows.append((label, json.loads(out.stdout.strip().splitlines()[-1])))
    base = rows[0][1]
    cuda = base["peak_bytes"] is not None
    print(f"DPO step, {args.model}, {args.pairs} pairs a step, LoRA rank {args.lora_rank}, {args.device}, "
          f"{args.steps} timed steps each")
    print("| setting | s / step | vs fp32 | saved for backward (MiB) | vs fp32 |"
          + (" peak allocated (MiB) | vs fp32 |" if cuda else ""))
    print("|---|---:|---:|---:|---:|" + ("---:|---:|" if cuda else ""))
    for label, r in rows:
        line = (f"| {label} | {r['seconds_per_step']:.3f} | {r['seconds_per_step'] / base['seconds_per_step']:.2f}x "
                f"| {r['saved_bytes'] / 2**20:.1f} | {r['saved_bytes'] / base['saved_bytes']:.2f}x |")
        if cuda:
            line += f" {r['peak_bytes'] / 2**20:.1f} | {r['peak_bytes'] / base['peak_bytes']:.2f}x |"
        print(line)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
