"""Evaluation metrics (pure functions)."""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np


def finite_or_null(value: Any) -> Any:
    """``value`` (nested dicts and lists) with NaN and infinities as None, for JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def strict_json(value: Any, **kw) -> str:
    """``value`` as JSON, NaN and infinities as null: json.dumps would write a bare NaN, which is not JSON
    (jq, JavaScript and strict parsers reject it). ``kw``: json.dumps's own (indent, ensure_ascii)."""
    return json.dumps(finite_or_null(value), allow_nan=False, **kw)


def json_text(value: Any) -> str:
    """A summary or metrics file's JSON, indented, NaN and infinities as null (strict_json)."""
    return strict_json(value, indent=2) + "\n"


def wilson_interval(successes: float, n: int, z: float = 1.96, deff: float = 1.0) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927); ties count as half a success.
    ``deff`` (design_effect, >= 1) shrinks n to the effective n / deff (Kish 1965) where rows are
    not independent."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    n = n / max(deff, 1.0)  # Kish 1965: effective sample size n / deff
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom  # Wilson 1927, score interval
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom  # Wilson 1927
    return (max(0.0, centre - half), min(1.0, centre + half))


def _cluster_sums(values: np.ndarray, clusters) -> tuple[np.ndarray, int]:
    """Per cluster, the sum of the values' deviations from their mean; (sums, number of clusters).
    No clusters: every row is its own."""
    dev = values - values.mean()
    if clusters is None:
        return dev, int(values.size)
    _, idx = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    sums = np.bincount(idx, weights=dev)
    return sums, int(sums.size)


def mean_variance(values, clusters=None) -> float:
    """Variance of the mean of ``values``, cluster-robust: G/(G-1) * sum_g (sum_{i in g} (x_i - mean))^2 / n^2
    over G clusters (Liang and Zeger 1986; with every row its own cluster it is the sample variance / n).
    Rows of one cluster (the pairs of one prompt, sharing its images; the seeds of one prompt) may
    move together, so they are not counted as independent. NaN when it cannot be estimated."""
    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return float("nan")
    sums, g = _cluster_sums(x, clusters)
    if g < 2:
        return float("nan")
    # Liang and Zeger 1986, robust (sandwich) variance of a mean; G/(G-1): the usual few-cluster correction
    return float(g / (g - 1) * np.square(sums).sum() / (n * n))


def design_effect(values, clusters) -> float:
    """Kish's design effect of the mean: its cluster-robust variance over the variance if every row
    were independent, at least 1. Where it cannot be estimated (one cluster, or no spread at all, as
    when every image passes) it is the mean cluster size: each cluster counts as one row."""
    x = np.asarray(values, dtype=np.float64)
    if clusters is None or x.size == 0:
        return 1.0
    plain, clustered = mean_variance(x), mean_variance(x, clusters)
    if plain > 0 and clustered >= 0:
        return max(1.0, clustered / plain)  # Kish 1965, design effect
    return x.size / _cluster_sums(x, clusters)[1]


def win_rate(base: Sequence[float], tuned: Sequence[float], tie_tolerance: float = 0.0, clusters=None) -> dict:
    """Paired comparison on the same prompts and seeds: tuned wins where its score exceeds the
    base's by more than ``tie_tolerance``. win_rate = (wins + ties/2) / n. NaN pairs are skipped
    and counted. The Wilson interval takes the design effect of ``clusters`` (a prompt id per row:
    a prompt's seeds are not independent)."""
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
    outcome = np.where(d > tie_tolerance, 1.0, np.where(d < -tie_tolerance, 0.0, 0.5))
    deff = design_effect(outcome, None if clusters is None else np.asarray(clusters, dtype=object)[ok])
    lo, hi = wilson_interval(wins + 0.5 * ties, n, deff=deff)
    return {
        "n": n,
        "design_effect": deff,
        "skipped_nan": int((~ok).sum()),
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "win_rate": rate,
        "win_rate_ci95": [lo, hi],
        "base_mean": float(b[ok].mean()) if n else float("nan"),
        "tuned_mean": float(t[ok].mean()) if n else float("nan"),
    }


def accuracy(passed: Sequence[float], clusters=None) -> dict:
    """Pass rate of 1/0 outcomes with a Wilson 95% interval (with the design effect of ``clusters``,
    a prompt id per row); NaN (not applicable) is skipped."""
    x = np.asarray(passed, dtype=np.float64)
    ok = ~np.isnan(x)
    x = x[ok]
    n = int(x.size)
    correct = int((x > 0.5).sum())
    deff = design_effect((x > 0.5).astype(np.float64), None if clusters is None else np.asarray(clusters, dtype=object)[ok])
    lo, hi = wilson_interval(correct, n, deff=deff)
    return {"n": n, "correct": correct, "accuracy": correct / n if n else float("nan"), "ci95": [lo, hi],
            "design_effect": deff}


def paired_difference(base: Sequence[float], tuned: Sequence[float], z: float = 1.96, clusters=None) -> dict:
    """tuned - base on paired outcomes (same prompt and seed), with a normal-approximation
    interval on the mean of the per-pair differences: d_mean +- z * sqrt(mean_variance(d, clusters)),
    which without clusters is z * sd(d) / sqrt(n); with ``clusters`` (a prompt id per row) a prompt's
    seeds count as one cluster. Pairs where either side is NaN are skipped. Where every pair differs
    alike the interval has no width: it is an approximation, not exact."""
    b = np.asarray(base, dtype=np.float64)
    t = np.asarray(tuned, dtype=np.float64)
    if b.shape != t.shape:
        raise ValueError(f"base has {b.shape} outcomes, tuned {t.shape}")
    ok = ~(np.isnan(b) | np.isnan(t))
    d = t[ok] - b[ok]
    n = int(d.size)
    if n == 0:
        return {"n": 0, "diff": float("nan"), "ci95": [float("nan"), float("nan")]}
    half = z * math.sqrt(mean_variance(d, None if clusters is None else np.asarray(clusters, dtype=object)[ok]))
    mean = float(d.mean())
    return {"n": n, "diff": mean, "ci95": [mean - half, mean + half]}
