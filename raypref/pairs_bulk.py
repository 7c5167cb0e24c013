"""All pairs of every prompt's samples, vectorised over many prompts at once (pure functions).

The 'all pairs' strategy (``raypref.pairs.all_pairs`` per prompt, with its default rules: no tie
tolerance, ties dropped, any generators) for millions of prompts in a few numpy operations: every
unordered pair {i, j} of a prompt's samples, oriented by the aggregate score (the higher one is
chosen), C(n, 2) pairs for n samples (28 for 8). Pairs with equal scores carry no preference and
pairs with a NaN score cannot be oriented: both are left out and counted. Quality-aware ranking
then chooses among them (``raypref.select``).

``with_all_pairs`` fills a groups table's pair index lists (PAIR_CHOSEN / PAIR_REJECTED /
PAIR_MARGIN) in one vectorised step, so ``raypref.build.explode_pairs`` turns it into pairs
exactly as the build does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from raypref import schema as S


@dataclass(frozen=True)
class AllPairs:
    group: np.ndarray  # int64, the prompt (group) of each pair, ascending
    chosen: np.ndarray  # int32, index of the chosen sample within its group
    rejected: np.ndarray  # int32
    margin: np.ndarray  # float64, score(chosen) - score(rejected) > 0
    ties: int  # pairs left out: equal scores
    unscored: int  # pairs left out: a NaN score
    below_margin: int  # pairs left out: margin < min_margin


def all_pairs(scores, offsets, min_margin: float = 0.0) -> AllPairs:
    """Every pair (i < j in sample order) of each group, oriented by score.

    ``scores``: all groups' scores concatenated; ``offsets``: group g is scores[offsets[g]:offsets[g+1]]
    (Arrow list offsets). Pairs come group by group, then by (i, j) in sample order."""
    x = np.asarray(scores, dtype=np.float64)
    off = np.asarray(offsets, dtype=np.int64)
    sizes = np.diff(off)
    parts = []
    ties = unscored = below = 0
    for n in np.unique(sizes):
        if n < 2:
            continue
        g = np.flatnonzero(sizes == n)
        ii, jj = np.triu_indices(int(n), 1)  # all C(n, 2) pairs, as in Ouyang et al. 2022 (InstructGPT), Eq. 1
        base = off[g][:, None]
        d = x[base + ii] - x[base + jj]  # (groups, C(n,2)): score_i - score_j
        nan = np.isnan(d)
        tie = d == 0
        m = np.abs(d)
        below_mask = ~nan & ~tie & (m < min_margin)
        keep = ~nan & ~tie & ~below_mask
        unscored += int(nan.sum())
        ties += int(tie.sum())
        below += int(below_mask.sum())
        first = d > 0  # i scores higher: i is chosen
        rows, cols = np.nonzero(keep)
        parts.append(
            (
                g[rows],
                np.where(first[rows, cols], ii[cols], jj[cols]).astype(np.int32),
                np.where(first[rows, cols], jj[cols], ii[cols]).astype(np.int32),
                m[rows, cols],
            )
        )
    if not parts:
        empty = np.zeros(0, np.int32)
        return AllPairs(np.zeros(0, np.int64), empty, empty, np.zeros(0), ties, unscored, below)
    group, chosen, rejected, margin = (np.concatenate(p) for p in zip(*parts))
    if len(parts) > 1:  # groups of several sizes: back to group order (stable keeps (i, j) order)
        order = np.argsort(group, kind="stable")
        group, chosen, rejected, margin = group[order], chosen[order], rejected[order], margin[order]
    return AllPairs(group.astype(np.int64), chosen, rejected, margin, ties, unscored, below)


def with_all_pairs(groups: pa.Table, min_margin: float = 0.0) -> tuple[pa.Table, AllPairs]:
    """A groups table (one row per prompt, list columns, the aggregate SCORE among them) with its
    pair index lists set to all pairs; stale pair lists (labels too: these pairs are all strict) are replaced."""
    score = groups.column(S.SCORE).combine_chunks()
    p = all_pairs(score.flatten().to_numpy(zero_copy_only=False), score.offsets.to_numpy(), min_margin)
    counts = np.bincount(p.group, minlength=groups.num_rows)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    stale = [c for c in (S.PAIR_CHOSEN, S.PAIR_REJECTED, S.PAIR_MARGIN, S.PAIR_LABEL) if c in groups.column_names]
    out = groups.drop_columns(stale)
    for name, values in (
        (S.PAIR_CHOSEN, pa.array(p.chosen, pa.int32())),
        (S.PAIR_REJECTED, pa.array(p.rejected, pa.int32())),
        (S.PAIR_MARGIN, pa.array(p.margin.astype(np.float32), pa.float32())),
    ):
        out = out.append_column(name, pa.ListArray.from_arrays(offsets, values))
    return out, p
