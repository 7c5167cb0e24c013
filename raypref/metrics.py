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


def accuracy(passed: Sequence[float]) -> dict:
    """Pass rate of 1/0 outcomes with a Wilson 95% interval; NaN (not applicable) is skipped."""
    x = np.asarray(passed, dtype=np.float64)
    x = x[~np.isnan(x)]
    n = int(x.size)
    correct = int((x > 0.5).sum())
    lo, hi = wilson_interval(correct, n)
    return {"n": n, "correct": correct, "accuracy": correct / n if n else float("nan"), "ci95": [lo, hi]}


def paired_difference(base: Sequence[float], tuned: Sequence[float], z: float = 1.96) -> dict:
    """tuned - base on paired outcomes (same prompt and seed), with a normal-approximation
    interval on the mean of the per-pair differences: d_mean +- z * sd(d) / sqrt(n).
    Pairs where either side is NaN are skipped."""
    b = np.asarray(base, dtype=np.float64)
    t = np.asarray(tuned, dtype=np.float64)
    if b.shape != t.shape:
        raise ValueError(f"base has {b.shape} outcomes, tuned {t.shape}")
    ok = ~(np.isnan(b) | np.isnan(t))
    d = t[ok] - b[ok]
    n = int(d.size)
    if n == 0:
        return {"n": 0, "diff": float("nan"), "ci95": [float("nan"), float("nan")]}
    half = z * d.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
    mean = float(d.mean())
    return {"n": n, "diff": mean, "ci95": [mean - half, mean + half]}
