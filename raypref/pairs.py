"""Preference pair construction from one prompt's scores (pure functions).

Every strategy takes one prompt's scores (NaN = unscored, never paired) and the same options:

- ``min_margin``: a strict pair whose margin is below it is dropped.
- ties: two samples whose scores differ by at most ``tie_tolerance`` are tied. With
  ``keep_ties=False`` (default) a tie teaches nothing and makes no pair; with ``keep_ties=True`` it
  makes a pair labelled 0.5 (chosen = the earlier sample), as human datasets record ties.
- ``generators`` (one name per sample) with ``generator_rule``: 'any' (default) pairs any two samples
  of the prompt, 'across' only samples of different generators (VisionPrefer compares models),
  'within' only samples of the same generator.

Ranks break equal scores by sample order (a stable sort), so results are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

GENERATOR_RULES = ("any", "across", "within")


@dataclass(frozen=True)
class Pair:
    chosen: int  # index into the prompt's samples
    rejected: int
    margin: float  # chosen score - rejected score (>= 0)
    label: float = 1.0  # P(chosen preferred): 1.0 strict, 0.5 tie


def _valid_order(scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores as float64, valid indices best first, valid indices worst first); both stable, so
    among equal scores the earlier sample comes first either way."""
    x = np.asarray(scores, dtype=np.float64)
    idx = np.flatnonzero(~np.isnan(x))
    return x, idx[np.argsort(-x[idx], kind="stable")], idx[np.argsort(x[idx], kind="stable")]


def _allowed(i: int, j: int, generators, rule: str) -> bool:
    if rule not in GENERATOR_RULES:
        raise ValueError(f"generator_rule must be one of {GENERATOR_RULES}, got {rule!r}")
    if rule == "any" or generators is None:
        return True
    same = generators[i] == generators[j]
    return not same if rule == "across" else same


def _make(x, i, j, min_margin, tie_tolerance, keep_ties) -> Pair | None:
    margin = float(x[i] - x[j])
    if margin < -tie_tolerance:
        return None  # j beats i: a strict pair only the other way round, never a tie
    if margin <= tie_tolerance:
        if not keep_ties:
            return None
        a, b = (i, j) if i < j else (j, i)
        return Pair(int(a), int(b), abs(margin), 0.5)  # a tie as P = 0.5, as Kirstain et al. 2023 (Pick-a-Pic), Sec. 4
    if margin < min_margin:
        return None
    return Pair(int(i), int(j), margin)


def best_vs_worst(scores: Sequence[float], min_margin: float = 0.0, tie_tolerance: float = 0.0,
                  keep_ties: bool = False, generators: Sequence[str] | None = None,
                  generator_rule: str = "any") -> list[Pair]:
    """AGFSync's pairing: the highest-scoring sample is chosen, the lowest rejected.

    Under a generator rule, the allowed pair with the largest margin (first in rank order on equal
    margins). With several samples at the max (min), the first in sample order is taken."""
    x, order, worst_first = _valid_order(scores)
    best = None
    for i in order:
        for j in worst_first:
            if i != j and _allowed(i, j, generators, generator_rule):
                m = x[i] - x[j]
                if best is None or m > best[2]:
                    best = (i, j, m)  # An et al. 2025 (AGFSync): highest total score chosen, lowest rejected
                break  # for this i, the first allowed j from the bottom has the largest margin
    if best is None:
        return []
    p = _make(x, best[0], best[1], min_margin, tie_tolerance, keep_ties)
    return [p] if p else []


def top_k_vs_bottom_k(scores: Sequence[float], k: int = 2, min_margin: float = 0.0, tie_tolerance: float = 0.0,
                      keep_ties: bool = False, generators: Sequence[str] | None = None,
                      generator_rule: str = "any") -> list[Pair]:
    """Every pair (i, j) with i among the k highest and j among the k lowest valid samples: up to
    k*k pairs per prompt, so N samples teach more than one pair. k=1 is best_vs_worst (rule 'any').
    A sample in both the top and the bottom k pairs with neither itself nor (for a tie) twice.
    Pairs come best chosen first, then worst rejected first."""
    if k < 1:
        raise ValueError(f"top_k_vs_bottom_k: k must be >= 1, got {k}")
    x, order, worst_first = _valid_order(scores)
    top, bottom = order[:k], worst_first[:k]
    out, seen = [], set()
    for i in top:
        for j in bottom:
            if i == j or not _allowed(i, j, generators, generator_rule):
                continue
            p = _make(x, i, j, min_margin, tie_tolerance, keep_ties)
            if p and (p.chosen, p.rejected) not in seen:
                seen.add((p.chosen, p.rejected))
                out.append(p)
    return out


def all_pairs(scores: Sequence[float], min_margin: float = 0.0, tie_tolerance: float = 0.0,
              keep_ties: bool = False, generators: Sequence[str] | None = None,
              generator_rule: str = "any") -> list[Pair]:
    """Every unordered pair of valid samples, oriented by score: n(n-1)/2 candidates per prompt
    (28 for 8 samples), before margin, tie and generator rules. Pairs come in rank order of the
    chosen sample, then of the rejected one."""
    x, order, _ = _valid_order(scores)
    out = []
    # all C(K, 2) pairs of K ranked samples, as in Ouyang et al. 2022 (InstructGPT), Eq. 1
    for a in range(len(order)):
        for b in range(a + 1, len(order)):
            i, j = order[a], order[b]
            if _allowed(i, j, generators, generator_rule):
                p = _make(x, i, j, min_margin, tie_tolerance, keep_ties)
                if p:
                    out.append(p)
    return out


STRATEGIES = {"best_vs_worst": best_vs_worst, "top_k_vs_bottom_k": top_k_vs_bottom_k, "all_pairs": all_pairs}
