"""A dataset report for a built (or re-paired, or ranked) preference dataset: counts, score and
margin histograms (PNG), and per-generator win rates, written beside the data.

Only score, margin and generator columns are read (column projection), never the images, so the
report of a multi-million-pair dataset costs one pass over a few float columns.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from raypref import schema as S
from raypref.metrics import json_text


def one_generator_unknown(chosen: list, rejected: list) -> int:
    """Pairs with a generator on one side only (null on the other): generator_win_rates leaves them out."""
    return sum(1 for c, r in zip(chosen, rejected) if (c is None) != (r is None))


def generator_win_rates(chosen: list[str], rejected: list[str], labels=None) -> dict[str, dict]:
    """Per generator, over the pairs whose two images come from different generators: wins (chosen),
    losses (rejected), ties (pairs labelled TIE: their chosen side is only the earlier sample) and
    win rate = wins / (wins + losses), None with no strict pair. Same-generator pairs say nothing
    about which generator is better and are left out, as are pairs with a generator unknown (null) on
    either side, which may be the same one (counted by one_generator_unknown)."""
    wins, losses, ties = Counter(), Counter(), Counter()
    labels = [S.STRICT] * len(chosen) if labels is None else labels
    for c, r, y in zip(chosen, rejected, labels):
        if c == r or c is None or r is None:
            continue
        if y == S.TIE:
            ties[c] += 1
            ties[r] += 1
        else:
            wins[c] += 1
            losses[r] += 1
    out = {}
    for g in sorted(set(wins) | set(losses) | set(ties)):
        n = wins[g] + losses[g]
        out[g] = {"wins": wins[g], "losses": losses[g], "ties": ties[g], "win_rate": wins[g] / n if n else None}
    return out


def _parts(directory: Path) -> list[Path]:
    """The *.parquet files under ``directory`` (sorted) that belong to its dataset (formats' in_dataset)."""
    from raypref.formats._common import in_dataset

    if not directory.is_dir():
        return []
    return sorted(f for f in directory.rglob("*.parquet") if f.is_file() and in_dataset(f.relative_to(directory).parts))


def _columns(files: list[Path], want) -> tuple[int, dict[str, np.ndarray | list]]:
    """(rows, {column: values}) of the wanted columns of these Parquet files."""
    import pyarrow as pa
    import pyarrow.dataset as pds

    if not files:
        return 0, {}
    try:
        ds = pds.dataset([str(f) for f in files], format="parquet")
        names = [c for c in ds.schema.names if want(c)]
        t = ds.to_table(columns=names)
    except (pa.ArrowInvalid, OSError):  # Arrow's dataset errors do not say which file is bad: find it
        from raypref.formats._common import footer_names

        footer_names(files, "report")  # a FormatError naming the first file whose footer cannot be read
        raise
    return t.num_rows, {c: (t.column(c).to_pylist() if t.schema.field(c).type == "string"
                            else t.column(c).to_numpy(zero_copy_only=False).astype(np.float64)) for c in names}


def _hist_png(series: dict[str, np.ndarray], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    n = len(series)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (name, v) in zip(axes.flat, series.items()):
        v = v[~np.isnan(v)]
        ax.hist(v, bins=40 if v.size else 1, color="#4c72b0")
        ax.set_title(f"{name} (n={v.size})", fontsize=9)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _stats(v: np.ndarray) -> dict:
    ok = v[~np.isnan(v)]
    if not ok.size:
        return {"n": 0, "nan": int(v.size)}
    return {"n": int(ok.size), "nan": int(v.size - ok.size), "mean": float(ok.mean()), "std": float(ok.std()),
            "min": float(ok.min()), "max": float(ok.max())}


def write_report(stage_dir: Path, out: Path | None = None, require_data: bool = True) -> dict:
    """Report on <stage_dir>/samples and <stage_dir>/pairs; writes report.json, report.md and PNG histograms
    to ``out`` (default <stage_dir>/report). With ``require_data`` (`raypref report`) either must hold Parquet;
    a build or re-pairing whose every image was left out reports zeros."""
    stage_dir = Path(stage_dir)
    sample_files, pair_files = _parts(stage_dir / "samples"), _parts(stage_dir / "pairs")
    if require_data and not sample_files and not pair_files:
        hint = (f"; it holds Parquet files itself: pass the stage dir above it ({stage_dir.parent})"
                if _parts(stage_dir) else "")
        raise ValueError(f"report.input: {stage_dir} has no Parquet files under samples/ or pairs/{hint}")
    out = Path(out) if out else stage_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    n_samples, samples = _columns(sample_files, lambda c: c == S.SCORE or S.is_score_column(c))
    n_pairs, pairs = _columns(pair_files, lambda c: c in (S.MARGIN, S.QUALITY, S.LABEL, S.CHOSEN_GENERATOR, S.REJECTED_GENERATOR))
    report: dict = {"samples": n_samples, "pairs": n_pairs, "scores": {}, "margin": None, "ties": 0, "generators": {},
                    "generator_unknown_pairs": 0, "plots": []}
    if samples:
        report["scores"] = {c: _stats(v) for c, v in samples.items()}
        _hist_png(samples, out / "score_histograms.png", "score distributions (per sample)")
        report["plots"].append("score_histograms.png")
    if pairs:
        # pairs of another source may have no margin: the rest is still reported
        if S.MARGIN in pairs:
            report["margin"] = _stats(pairs[S.MARGIN])
        series = {c: pairs[c] for c in (S.MARGIN, S.QUALITY) if c in pairs}
        if series:
            _hist_png(series, out / "margin_histograms.png", "pair margins and quality")
            report["plots"].append("margin_histograms.png")
        if S.LABEL in pairs:
            report["ties"] = int((pairs[S.LABEL] == S.TIE).sum())
        if S.CHOSEN_GENERATOR in pairs:
            report["generators"] = generator_win_rates(pairs[S.CHOSEN_GENERATOR], pairs[S.REJECTED_GENERATOR],
                                                       pairs.get(S.LABEL))
            report["generator_unknown_pairs"] = one_generator_unknown(pairs[S.CHOSEN_GENERATOR], pairs[S.REJECTED_GENERATOR])
    (out / "report.json").write_text(json_text(report))
    (out / "report.md").write_text(_markdown(report))
    return report


def _markdown(r: dict) -> str:
    lines = [f"# Dataset report\n\n{r['samples']} samples, {r['pairs']} pairs ({r['ties']} ties).\n"]
    if r["scores"]:
        lines += ["| score column | n | NaN | mean | std | min | max |", "|---|---|---|---|---|---|---|"]
        for c, s in r["scores"].items():
            vals = [f"{s[k]:.4g}" if k in s else "" for k in ("mean", "std", "min", "max")]
            lines.append(f"| {c} | {s['n']} | {s['nan']} | " + " | ".join(vals) + " |")
        lines.append("")
    if r["margin"] and r["margin"]["n"]:
        m = r["margin"]
        lines.append(f"Margin: mean {m['mean']:.4g}, min {m['min']:.4g}, max {m['max']:.4g}.\n")
    elif r["pairs"] and r["margin"] is None:
        lines.append("The pairs have no margin column (not scored).\n")
    if r["generators"]:
        lines += ["Per-generator win rate over pairs across generators (ties left out of the rate):\n",
                  "| generator | wins | losses | ties | win rate |", "|---|---|---|---|---|"]
        lines += [f"| {g} | {s['wins']} | {s['losses']} | {s['ties']} | "
                  + ("" if s["win_rate"] is None else f"{s['win_rate']:.3f}") + " |" for g, s in r["generators"].items()]
        lines.append("")
    if r.get("generator_unknown_pairs"):
        lines.append(f"{r['generator_unknown_pairs']} pairs with a generator on one side only (null on the other) are "
                     "left out of the win rates.\n")
    lines += [f"![{p}]({p})" for p in r["plots"]]
    return "\n".join(lines) + "\n"
