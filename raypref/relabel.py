"""AI re-labelling: score imported preference pairs (human or AI) with the config's scorer pools and
label each pair by the AI aggregate, keeping the imported label beside it.

    imported pairs (any raypref.formats format, streamed on the driver, bad rows quarantined)
      -> <out>/imported: raypref pairs Parquet, relabel.shard_size pairs per file
      -> one 2-sample group row per pair (sample 0 = the imported chosen image, 1 = the rejected)
      -> one actor pool per build.scorers entry (Ray Data, as in the build)
      -> aggregate + pair, row-local (build.finalize_groups with keep_ties: every scored pair gives
         exactly one pair: the AI's preferred image chosen, label 1.0, or a tie within
         build.pairs.tie_tolerance, label 0.5 in imported order)
      -> <out>/pairs (build.explode_pairs: per-scorer chosen_/rejected_ columns, aggregate,
         margin = quality, label_source 'ai:<scorer>*<weight>+...') with source_label, the imported
         label re-expressed for the new chosen side (1 - label when the AI flipped the pair)
      -> <out>/quarantine/import (unusable imported rows) and <out>/quarantine/relabel (imported
         pairs with no AI label, each naming the score columns that were NaN and the image's side;
         score_pairs notes them in <out>/_unscored while the run lasts).

One Ray Data execution runs from the imported shards to the pairs. The pairs carry every
scorer's columns, so ranking them (``raypref rank``) or re-weighting never re-runs a scorer.

A rerun resumes: the import is kept when it finished with the same input, and Ray Data's
checkpointing (keyed on import_row, each pair's row in the import) skips the pairs already written,
so a crash loses at most the shards in flight, not hours of judge calls. Other settings (input,
its files, scorers, pairing) are refused on a rerun, as for the build; a larger relabel.limit or
another shard_size imports again and labels only the pairs not yet labelled.

build.pairs' strategy and min_margin do not apply: a pair is two images, and a pair with a small
margin is kept (its margin says how sure the AI is; rank it with ``raypref rank``).
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raypref import quarantine as Q
from raypref import schema as S
from raypref.build import (
    _scorer_specs, build_files, explode_pairs, finalize_groups, generate_and_score, labelling_settings, scorer_kwargs,
    untracked_build_keys,
)
from raypref.config import Config, format_options, guard_rerun, record_added, record_settings, settings_changed, write_run_meta
from raypref.formats import FORMATS, Quarantine, check_format, first_pairs, input_fingerprint, write_pairs
from raypref.metrics import json_text
from raypref.parquet_read import read_parquet
from raypref.resume import checkpointed

_IMPORTED_COLUMNS = [S.PROMPT_ID, S.PROMPT, S.CHOSEN_ID, S.REJECTED_ID, S.CHOSEN_IMAGE, S.REJECTED_IMAGE, S.LABEL,
                     S.LABEL_SOURCE, S.CHOSEN_GENERATOR, S.REJECTED_GENERATOR]
IMPORT_DONE = "import_settings.json"  # in relabel/: the import finished, from this input (record_settings)
SETTINGS_FILE = "relabel_settings.json"  # in relabel/: what the written pairs were labelled with
_PAIR_TO_SAMPLE = {S.SAMPLE_ID: (S.CHOSEN_ID, S.REJECTED_ID), S.GENERATOR: (S.CHOSEN_GENERATOR, S.REJECTED_GENERATOR),
                   S.IMAGE: (S.CHOSEN_IMAGE, S.REJECTED_IMAGE)}


def _two(first: pa.Array, second: pa.Array, typ: pa.DataType) -> pa.ListArray:
    """[first[r], second[r]] for every row r, as a list column."""
    n = len(first)
    flat = pa.concat_arrays([first.cast(typ), second.cast(typ)])
    order = np.empty(2 * n, np.int64)
    order[0::2], order[1::2] = np.arange(n), np.arange(n, 2 * n)
    return pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)), flat.take(pa.array(order)))


def pairs_to_groups(batch: pa.Table) -> pa.Table:
    """Pairs -> groups rows: each pair becomes one prompt row with two samples (the imported chosen
    image first), the sample list columns scorers read, and the imported label as source_label."""
    n = batch.num_rows
    cols = {S.PROMPT_ID: batch.column(S.PROMPT_ID).combine_chunks(), S.PROMPT: batch.column(S.PROMPT).combine_chunks()}
    for f in S.SAMPLE_FIELDS:
        if f.name in _PAIR_TO_SAMPLE:
            a, b = _PAIR_TO_SAMPLE[f.name]
            cols[f.name] = _two(batch.column(a).combine_chunks(), batch.column(b).combine_chunks(), f.type)
        else:  # seed and sampling settings: not known for imported images
            cols[f.name] = _two(pa.nulls(n, f.type), pa.nulls(n, f.type), f.type)
    cols[S.SOURCE_LABEL] = batch.column(S.LABEL).combine_chunks().cast(pa.float32())
    cols[S.SOURCE_LABEL_SOURCE] = (batch.column(S.LABEL_SOURCE).combine_chunks().cast(pa.string())
                                   if S.LABEL_SOURCE in batch.column_names else pa.nulls(n, pa.string()))  # an older import
    cols[S.IMPORT_ROW] = batch.column(S.IMPORT_ROW).combine_chunks()
    return pa.table(cols)


def to_source_orientation(pairs: pa.Table, flipped: np.ndarray, source_label_source: list) -> pa.Table:
    """AI-oriented pairs -> the imported orientation (relabel.orient 'source'), pure: where the AI
    chose the imported rejected image (``flipped``), every chosen_*/rejected_* column pair swaps and
    the margin (and the quality, the margin here) changes sign; then label and source_label trade places (the imported label becomes
    the label, the AI's, as P(this chosen preferred), goes to source_label) and label_source is the
    imported one."""
    mask = pa.array(np.asarray(flipped, bool))
    cols = {n: pairs.column(n) for n in pairs.column_names}
    for name in pairs.column_names:
        other = S.REJECTED_PREFIX + name[len(S.CHOSEN_PREFIX):]
        if name.startswith(S.CHOSEN_PREFIX) and other in cols:
            a, b = pairs.column(name), pairs.column(other)
            cols[name], cols[other] = pc.if_else(mask, b, a), pc.if_else(mask, a, b)
    for name in (S.MARGIN, S.QUALITY):  # quality is the margin until raypref rank fills it
        cols[name] = pc.if_else(mask, pc.negate(pairs.column(name)), pairs.column(name))

    def turned(col):  # a label as P(chosen preferred), for the chosen side after the swap
        x = pairs.column(col)
        return pc.if_else(mask, pc.subtract(1.0, x), x)

    cols[S.LABEL] = turned(S.SOURCE_LABEL).cast(pairs.schema.field(S.LABEL).type)
    cols[S.SOURCE_LABEL] = turned(S.LABEL).cast(pa.float32())
    cols[S.LABEL_SOURCE] = pa.array(source_label_source, pa.string())
    return pa.table(cols, schema=pairs.schema)


def groups_to_pairs(batch: pa.Table, label_source: str, orient: str = "ai") -> pa.Table:
    """Scored and paired groups -> AI-labelled pairs with source_label: the imported label when the AI
    keeps the imported chosen image on the chosen side, 1 - it when the AI prefers the other one.
    ``orient`` 'source': turned back to the imported orientation (to_source_orientation)."""
    pairs = explode_pairs(batch, label_source)
    chosen = batch.column(S.PAIR_CHOSEN).to_pylist()
    src = batch.column(S.SOURCE_LABEL).to_pylist()
    source = [(s if c[0] == 0 else 1.0 - s) if s is not None else None for c, s in zip(chosen, src) if c]
    rows = [r for c, r in zip(chosen, batch.column(S.IMPORT_ROW).to_pylist()) if c]
    pairs = pairs.append_column(pa.field(S.SOURCE_LABEL, pa.float32()), pa.array(source, pa.float32()))
    if orient == "source":
        flipped = np.array([c[0] != 0 for c in chosen if c], bool)
        kept_sources = [x for c, x in zip(chosen, batch.column(S.SOURCE_LABEL_SOURCE).to_pylist()) if c]
        pairs = to_source_orientation(pairs, flipped, kept_sources)
    return pairs.append_column(pa.field(S.IMPORT_ROW, pa.int64()), pa.array(rows, pa.int64()))


def label_source(cfg: Config) -> str:
    p = cfg.build.pairs
    return "ai:" + (p.on or "+".join(f"{s.name}*{s.weight:g}" for s in cfg.build.scorers))


def _pairing_kwargs(cfg: Config) -> dict:
    p = cfg.build.pairs
    return {"scorers": _scorer_specs(cfg), "strategy": "best_vs_worst", "min_margin": 0.0,
            "tie_tolerance": p.tie_tolerance, "keep_ties": True, "on": p.on}


def _import_settings(cfg: Config) -> dict:
    r = cfg.relabel
    return {"relabel": {"input": str(Path(r.input).resolve()), "format": r.format,
                        "input_files": input_fingerprint(r.input, r.format, cfg.stage_dir("relabel"), cfg.output_dir,
                                                          **format_options(r)),
                        "limit": r.limit,
                        "shard_size": r.shard_size}}


# import_row numbers the pairs of the same input in the same order whatever the limit or the shard files, so
# labels made under another limit or shard_size are still those of the same rows
_LAYOUT = ("relabel.limit", "relabel.shard_size")
# fingerprints a record made before them lacks: compared from its next rerun on (settings_changed's added)
_ADDED_IMPORT = ("relabel.input_files",)
_ADDED = _ADDED_IMPORT + ("files",)


def _import_keys(d: Path) -> pa.Table | None:
    import pyarrow.dataset as pds

    if not d.is_dir():
        return None
    cols = [S.IMPORT_ROW, S.PROMPT_ID, S.CHOSEN_ID, S.REJECTED_ID]
    return pds.dataset(d, format="parquet").to_table(columns=cols).sort_by(S.IMPORT_ROW)


def import_pairs(cfg: Config, out: Path, settings: dict | None = None) -> tuple[int, int]:
    """Stream relabel.input into <out>/imported (raypref pairs, shard_size rows per file, each row
    numbered in import_row) and its bad rows into <out>/quarantine/import; returns (pairs imported,
    shard files). An import that finished before from the same input is kept; the same input with
    another limit or shard_size is imported again, keeping the pairs labelled (checked to be the
    same first rows). ``settings``: _import_settings(cfg), where the caller has them (the input's
    fingerprint stats every file it reads)."""
    import pyarrow.dataset as pds

    r = cfg.relabel
    done, mine = out / IMPORT_DONE, settings or _import_settings(cfg)
    if done.is_file() and settings_changed(done, mine, added=_ADDED_IMPORT) is None:
        record_added(done, mine, added=_ADDED_IMPORT)
        return pds.dataset(out / "imported", format="parquet").count_rows(), len(list((out / "imported").glob("part-*.parquet")))
    same = done.is_file() and settings_changed(done, mine, _LAYOUT, _ADDED_IMPORT) is None
    if same:  # an older record gains the input's files now: a rerun after a crash below compares them
        record_added(done, mine, _LAYOUT, _ADDED_IMPORT)
    before = _import_keys(out / "imported") if same else None
    q = Quarantine(f"import:{r.format}")
    if not same:  # labels of an earlier import are keyed on its rows
        done.unlink(missing_ok=True)
        for d in ("imported", "pairs", "_checkpoint"):
            shutil.rmtree(out / d, ignore_errors=True)
    # (the same input: the earlier import stays, and its record, until the new one replaces it whole)

    imported = (t.select(_IMPORTED_COLUMNS + [S.IMPORT_ROW])
                for t in first_pairs(r.input, r.format, q, r.limit, f"[relabel] import {r.format}", **format_options(r)))
    n = write_pairs(imported, out / "imported", "raypref", q, rows_per_file=r.shard_size)
    q.write(out / "quarantine" / "import" / "import.parquet")
    if before is not None:
        now = _import_keys(out / "imported")
        m = min(before.num_rows, now.num_rows)
        if not before.slice(0, m).equals(now.slice(0, m)):
            print(f"[relabel] {r.input} now reads as other pairs; every pair is labelled again", flush=True)
            for d in ("_checkpoint", "pairs"):
                shutil.rmtree(out / d, ignore_errors=True)
    record_settings(done, mine)
    return n, len(list((out / "imported").glob("part-*.parquet")))


def guard_relabel_resume(cfg: Config, out: Path, settings: dict | None = None) -> None:
    """A rerun resumes the pairs already labelled only if the input (its files too), the scorers (and the
    local files they load, as the build fingerprints them), the pairing and the orientation are the same;
    with others it would mix two labellings (pool sizes may change). A larger relabel.limit adds pairs; a
    smaller one than the import holds is refused, as it would keep pairs beyond it. Records them."""
    import pyarrow.dataset as pds

    mine = {"relabel": {**(settings or _import_settings(cfg))["relabel"], "orient": cfg.relabel.orient},
            "build": labelling_settings(cfg.build), "files": build_files(cfg.build, out, generators=False)}
    record = out / SETTINGS_FILE
    has_work = any((out / "pairs").glob("*.parquet")) or (out / "_checkpoint").exists()
    limit = cfg.relabel.limit
    imported = out / "imported"
    held = pds.dataset(imported, format="parquet").count_rows() if has_work and imported.is_dir() else 0
    if limit is not None and held > limit:
        raise ValueError(f"relabel.limit: {out} holds {held} imported pairs, labelled ones among them, more than "
                         f"relabel.limit={limit}; a rerun would keep pairs beyond it. Raise relabel.limit, use another "
                         f"output_dir, or delete {out} to label from scratch")
    refusal = (f"relabel: {out} holds pairs labelled with other settings ({{changed}}); a rerun would mix them. "
               f"Use another output_dir, or delete {out} to label from scratch")
    untracked = untracked_build_keys(cfg.build, generators=False)  # a judge's retries, say: not what decides a label
    guard_rerun(record, mine, has_work, refusal, _LAYOUT + untracked, _ADDED)


def run_relabel(cfg: Config) -> dict:
    """Run the relabel stage; returns its summary (also written to relabel/summary.json)."""
    import ray

    r, b = cfg.relabel, cfg.build
    if not r.input:
        raise ValueError("relabel.input: set the pairs dataset to re-label (a file or directory)")
    if not Path(r.input).exists():
        raise FileNotFoundError(f"relabel.input: no such file or directory: {r.input}")
    if r.image_root is not None and not Path(r.image_root).is_dir():
        raise FileNotFoundError(f"relabel.image_root: no such directory: {r.image_root}")
    if r.format not in FORMATS:
        raise ValueError(f"relabel.format: unknown format {r.format!r} (known: {sorted(FORMATS)})")
    if not b.scorers:
        raise ValueError("build.scorers: at least one scorer is needed to re-label pairs")
    for s in b.scorers:  # a missing model or a bad arg stops the run here, before the import
        scorer_kwargs(s)
    check_format(r.input, r.format, "relabel.input", "relabel.format")  # every Parquet footer (or the first JSON records), before Ray and any write
    from raypref.session import init_ray

    t0 = time.time()
    out = cfg.stage_dir("relabel")
    imports = _import_settings(cfg)  # once: the input's fingerprint stats every file a read opens
    # a judge's missing key stops it here, before Ray, and before the settings are recorded
    write_run_meta(cfg, out, "relabel", guard=lambda: guard_relabel_resume(cfg, out, imports))
    init_ray(cfg.ray)  # once its inputs are checked (a no-op where the caller's Ray runs)
    n_imported, n_files = import_pairs(cfg, out, imports)
    for d in (out / "quarantine" / "relabel", out / UNSCORED_DIR):  # unlabelled pairs are scored again
        shutil.rmtree(d, ignore_errors=True)
    source = label_source(cfg)
    if n_imported:
        with checkpointed(S.IMPORT_ROW, out / "_checkpoint", out / "pairs"):
            # one streaming execution: pairs -> 2-sample groups -> scorer pools -> labelled pairs; one
            # block per imported shard (as in the build), so each is written, and resumable, when scored
            ds = read_parquet(str((out / "imported").resolve())).repartition(n_files)
            ds = ds.map_batches(pairs_to_groups, batch_format="pyarrow", batch_size=None, num_cpus=b.task_cpus)
            ds = generate_and_score(ds, [], b.scorers)
            ds = ds.map_batches(score_pairs, fn_kwargs={"pairing": _pairing_kwargs(cfg), "label_source": source,
                                                        "orient": r.orient,
                                                        "unscored_dir": str((out / UNSCORED_DIR).resolve())},
                                batch_format="pyarrow", batch_size=None, num_cpus=b.task_cpus)
            ds.write_parquet(str((out / "pairs").resolve()), ray_remote_args={"num_cpus": b.task_cpus})
    quarantine_unscored(out)
    summary = summarize_relabel(out, cfg, n_imported, source, time.time() - t0)
    (out / "summary.json").write_text(json_text(summary))
    return summary


def score_pairs(batch: pa.Table, pairing: dict, label_source: str, orient: str = "ai",
                unscored_dir: str | None = None) -> pa.Table:
    """Scored 2-sample groups -> AI-labelled pairs (row-local), in ``orient``'s orientation. Why a pair
    got no label (unscored_notes) goes to a file of its own in ``unscored_dir``, for quarantine_unscored."""
    groups = finalize_groups(batch, **pairing)
    if unscored_dir is not None:
        notes = unscored_notes(groups, pairing)
        if notes:  # named by the block's first import_row: a retried task writes the same file again
            first = int(np.min(groups.column(S.IMPORT_ROW).to_numpy()))
            Q.write(notes, Path(unscored_dir) / f"rows-{first:012d}.parquet")
    return groups_to_pairs(groups, label_source, orient)


def _pair_row(prompt: str, a: str, b: str) -> str:
    """A pair's quarantine row whichever side the AI chose: the prompt and the ids in sorted order."""
    a, b = sorted((a, b))
    return f"imported pair {a} / {b} ({prompt!r})"


UNSCORED_DIR = "_unscored"  # in relabel/: score_pairs' notes on the pairs left unlabelled, read by quarantine_unscored
_UNSCORED = "unscored: a scorer gave NaN for one of the two images, so the AI cannot label the pair"


def unscored_notes(groups: pa.Table, pairing: dict) -> list[dict]:
    """Pure: a quarantine note for each finalized 2-sample group that gave no pair, naming the score
    columns that were NaN (or missing) and the image's side in the import (sample 0 the imported chosen
    image), as finalize_groups judges them: the pairing column, or every scorer's in the aggregate."""
    on = pairing.get("on")
    needed = [on] if on else [s["column"] for s in pairing["scorers"]]
    chosen = groups.column(S.PAIR_CHOSEN).to_pylist()
    ids = groups.column(S.SAMPLE_ID).to_pylist()
    prompts = groups.column(S.PROMPT).to_pylist()
    lists = {c: groups.column(c).to_pylist() if c in groups.column_names else [None] * groups.num_rows for c in needed}
    notes = []
    for r in np.flatnonzero([not c for c in chosen]):
        sides = []
        for i, side in enumerate(("chosen", "rejected")):
            bad = [c for c in needed if lists[c][r] is None or len(lists[c][r]) != 2 or lists[c][r][i] is None
                   or np.isnan(lists[c][r][i])]
            if bad:
                sides.append(f"{', '.join(bad)} NaN for the imported {side} image {ids[r][i]}")
        why = "; ".join(sides) or "the aggregate score NaN"  # a weighted sum can be NaN with no column NaN (inf - inf)
        notes.append(Q.note("relabel", _pair_row(prompts[r], *ids[r]), f"unscored: {why}, so the AI cannot label the pair"))
    return notes


def quarantine_unscored(out: Path) -> int:
    """Imported pairs with no labelled pair (a scorer gave NaN for an image) -> <out>/quarantine/relabel,
    each with score_pairs' note on which score and image were NaN (<out>/_unscored). Compares the id
    columns of imported and labelled pairs on the driver, as multisets (a dataset may hold the same
    pair twice)."""
    import pyarrow.dataset as pds

    cols = [S.PROMPT, S.CHOSEN_ID, S.REJECTED_ID]

    def keys(d: Path) -> Counter:
        t = pds.dataset(d, format="parquet").to_table(columns=cols).to_pydict()
        return Counter(_pair_row(*x) for x in zip(t[S.PROMPT], t[S.CHOSEN_ID], t[S.REJECTED_ID]))

    left = keys(out / "imported")
    if (out / "pairs").exists():  # Ray Data writes no files for an empty table
        left -= keys(out / "pairs")
    why: dict[str, list[str]] = {}
    if any((out / UNSCORED_DIR).glob("*.parquet")):
        t = pds.dataset(out / UNSCORED_DIR, format="parquet").to_table()
        for row, reason in zip(t.column(S.ROW).to_pylist(), t.column(S.REASON).to_pylist()):
            why.setdefault(row, []).append(reason)
    rows = []
    for row, k in sorted(left.items()):
        reasons = why.get(row, [])  # a run scores every unlabelled pair again, so its note is there
        rows += [Q.note("relabel", row, reasons[j] if j < len(reasons) else _UNSCORED) for j in range(k)]
    n = Q.write(rows, out / "quarantine" / "relabel" / "relabel.parquet")
    shutil.rmtree(out / UNSCORED_DIR, ignore_errors=True)  # its notes are in the quarantine now
    return n


def agreement(labels, source_labels) -> dict:
    """How the AI labels relate to the imported ones, over pairs both label strictly: the fraction
    where the AI keeps the imported chosen image (source_label 1.0), and the count it flips (0.0)."""
    lab = np.asarray(labels, np.float64)
    src = np.asarray([np.nan if s is None else s for s in source_labels], np.float64)
    both = (lab == 1.0) & np.isin(src, (0.0, 1.0))
    agree = int(((src == 1.0) & both).sum())
    return {"both_strict": int(both.sum()), "agree": agree, "flipped": int(both.sum()) - agree,
            "agreement": round(float(agree / both.sum()), 4) if both.any() else None}


def summarize_relabel(out: Path, cfg: Config, n_imported: int, source: str, seconds: float) -> dict:
    import pyarrow.dataset as pds

    labels, src = [], []
    if (out / "pairs").exists():  # Ray Data writes no files for an empty table
        t = pds.dataset(out / "pairs", format="parquet").to_table(columns=[S.LABEL, S.SOURCE_LABEL])
        labels, src = t.column(S.LABEL).to_pylist(), t.column(S.SOURCE_LABEL).to_pylist()
    # either way label is 1.0 or 0.5 and source_label the other labeller's view of the same chosen image
    ai, imported = (labels, src) if cfg.relabel.orient == "ai" else (src, labels)
    counts = Q.counts(out / "quarantine")
    return {
        "input": cfg.relabel.input,
        "format": cfg.relabel.format,
        "label_source": source,
        "orient": cfg.relabel.orient,
        "pairs_imported": n_imported,
        "pairs": len(labels),
        "ai_strict": sum(1 for x in ai if x in (0.0, 1.0)),
        "ai_ties": sum(1 for x in ai if x == S.TIE),
        "source_ties": sum(1 for x in imported if x == S.TIE),
        **agreement(labels, src),
        "quarantined": counts,
        # the import's rows set aside apart from the imported pairs the scorers left unlabelled
        "import_quarantined": sum(v for k, v in counts.items() if not k.startswith("relabel:")),
        "unscored": sum(v for k, v in counts.items() if k.startswith("relabel:")),
        "seconds": round(seconds, 1),
    }


def summary_line(s: dict, where: str) -> str:
    agree = "n/a" if s["agreement"] is None else f"{s['agreement']:.3f}"
    how = "labelled by" if s.get("orient", "ai") == "ai" else "keeping the imported labels, scored by"
    unscored = f" ({s['unscored']} unscored: a scorer gave NaN, quarantined)" if s["unscored"] else ""
    return (f"[relabel] {s['pairs_imported']} {s['format']} pairs imported ({s['import_quarantined']} rows quarantined "
            f"by the import) -> {s['pairs']} pairs{unscored} {how} {s['label_source']}: {s['ai_strict']} strict, "
            f"{s['ai_ties']} ties; agreement with the imported labels {agree} on {s['both_strict']} pairs "
            f"({s['flipped']} flipped) in {s['seconds']}s -> {where}")


def relabel(cfg: Config) -> dict:
    """The stage as the CLI and the job run it: run (it starts or joins Ray), print the summary line."""
    s = run_relabel(cfg)  # starts Ray once its inputs are checked
    print(summary_line(s, str(cfg.stage_dir("relabel"))), flush=True)
    return s
