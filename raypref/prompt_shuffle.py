"""Shuffle batches of pairs prompt by prompt, so each epoch's batches differ while a prompt's pairs
stay together. No Ray, no torch: it works on the numpy batches any Ray Data iterator yields.

Why: all_pairs makes k(k-1)/2 pairs of a prompt's k images, so a batch of whole prompts encodes
each image once (raypref.train_reward.distinct_images). A row-level shuffle buffer splits prompts
apart; no shuffle at all repeats the very same batches every epoch. ``prompt_batches`` holds at
least ``buffer_rows`` pairs, then fills each batch with whole prompts drawn in random order.

Every batch but the last has exactly ``batch_size`` pairs, as with plain ``iter_batches``: equal
Ray Data shards then give every data-parallel worker the same number of steps. To hit the size,
the last prompt drawn into a batch may be cut, its other pairs going back to the buffer.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np


def _groups(batch: dict, key: str) -> list[dict]:
    """The batch cut into runs of equal ``key`` (the build writes a prompt's pairs together)."""
    ids = np.asarray(batch[key])
    if len(ids) == 0:
        return []
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    return [{c: v[s:e] for c, v in batch.items()} for s, e in zip(starts, ends)]


def _rows(group: dict) -> int:
    return len(next(iter(group.values())))


def _take(groups: list[dict], n: int, rng: np.random.Generator) -> tuple[dict, list[dict]]:
    """n rows of whole groups in random order (the last one cut if needed); the groups left."""
    out, rest, need = [], [], n
    for i in rng.permutation(len(groups)):
        g = groups[i]
        if need == 0:
            rest.append(g)
        elif _rows(g) <= need:
            out.append(g)
            need -= _rows(g)
        else:
            out.append({c: v[:need] for c, v in g.items()})
            rest.append({c: v[need:] for c, v in g.items()})
            need = 0
    batch = {c: np.concatenate([g[c] for g in out]) for c in out[0]}
    return batch, rest


def prompt_batches(batches: Iterable[dict], batch_size: int, buffer_rows: int, key: str,
                   rng: np.random.Generator) -> Iterator[dict]:
    """Re-batch ``batches`` (dicts of equal-length numpy columns) into batches of ``batch_size``
    rows made of whole runs of ``key`` drawn at random from a buffer of >= ``buffer_rows`` rows.
    Every input row comes out exactly once; only the last batch may be smaller."""
    if batch_size < 1 or buffer_rows < 0:
        raise ValueError(f"prompt_batches: batch_size must be >= 1 and buffer_rows >= 0, got {batch_size}, {buffer_rows}")
    groups: list[dict] = []
    held = 0
    for batch in batches:
        for g in _groups(batch, key):
            groups.append(g)
            held += _rows(g)
        while held >= max(buffer_rows, batch_size):
            out, groups = _take(groups, batch_size, rng)
            held -= batch_size
            yield out
    while held > 0:
        n = min(batch_size, held)
        out, groups = _take(groups, n, rng)
        held -= n
        yield out
