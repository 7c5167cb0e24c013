"""Per-prompt score normalisation and the weighted aggregate (pure functions on arrays).

Every function takes the scores of ONE prompt's samples; NaN marks a missing score and stays
NaN, so a sample a judge could not score never wins or loses a pair by accident.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def normalize(scores: Sequence[float], method: str, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Normalise one prompt's scores.

    raw:       unchanged.
    rescale100: 100 * (x - lo) / (hi - lo) over the scorer's declared range (AGFSync puts every
               judge on 0..100 before weighting).
    zscore:    (x - mean) / std over the prompt's valid samples; 0 when std is 0.
    rank:      rank / (n - 1) in [0, 1] over valid samples (ties share the mean rank).
    """
    x = np.asarray(scores, dtype=np.float64)
    valid = ~np.isnan(x)
    out = np.full_like(x, np.nan)
    if method == "raw":
        return x.copy()
    if method == "rescale100":
        if value_range is None:
            raise ValueError("normalize='rescale100' needs the scorer's value range [lo, hi]")
        lo, hi = value_range
        if not hi > lo:
            raise ValueError(f"value range must have hi > lo, got [{lo}, {hi}]")
        return 100.0 * (x - lo) / (hi - lo)  # An et al. 2025 (AGFSync): every judge on 0..100 before weighting
    v = x[valid]
    if method == "zscore":
        # equal values: 0 (their std is often a rounding residue such as 1e-17, not 0)
        same = v.size == 0 or np.ptp(v) == 0
        out[valid] = 0.0 if same else (v - v.mean()) / v.std()
        return out
    if method == "rank":
        if v.size == 1:
            out[valid] = 0.5
        elif v.size > 1:
            order = v.argsort(kind="stable")
            ranks = np.empty(v.size)
            ranks[order] = np.arange(v.size, dtype=np.float64)
            for u in np.unique(v):  # ties share their mean rank
                m = v == u
                ranks[m] = ranks[m].mean()
            out[valid] = ranks / (v.size - 1)
        return out
    raise ValueError(f"unknown normalisation {method!r}")


def weighted_sum(columns: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum_k w_k * s_k per sample (AGFSync's total score: 0.35 VQA + 0.55 CLIP + 0.10 aesthetic, each
    on 0..100). NaN in any weighted column makes the sample's aggregate NaN."""
    if len(columns) != len(weights):
        raise ValueError(f"{len(columns)} score columns but {len(weights)} weights")
    if not columns:
        raise ValueError("no score columns to aggregate")
    total = np.zeros_like(np.asarray(columns[0], dtype=np.float64))
    for col, w in zip(columns, weights):
        total = total + float(w) * np.asarray(col, dtype=np.float64)  # An et al. 2025 (AGFSync), weighted total score
    return total
