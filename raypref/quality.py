"""Quality metrics over preference pairs (pure, vectorised): which pairs teach the most.

A metric is a function ``metric(batch, **args) -> np.ndarray`` (float64, one value per row of a
pairs table or record batch); higher is better. Quality-aware pair ranking sorts a whole pairs
dataset by such a metric and trains on the top p% (the paper keeps 5.33%: "DPO-QSD", TMLR
submission, OpenReview YfxGcOjpiJ); ``raypref.select`` does that selection exactly.

Rules every metric keeps (the selection relies on them):
- Row-wise: a pair's value depends on its own row only, never on the rest of the batch, so the
  selection cannot depend on how the data is split into shards or batches.
- NaN means "cannot be ranked": a missing (null/NaN) input score gives NaN, a NaN pair is never
  selected, and the selection counts them.

Score columns are named as in the pairs table: ``column=None`` (or ``'score'``) is the aggregate
(``chosen_score`` / ``rejected_score``); ``column='score_clip'`` reads ``chosen_score_clip`` /
``rejected_score_clip``. Arguments come from ``rank.metric_args``.

Pluggable: ``resolve_metric('my_pkg.my_mod:my_metric')`` imports a user function. A metric may
carry a ``columns(names, **args) -> list[str]`` attribute naming the columns it reads, so the
ranking's first pass reads only those; without one, every column is read.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from raypref import schema as S

Metric = Callable[..., np.ndarray]


def _side_columns(column: str | None) -> tuple[str, str]:
    col = column or S.SCORE
    return S.chosen_column(col), S.rejected_column(col)  # 'score' -> chosen_score / rejected_score


def _values(batch, name: str) -> np.ndarray:
    """One column as float64, nulls as NaN; a missing column is an error naming it."""
    if name not in batch.schema.names:
        known = [c for c in batch.schema.names if c in (S.CHOSEN_SCORE, S.REJECTED_SCORE) or c.startswith(S.CHOSEN_PREFIX + S.SCORE_PREFIX)]
        raise ValueError(f"quality metric needs column {name!r}, which the pairs table lacks (chosen score columns there: {known})")
    col = batch.column(name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return col.cast(pa.float64()).to_numpy(zero_copy_only=False)  # float nulls -> NaN


def _with_columns(columns: Callable[..., list[str]]):
    def wrap(fn: Metric) -> Metric:
        fn.columns = columns
        return fn

    return wrap


@_with_columns(lambda names, column=None: list(_side_columns(column)))
def margin(batch, column: str | None = None) -> np.ndarray:
    """q = s(chosen) - s(rejected) for one score column (default: the aggregate).

    The reward gap a Diffusion-DPO implicit reward is trained to widen (Wallace et al. 2023,
    arXiv 2311.12908); a wide gap is a confident, less noisy label."""
    c, r = _side_columns(column)
    return _values(batch, c) - _values(batch, r)  # q = r(x_w) - r(x_l)  (margin; OpenReview YfxGcOjpiJ ranks pairs by quality)


@_with_columns(lambda names, column=None: [_side_columns(column)[0]])
def chosen_quality(batch, column: str | None = None) -> np.ndarray:
    """q = s(chosen) for one score column (default: the aggregate).

    "What Matters in Data for DPO?" (Pan et al. 2025, arXiv 2508.18312) finds the chosen sample's
    quality dominates what DPO learns, the rejected one's matters little."""
    return _values(batch, _side_columns(column)[0])  # q = r(x_w): Pan et al. 2025 (arXiv 2508.18312), chosen quality


def _combined_columns(names, margin_weight=0.5, chosen_weight=0.5, column=None, margin_column=None, chosen_column=None):
    return sorted(set(_side_columns(margin_column or column)) | {_side_columns(chosen_column or column)[0]})


@_with_columns(_combined_columns)
def combined(
    batch,
    margin_weight: float = 0.5,
    chosen_weight: float = 0.5,
    column: str | None = None,
    margin_column: str | None = None,
    chosen_column: str | None = None,
) -> np.ndarray:
    """q = a * margin + b * chosen_quality, weights a, b from config; ``margin_column`` and
    ``chosen_column`` default to ``column`` (default: the aggregate). Both terms are on their
    column's scale, so pick a, b for those scales."""
    m = margin(batch, margin_column or column)
    c = chosen_quality(batch, chosen_column or column)
    # q = a (r(x_w) - r(x_l)) + b r(x_w): OpenReview YfxGcOjpiJ's margin plus Pan et al. 2025's chosen quality
    return float(margin_weight) * m + float(chosen_weight) * c


def _agreement_columns(names, columns=None, weights=None, margin_weighted=False, tie_tolerance=0.0):
    cols = _scorer_columns(names, columns)
    _weights(weights, cols)  # before any data is read
    return [S.LABEL] + [x for c in cols for x in (S.chosen_column(c), S.rejected_column(c))]


def _scorer_columns(names, columns: Sequence[str] | None) -> list[str]:
    if columns is not None:
        if isinstance(columns, str) or not isinstance(columns, Sequence) or not columns:
            raise ValueError(f"rank.metric_args.columns: a non-empty list of score columns, got {columns!r}")
        return list(columns)
    # one vote per scorer: a judge's aspects are parts of its opinion, not more scorers
    found = S.main_score_columns(S.pair_score_columns(names))
    if not found:
        raise ValueError(f"agreement: the pairs table has no per-scorer columns (chosen_score_<name> / rejected_score_<name>); columns: {list(names)}")
    return found


def _weights(weights, cols: list[str]) -> dict[str, float]:
    """rank.metric_args.weights checked: a mapping from voting columns to finite weights >= 0."""
    if weights is None:
        return {}
    if not isinstance(weights, Mapping):
        raise ValueError(f"rank.metric_args.weights: a mapping {{score column: weight}}, got {weights!r}")
    unknown = sorted(set(weights) - set(cols))
    if unknown:
        raise ValueError(f"rank.metric_args.weights: weights for {unknown}, which are not among the scorer columns {cols}")
    out = {}
    for c, x in weights.items():
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
            raise ValueError(f"rank.metric_args.weights: {c!r}: a finite number >= 0, got {x!r}")
        out[c] = float(x)
    return out


@_with_columns(_agreement_columns)
def agreement(
    batch,
    columns: Sequence[str] | None = None,
    weights: dict[str, float] | None = None,
    margin_weighted: bool = False,
    tie_tolerance: float = 0.0,
) -> np.ndarray:
    """How far several scorers agree with the pair's label.

    Scorer k votes v_k = 1 when its ordering agrees with the label: for label 1 (chosen
    preferred) s_k(chosen) - s_k(rejected) > tie_tolerance, for label 0 the reverse, for a tie
    (label 0.5) |s_k(chosen) - s_k(rejected)| <= tie_tolerance; otherwise v_k = 0.
        q = sum_k w_k v_k g_k / sum_k w_k,  g_k = 1, or |m_k| with margin_weighted
    so plain agreement is the (weighted) fraction of scorers that agree, and the margin-weighted
    form is the mean margin of the agreeing scorers (disagreeing ones add 0): it separates pairs
    that all scorers agree on by how strongly they agree. ``columns``: score columns (default: each
    scorer's main column score_<name>, one vote per scorer, its aspects not voting); ``weights``: a
    mapping per column (default 1). A scorer with a NaN score abstains (leaves numerator and
    denominator); all abstaining, or a NaN label, is NaN.
    Majority agreement of several scorers as a label's reliability: BalancedDPO (arXiv 2503.12575).
    """
    cols = _scorer_columns(batch.schema.names, columns)
    w = _weights(weights, cols)
    label = _values(batch, S.LABEL)
    num = np.zeros(batch.num_rows)
    den = np.zeros(batch.num_rows)
    for c in cols:
        m = _values(batch, S.chosen_column(c)) - _values(batch, S.rejected_column(c))
        vote = np.where(label > 0.5, m > tie_tolerance, np.where(label < 0.5, -m > tie_tolerance, np.abs(m) <= tie_tolerance))
        gain = np.abs(m) if margin_weighted else 1.0
        present = ~np.isnan(m)
        wk = float(w.get(c, 1.0))
        num += np.where(present, wk * vote * gain, 0.0)  # sum_k w_k v_k g_k: BalancedDPO (arXiv 2503.12575), scorers' vote
        den += np.where(present, wk, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = num / den
    q[(den == 0) | np.isnan(label)] = np.nan
    return q


@_with_columns(lambda names, seed=0: [S.CHOSEN_ID, S.REJECTED_ID])
def random(batch, seed: int = 0) -> np.ndarray:
    """q = a seeded hash of the pair's (chosen id, rejected id), uniform on [0, 1).

    Keeping the top p% by it is a random p% subset: the random-selection baseline that quality-aware
    ranking is compared against (OpenReview YfxGcOjpiJ), and the data-size knob of scaling sweeps.
    Row-wise and stable on every machine, so the subsets are nested: a pair kept at 5% is kept at 10%."""
    chosen = batch.column(S.CHOSEN_ID).to_pylist()
    rejected = batch.column(S.REJECTED_ID).to_pylist()
    return np.fromiter((S.unit_hash("rank-random", seed, c, r) for c, r in zip(chosen, rejected)),
                       dtype=np.float64, count=len(chosen))  # q ~ U[0, 1), fixed per pair


METRICS: dict[str, Metric] = {
    "margin": margin,
    "chosen_quality": chosen_quality,
    "combined": combined,
    "agreement": agreement,
    "random": random,
}


def resolve_metric(name: str) -> Metric:
    """A registry name (``METRICS``) or a 'module:function' import path."""
    from raypref.registry import import_attr

    if name in METRICS:
        return METRICS[name]
    if ":" not in name:
        raise ValueError(f"rank.metric {name!r}: not a built-in metric ({sorted(METRICS)}) nor 'module:function'")
    fn = import_attr(name, f"rank.metric {name!r}")
    if not callable(fn):
        raise ValueError(f"rank.metric {name!r}: {fn!r} is not a function")
    return fn


def check_args(fn: Metric, args: dict, name: str) -> None:
    """Unknown or missing metric arguments are an error before any data is read."""
    try:
        inspect.signature(fn).bind(None, **args)
    except TypeError as e:
        raise ValueError(f"rank.metric_args for {name!r}: {e} (signature: {name}{inspect.signature(fn)})") from None


def needed_columns(fn: Metric, names: Sequence[str], args: dict) -> list[str] | None:
    """The columns the metric reads, or None for 'all of them'."""
    cols = getattr(fn, "columns", None)
    return None if cols is None else list(cols(list(names), **args))


def compute(fn: Metric, batch, args: dict, name: str = "metric") -> np.ndarray:
    """Run a metric and check its result: float64-able, one value per row."""
    q = np.asarray(fn(batch, **args), dtype=np.float64)
    if q.shape != (batch.num_rows,):
        raise ValueError(f"quality metric {name!r} returned shape {q.shape} for a batch of {batch.num_rows} pairs")
    return q
