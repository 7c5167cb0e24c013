"""One optimizer step of a Ray Train loop, over micro-batches: gradient accumulation and bf16 autocast.

Shared by Diffusion-DPO (raypref.train_dpo) and reward-model training (raypref.train_reward). Ray Train
owns the process group; this module only enters DDP's own ``no_sync()``, so gradients are all-reduced
once per optimizer step instead of once per micro-batch.
"""

from __future__ import annotations

import itertools
from contextlib import nullcontext
from typing import Callable, Iterable, Iterator

PRECISIONS = ("fp32", "bf16")


def micro_groups(batches: Iterable, k: int) -> Iterator[list]:
    """Consecutive groups of ``k`` batches, one optimizer step each; an epoch's last group may be shorter."""
    if k < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {k}")
    it = iter(batches)
    while group := list(itertools.islice(it, k)):
        yield group


def autocast(device, precision: str):
    """The forward's autocast context: bf16 compute with fp32 weights, optimizer state and gradients.

    bf16 keeps fp32's exponent range, so unlike fp16 it needs no loss scaling."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def accumulate(module, group: list, forward: Callable, device, precision: str) -> tuple[float, dict[str, float]]:
    """Backpropagate every micro-batch of ``group`` through ``forward(batch) -> (loss, metrics)``.

    Each loss is divided by len(group), so the summed gradient is that of the group's mean loss
    (each micro-batch weighs the same, as in accelerate and the diffusers training scripts). A DDP
    ``module`` skips the all-reduce on all but the last micro-batch. Returns the mean loss and the
    mean of each metric over the micro-batches; the caller clips and steps the optimizer.
    """
    n = len(group)
    loss_sum, sums = 0.0, {}
    for j, batch in enumerate(group):
        last = j == n - 1
        with nullcontext() if last or not hasattr(module, "no_sync") else module.no_sync():
            with autocast(device, precision):
                loss, metrics = forward(batch)
            (loss.float() / n).backward()
        loss_sum += float(loss.detach())
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return loss_sum / n, {k: v / n for k, v in sums.items()}
