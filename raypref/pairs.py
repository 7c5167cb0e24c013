"""Preference pair construction from one prompt's aggregate scores (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Pair:
    chosen: int  # index into the prompt's samples
    rejected: int
    margin: float  # chosen score - rejected score, > 0


def best_vs_worst(scores: Sequence[float], min_margin: float = 0.0) -> list[Pair]:
    """AGFSync's pairing: the highest-scoring sample is chosen, the lowest rejected.

    NaN scores are ignored. Ties: with several samples at the max (min), the first in sample order
    is taken; if best == worst there is no preference and no pair. A pair whose margin is below
    ``min_margin`` is dropped.
    """
    x = np.asarray(scores, dtype=np.float64)
    idx = np.flatnonzero(~np.isnan(x))
    if idx.size < 2:
        return []
    v = x[idx]
    best, worst = idx[int(np.argmax(v))], idx[int(np.argmin(v))]
    margin = float(x[best] - x[worst])
    if margin <= 0 or margin < min_margin:
        return []
    return [Pair(int(best), int(worst), margin)]


def top_k_vs_bottom_k(scores: Sequence[float], k: int = 2, min_margin: float = 0.0) -> list[Pair]:
    """Every pair (i, j) with i among the k highest and j among the k lowest valid samples and
    score_i - score_j > max(0, min_margin): up to k*k pairs per prompt, so N samples teach more
    than one pair. k=1 is best_vs_worst. NaN scores are ignored; ranks break ties by sample
    order (a stable sort), and a sample in both the top and the bottom k pairs with neither.
    Pairs come best chosen first, then worst rejected first."""
    if k < 1:
        raise ValueError(f"top_k_vs_bottom_k: k must be >= 1, got {k}")
    x = np.asarray(scores, dtype=np.float64)
    idx = np.flatnonzero(~np.isnan(x))
    order = idx[np.argsort(-x[idx], kind="stable")]  # best first
    top, bottom = order[:k], order[::-1][:k]  # bottom: worst first
    out = []
    for i in top:
        for j in bottom:
            margin = float(x[i] - x[j])
            if i != j and margin > 0 and margin >= min_margin:
                out.append(Pair(int(i), int(j), margin))
    return out


STRATEGIES = {"best_vs_worst": best_vs_worst, "top_k_vs_bottom_k": top_k_vs_bottom_k}
