"""Evaluation metrics (pure functions)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927); ties count as half a success."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def win_rate(base: Sequence[float], tuned: Sequence[float], tie_tolerance: float = 0.0) -> dict:
    """Paired comparison on the same prompts and seeds: tuned wins where its score exceeds the
    base's by more than ``tie_tolerance``. win_rate = (wins + ties/2) / n. NaN pairs are skipped
    and counted."""
    b = np.asarray(base, dtype=np.float64)
    t = np.asarray(tuned, dtype=np.float64)
    if b.shape != t.shape:
        raise ValueError(f"base has {b.shape} scores, tuned {t.shape}")
    ok = ~(np.isnan(b) | np.isnan(t))
    d = t[ok] - b[ok]
    wins = int((d > tie_tolerance).sum())
    losses = int((d < -tie_tolerance).sum())
    ties = int(d.size - wins - losses)
    n = int(d.size)
    rate = (wins + 0.5 * ties) / n if n else float("nan")
    lo, hi = wilson_interval(wins + 0.5 * ties, n)
    return {
        "n": n,
        "skipped_nan": int((~ok).sum()),
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "win_rate": rate,
        "win_rate_ci95": [lo, hi],
        "base_mean": float(b[ok].mean()) if n else float("nan"),
        "tuned_mean": float(t[ok].mean()) if n else float("nan"),
    }
