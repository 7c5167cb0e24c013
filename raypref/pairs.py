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


STRATEGIES = {"best_vs_worst": best_vs_worst}
