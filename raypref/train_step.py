"""One optimizer step of a Ray Train loop, over micro-batches: gradient accumulation and bf16 autocast.

Shared by Diffusion-DPO (raypref.train_dpo) and reward-model training (raypref.train_reward). Ray Train
owns the process group; this module only enters DDP's own ``no_sync()``, so gradients are all-reduced
once per optimizer step instead of once per micro-batch.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Iterable, Iterator

PRECISIONS = ("fp32", "bf16")
_END = object()  # micro_groups: the batches ran out


def micro_groups(batches: Iterable, k: int) -> Iterator[Iterator[tuple[object, bool]]]:
    """Per optimizer step, its micro-batches as (batch, is_last) pairs: k of them, fewer at the end of
    the batches. Streamed with one batch of look-ahead, so at most two batches are held however large
    k is. Consume each group fully before taking the next."""
    if k < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {k}")
    it = iter(batches)
    head = [next(it, _END)]

    def group():
        for j in range(k):
            batch, head[0] = head[0], next(it, _END)
            last = j == k - 1 or head[0] is _END
            yield batch, last
            if last:
                return

    while head[0] is not _END:
        yield group()


def skip_groups(groups: Iterable, n: int) -> Iterator:
    """The micro_groups after the first ``n``, which are read past, not yielded: a resumed epoch's
    batches that its checkpoint had already trained on."""
    for i, group in enumerate(groups):
        if i < n:
            for _ in group:
                pass
            continue
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


def accumulate(module, group: Iterable[tuple[object, bool]], forward: Callable, device,
               precision: str) -> tuple[float, dict[str, float], int]:
    """Backpropagate every micro-batch of ``group`` (micro_groups) through ``forward(batch) -> (loss,
    metrics)``, then divide the summed gradients by the number of micro-batches: the gradient of
    their mean loss (each micro-batch weighs the same, as in accelerate and the diffusers training
    scripts). A DDP ``module`` skips the all-reduce on all but the last micro-batch. Returns the mean
    loss, the mean of each metric over the micro-batches that report it, and the number of
    micro-batches; the caller clips and steps.
    """
    n, loss_sum, sums, counts = 0, 0.0, {}, {}
    for batch, last in group:
        with nullcontext() if last or not hasattr(module, "no_sync") else module.no_sync():
            with autocast(device, precision):
                loss, metrics = forward(batch)
            loss.float().backward()
        n += 1
        loss_sum += float(loss.detach())
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1
    if n > 1:
        for p in module.parameters():
            if p.grad is not None:
                p.grad.div_(n)
    return loss_sum / n, {k: v / counts[k] for k, v in sums.items()}, n
