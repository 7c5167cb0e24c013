"""Preference-prediction accuracy: how often does each scorer rank a pair's preferred image first?

Any pairs dataset raypref reads (raypref.formats: raypref Parquet, Pick-a-Pic, HPD v2,
ImageRewardDB, AGFSync) and any scorers, given as build scorer configs (registry name or
'module:Class', model, args, pool): CLIP score, aesthetic, PickScore, HPSv2, ImageReward, a
trained raypref reward model ('reward_model'), a judge. One table, side by side.

Tie rule (``preference_accuracy``):
- a pair labelled 0.5 (a human or judge tie) has no right answer: it is excluded and counted;
- a scorer tie (|s_chosen - s_rejected| <= accuracy.tie_tolerance) counts as half correct, the
  expected accuracy of breaking the tie by a coin flip, so a scorer that cannot tell the images
  apart scores 50%, not 0% or 100%;
- a pair the scorer gave NaN for either image is skipped and counted ('unscored').

Scoring runs through the build's scorer actor pools (Ray Data, one pool per scorer, each with its
own resources, batch size and concurrency from its config): each pair becomes a two-image group
row, so every scorer is called exactly as in a build, GPUs and fractional GPUs included, and a
large dataset streams instead of being scored in one process.
"""

from __future__ import annotations

import csv
import functools
import json
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raypref import schema as S
from raypref.config import Config, ScorerConf, format_options, record_added, record_settings, renew_if_changed, settings_changed, write_run_meta
from raypref.metrics import design_effect, json_text, wilson_interval
from raypref.parquet_read import read_parquet
from raypref.resume import (actor_settings, checkpointed, is_torn, set_aside_torn, uncommitted, untracked_keys,
                            write_atomic)

STAGE = "accuracy"
STAGED_FILE = "staged_settings.json"  # in accuracy/: the input, format and limit the staged pairs came from
STAGED_COUNTS = "staged_counts.json"  # in accuracy/: pairs staged and quarantined, the limit, whether staged/ is whole
SETTINGS_FILE = "settings.json"  # in accuracy/scorers/<name>/: what its stored scores were made with
TIE_RULE = ("pairs labelled 0.5 (ties) are excluded and counted; a scorer tie (|chosen - rejected| <= {tol:g}) "
            "counts as half correct; a pair with a NaN score is skipped and counted as unscored")
_COLUMNS = ("scorer", "output", "pairs", "agree", "scorer_ties", "disagree", "accuracy", "ci95_low", "ci95_high", "design_effect",
            "unscored")


def preference_accuracy(chosen: Sequence[float], rejected: Sequence[float], labels: Sequence[float],
                        tie_tolerance: float = 0.0, clusters=None) -> dict:
    """Accuracy of one scorer on pairs: label > 0.5 means the chosen image is preferred, < 0.5
    the rejected one, 0.5 a tie (excluded). Returns counts, accuracy = (agree + ties / 2) / pairs
    and its Wilson 95% interval (ties as half a success, as metrics.wilson_interval takes them),
    with the design effect of ``clusters`` (a prompt id per pair: a prompt's pairs share its images,
    so they are not independent trials)."""
    c = np.asarray(chosen, dtype=np.float64)
    r = np.asarray(rejected, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if not (c.shape == r.shape == y.shape):
        raise ValueError(f"preference_accuracy: {c.shape} chosen, {r.shape} rejected, {y.shape} labels")
    tie_label = y == S.TIE
    unlabelled = np.isnan(y)
    strict = ~tie_label & ~unlabelled
    unscored = strict & (np.isnan(c) | np.isnan(r))
    use = strict & ~unscored
    d = np.where(y > 0.5, c - r, r - c)[use]  # > 0: the scorer prefers the preferred image
    agree = int((d > tie_tolerance).sum())
    disagree = int((d < -tie_tolerance).sum())
    ties = int(d.size - agree - disagree)
    n = int(d.size)
    outcome = np.where(d > tie_tolerance, 1.0, np.where(d < -tie_tolerance, 0.0, 0.5))
    deff = design_effect(outcome, None if clusters is None else np.asarray(clusters, dtype=object)[use])
    lo, hi = wilson_interval(agree + 0.5 * ties, n, deff=deff)
    return {
        "pairs": n,
        "agree": agree,
        "scorer_ties": ties,
        "disagree": disagree,
        "accuracy": (agree + 0.5 * ties) / n if n else float("nan"),
        "ci95_low": lo,
        "ci95_high": hi,
        "unscored": int(unscored.sum()),
        "design_effect": deff,
        "tie_labelled": int(tie_label.sum()),
        "unlabelled": int(unlabelled.sum()),
    }


def stage_pairs(path: str, fmt: str, limit: int | None, staged: Path, quarantine_file: Path,
                rows_per_file: int = 256, **opts) -> tuple[int, int]:
    """Stream the first ``limit`` pairs of a dataset in any supported format (reader options ``opts``,
    e.g. image_root) into ``staged`` (raypref pairs Parquet, each pair numbered in import_row,
    ``rows_per_file`` pairs a file), so no more than a batch of images is ever in the driver's memory.
    Returns (pairs staged, rows the reader quarantined, written to ``quarantine_file``)."""
    from raypref.formats import Quarantine, first_pairs, write_pairs

    q = Quarantine(f"{STAGE}:{fmt}")
    n = write_pairs(first_pairs(path, fmt, q, limit, f"[accuracy] read {fmt}", **opts), staged, "raypref", q,
                    rows_per_file=rows_per_file)
    q.write(quarantine_file)  # with none, a stale file from an earlier run goes
    if n == 0:
        raise ValueError(f"accuracy.pairs: {path} (format {fmt!r}) has no usable pairs ({len(q)} quarantined)")
    return n, len(q)


_KEYS = [S.IMPORT_ROW, S.PROMPT_ID, S.CHOSEN_ID, S.REJECTED_ID, S.LABEL]  # a staged pair without its images


def _write_json(path: Path, value: dict) -> None:
    write_atomic(path, json.dumps(value) + "\n")


KEYS_FILE = "pairs_keys.parquet"


InputSettings = Callable[[], tuple[dict, dict]]  # _input_settings of a run, worked out once (run_accuracy)


def _input_settings(cfg: Config, out: Path) -> tuple[dict, dict]:
    """(this input's settings, settings_changed's ``added`` for a record made before they held every file
    the format reads). Stat only, no pair is read, but every file is stat'ed (an HPD v2 image folder's too)."""
    a = cfg.accuracy
    from raypref.formats import input_fingerprints

    # the files: every one the format reads (an HPD v2 JSON's images too), so one added or fixed is seen;
    # then: a record from before accuracy.files counted a JSON format's images holds the fingerprint of the
    # input path alone: while that still matches, the input is the same (its images were not counted
    # then, so cannot be compared now); the record then gains every file the format reads
    files, then = input_fingerprints(a.pairs, a.format, out, cfg.output_dir, **format_options(a))
    mine = {"accuracy": {"pairs": str(Path(a.pairs).resolve()), "format": a.format, "files": files}}
    return mine, {"accuracy.files": then} if then is not None else {}


def _staged_input(cfg: Config, out: Path, seen: InputSettings | None) -> tuple[dict, dict, str | None, bool]:
    """(this input's settings, settings_changed's ``added`` for them, how they differ from those the pairs
    in <out> were staged from, whether the staged keys are this input's); it writes nothing. ``seen``: the
    input's settings if already worked out."""
    mine, added = seen() if seen is not None else _input_settings(cfg, out)
    changed = settings_changed(out / STAGED_FILE, mine, added=added)
    same = all((out / f).is_file() for f in (STAGED_FILE, KEYS_FILE, STAGED_COUNTS)) and changed is None
    return mine, added, changed, same


def stored_in_full(cfg: Config, out: Path, seen: InputSettings | None = None) -> Callable[[ScorerConf], bool]:
    """A test of a scorer: does <out> hold its scores of every pair this run reads (the same input, limit and
    scorer settings as the run that scored them)? Read without Ray, so that a judge whose scores are all
    stored needs no API key on a rerun; the staged keys are read once, at the first question. It changes
    nothing: a run it lets stop (the key missing) leaves <out> as it was, scores made with other settings
    included (stored_count removes those once Ray has started). ``seen``: see run_accuracy."""
    keys = []

    def stored(s: ScorerConf) -> bool:
        if not keys:
            *_, same = _staged_input(cfg, out, seen)
            counts = json.loads((out / STAGED_COUNTS).read_text()) if same else {}
            keys.append(pq.read_table(out / KEYS_FILE) if same and counts.get("limit") == cfg.accuracy.limit else None)
        return keys[0] is not None and stored_as_is(s, out, keys[0]) == keys[0].num_rows

    return stored


def staged_pairs(cfg: Config, out: Path, images: bool, seen: InputSettings | None = None) -> tuple[pa.Table, dict]:
    """The pairs' keys (<out>/pairs_keys.parquet: import_row, ids, label) and counts (pairs,
    quarantined, limit, staged). With ``images`` (a scorer has pairs left to score) the pairs are
    staged with their images in <out>/staged too. Stored scores are keyed on import_row: another
    input (path, format or files) voids them all; the same input read again with another limit
    keeps them, the first rows being the same pairs (checked). ``seen``: see run_accuracy."""
    a = cfg.accuracy
    record, keys_file, counts_file = out / STAGED_FILE, out / KEYS_FILE, out / STAGED_COUNTS
    mine, added, changed, same = _staged_input(cfg, out, seen)
    if changed is None:  # a record made before every file the format reads was counted gains them
        record_added(record, mine, added=added)
    counts = json.loads(counts_file.read_text()) if same else {}
    if same and counts.get("limit") == a.limit and (counts.get("staged") or not images):
        return pq.read_table(keys_file), counts
    if not same:  # another input: no stored score is of its pairs
        if changed and (out / "scorers").is_dir() and any((out / "scorers").iterdir()):
            print(f"[accuracy] {a.pairs}: the input changed ({changed}); every scorer is scored again", flush=True)
        shutil.rmtree(out / "scorers", ignore_errors=True)
    _write_json(counts_file, {**counts, "staged": False})  # until the staged copy is whole again
    shutil.rmtree(out / "staged", ignore_errors=True)
    _, quarantined = stage_pairs(a.pairs, a.format, a.limit, out / "staged", out / "quarantine.parquet", a.shard_size,
                                 **format_options(a))
    keys = pq.read_table(out / "staged", columns=_KEYS).sort_by(S.IMPORT_ROW)
    if same:
        old = pq.read_table(keys_file)
        m = min(old.num_rows, keys.num_rows)
        cols = [S.IMPORT_ROW, S.PROMPT_ID, S.CHOSEN_ID, S.REJECTED_ID]
        if not old.select(cols).slice(0, m).equals(keys.select(cols).slice(0, m)):
            print(f"[accuracy] {a.pairs} now reads as other pairs; every scorer is scored again", flush=True)
            shutil.rmtree(out / "scorers", ignore_errors=True)
    tmp = keys_file.with_name(keys_file.name + ".tmp")  # whole or not at all: the next run reads it back
    pq.write_table(keys, tmp)
    tmp.replace(keys_file)
    counts = {"pairs": keys.num_rows, "quarantined": quarantined, "limit": a.limit, "staged": True}
    _write_json(counts_file, counts)
    record_settings(record, mine)
    return keys, counts


def pairs_to_groups(pairs: pa.Table) -> pa.Table:
    """Each pair as a build group row of two images, [chosen, rejected], so scorers run unchanged."""
    n = pairs.num_rows
    order = pa.array(np.stack([np.arange(n), np.arange(n) + n], axis=1).ravel())  # c0, r0, c1, r1, ...
    offsets = pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32))

    def interleave(chosen: str, rejected: str) -> pa.ListArray:
        both = pa.concat_arrays([pairs.column(chosen).combine_chunks(), pairs.column(rejected).combine_chunks()])
        return pa.ListArray.from_arrays(offsets, both.take(order))

    return pa.table({
        S.IMPORT_ROW: pairs.column(S.IMPORT_ROW),
        S.PROMPT_ID: pairs.column(S.PROMPT_ID),
        S.PROMPT: pairs.column(S.PROMPT),
        S.CHOSEN_ID: pairs.column(S.CHOSEN_ID),
        S.REJECTED_ID: pairs.column(S.REJECTED_ID),
        S.LABEL: pairs.column(S.LABEL),
        S.SAMPLE_ID: interleave(S.CHOSEN_ID, S.REJECTED_ID),
        S.IMAGE: interleave(S.CHOSEN_IMAGE, S.REJECTED_IMAGE),
    })


def groups_to_sides(batch: pa.Table) -> pa.Table:
    """Scored two-image groups -> one row per pair with chosen_/rejected_ value of every score column."""
    cols = {c: batch.column(c) for c in (S.IMPORT_ROW, S.PROMPT_ID, S.CHOSEN_ID, S.REJECTED_ID, S.LABEL)}
    for c in batch.column_names:
        if not S.is_score_column(c):
            continue
        values = batch.column(c).combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        if values.size != 2 * batch.num_rows:
            raise ValueError(f"accuracy: scorer column {c} has {values.size} values for {batch.num_rows} pairs")
        cols[S.chosen_column(c)] = pa.array(values[0::2])
        cols[S.rejected_column(c)] = pa.array(values[1::2])
    return pa.table(cols)


def _scorer_settings(s: ScorerConf) -> tuple[dict, tuple[str, ...]]:
    """What a scorer's stored scores must have been made with, and the keys not compared: a record from
    before an arg was untracked still holds it."""
    return actor_settings(s), untracked_keys(s, "config.args")


def _stored(keys: pa.Table, d: Path, whole: bool) -> int:
    """How many of the staged pairs the Parquet files under <d>/scores hold, each once (a block written
    again after a crash holds its pairs twice), less the files whose checkpoint is still pending (the
    rerun deletes and scores them again). ``whole``: a file a crash cut short was set aside; else such a
    file is skipped here, as its rows were not checkpointed."""
    scores = d / "scores"
    pending = uncommitted(scores, d / "_checkpoint")
    files = sorted(f for f in scores.rglob("*.parquet") if f not in pending) if scores.is_dir() else []
    files = files if whole else [f for f in files if not is_torn(f)]
    rows = pq.read_table(files, columns=[S.IMPORT_ROW]).column(S.IMPORT_ROW).to_numpy() if files else []
    return int(np.isin(keys.column(S.IMPORT_ROW).to_numpy(), rows).sum())


def stored_as_is(s: ScorerConf, out: Path, keys: pa.Table) -> int:
    """What stored_count would find, changing nothing: none where this scorer's settings differ from
    those recorded (stored_count would remove its scores)."""
    d = out / "scorers" / s.name
    settings, ignore = _scorer_settings(s)
    if settings_changed(d / SETTINGS_FILE, settings, ignore):
        return 0
    return _stored(keys, d, whole=False)


def stored_count(s: ScorerConf, out: Path, keys: pa.Table) -> int:
    """How many of the staged pairs <out>/scorers/<name> holds this scorer's scores of (all of them: it is
    done); scores made with other settings are removed first (and this scorer's settings recorded), and a
    file a crash cut short is set aside (as checkpointed() would, which comes only after this read)."""
    d = out / "scorers" / s.name
    settings, ignore = _scorer_settings(s)
    renew_if_changed(d / SETTINGS_FILE, settings, f"[accuracy] {s.name}", ignore)
    set_aside_torn(d / "scores")
    return _stored(keys, d, whole=True)


def scoring_line(name: str, pairs: int, stored: int) -> str:
    """What a scorer's run scores: the staged ``pairs`` less the ``stored`` ones (score_pairs skips those)."""
    if not stored:
        return f"[accuracy] {name}: scoring {pairs} pairs"
    return f"[accuracy] {name}: scoring {pairs - stored} of {pairs} pairs ({stored} stored)"


def score_pairs(out: Path, s: ScorerConf, task_cpus: float) -> None:
    """Score both images of every staged pair with one scorer (a Ray Data actor pool), file by file,
    into <out>/scorers/<name>/scores with checkpointing on import_row: a rerun scores only the pairs
    not yet written. Only scores are written; the images stay in the staged copy."""
    from raypref.build import generate_and_score

    d = out / "scorers" / s.name  # its settings recorded by stored_count
    files = len(list((out / "staged").glob("part-*.parquet")))
    with checkpointed(S.IMPORT_ROW, d / "_checkpoint", d / "scores"):
        ds = read_parquet(str((out / "staged").resolve())).repartition(files)  # a block a file, as in the build
        ds = ds.map_batches(pairs_to_groups, batch_format="pyarrow", batch_size=None, num_cpus=task_cpus)
        ds = generate_and_score(ds, [], [s])
        ds = ds.map_batches(groups_to_sides, batch_format="pyarrow", batch_size=None, num_cpus=task_cpus)
        ds.write_parquet(str((d / "scores").resolve()), ray_remote_args={"num_cpus": task_cpus})


def merged_scores(out: Path, keys: pa.Table, scorers: list[ScorerConf]) -> pa.Table:
    """The staged pairs' keys with every scorer's chosen_/rejected_ columns, a row per pair."""
    table = keys
    rows = keys.column(S.IMPORT_ROW).to_numpy()
    for s in scorers:
        d = out / "scorers" / s.name
        t = pq.read_table(d / "scores")
        t = t.filter(pa.array(np.isin(t.column(S.IMPORT_ROW).to_numpy(), rows)))  # a smaller limit than before
        got, first = np.unique(t.column(S.IMPORT_ROW).to_numpy(), return_index=True)  # a block rewritten after a crash
        if not np.array_equal(got, rows):
            raise RuntimeError(f"accuracy: {d} holds scores of {len(got)} of the {len(rows)} staged pairs, though its "
                               f"checkpoint says they were written; delete {d} and rerun to score them again")
        t = t.take(pa.array(first))
        for c in t.column_names:
            if c not in _KEYS:
                table = table.append_column(c, t.column(c))
    return table.sort_by([(S.PROMPT_ID, "ascending"), (S.CHOSEN_ID, "ascending"), (S.REJECTED_ID, "ascending")])


def owner(column: str, names: Sequence[str]) -> str | None:
    """The scorer a score column belongs to: the longest scorer name it is score_<name>[_aspect] of."""
    hits = [n for n in names if column == S.score_column(n) or column.startswith(S.score_column(n) + "_")]
    return max(hits, key=len) if hits else None


def accuracy_rows(scores: pa.Table, names: Sequence[str], aspects: bool, tie_tolerance: float) -> list[dict]:
    """One row per scorer (its main score), then, with ``aspects``, one per aspect output."""
    labels = scores.column(S.LABEL).to_numpy(zero_copy_only=False)
    # a prompt's pairs share its images: its pairs are one cluster in the intervals
    clusters = scores.column(S.PROMPT_ID).to_numpy(zero_copy_only=False) if S.PROMPT_ID in scores.column_names else None
    rows = []
    for name in names:
        main = S.score_column(name)
        cols = [main] + sorted(c for c in S.pair_score_columns(scores.column_names)
                               if aspects and c != main and owner(c, names) == name)
        for c in cols:
            if S.chosen_column(c) not in scores.column_names:
                raise ValueError(f"accuracy: scorer {name!r} wrote no {c!r} column")
            acc = preference_accuracy(scores.column(S.chosen_column(c)).to_numpy(zero_copy_only=False),
                                      scores.column(S.rejected_column(c)).to_numpy(zero_copy_only=False), labels, tie_tolerance,
                                      clusters)
            rows.append({"scorer": name, "output": "overall" if c == main else c[len(main) + 1:], **acc})
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"Preference accuracy on {meta['pairs_path']} (format {meta['format']}): {meta['strict_pairs']} strict pairs; "
        f"{meta['tie_labelled']} tie-labelled pairs excluded; {meta['quarantined']} rows quarantined by the reader.",
        "",
        "Tie rule: " + meta["tie_rule"] + ".",
        "",
        "95% CI: Wilson, with n divided by the design effect of pairs clustered by prompt (its pairs share images).",
        "",
        "| scorer | output | pairs | agree | scorer ties | disagree | accuracy | 95% CI | design effect | unscored |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['scorer']} | {r['output']} | {r['pairs']} | {r['agree']} | {r['scorer_ties']} | {r['disagree']} "
                     f"| {100 * r['accuracy']:.1f}% | [{100 * r['ci95_low']:.1f}, {100 * r['ci95_high']:.1f}] "
                     f"| {r['design_effect']:.2f} | {r['unscored']} |")
    return "\n".join(lines) + "\n"


def run_accuracy(cfg: Config) -> dict:
    a = cfg.accuracy
    if not a.pairs:
        raise ValueError("accuracy.pairs: no pairs dataset given")
    if not a.scorers:
        raise ValueError("accuracy.scorers: at least one scorer is needed")
    names = [s.name for s in a.scorers]
    if len(set(names)) != len(names):
        raise ValueError(f"accuracy.scorers: names must be unique, got {names}")
    from raypref.build import scorer_kwargs
    from raypref.formats import check_format

    for s in a.scorers:  # a missing model or a bad arg stops the run here, before the pairs are read
        scorer_kwargs(s)
    if "://" not in a.pairs and not Path(a.pairs).exists():
        raise FileNotFoundError(f"accuracy.pairs: no such file or directory: {a.pairs}")
    if a.image_root is not None and not Path(a.image_root).is_dir():
        raise FileNotFoundError(f"accuracy.image_root: no such directory: {a.image_root}")
    if "://" not in a.pairs:
        check_format(a.pairs, a.format, "accuracy.pairs", "accuracy.format")
    from raypref.session import init_ray

    out = cfg.stage_dir(STAGE)
    # the input's files are stat'ed once a run, by the check before Ray where a judge asks it, else by
    # staged_pairs: the stage writes none of them (input_fingerprints leaves its own output out)
    seen = functools.cache(functools.partial(_input_settings, cfg, out))
    # a judge's missing key stops it here, before Ray, unless its scores are all stored: none is asked for
    write_run_meta(cfg, out, STAGE, stored_in_full(cfg, out, seen))
    init_ray(cfg.ray)  # once its inputs are checked (a no-op where the caller's Ray runs)
    t0 = time.time()
    keys, staged = staged_pairs(cfg, out, images=False, seen=seen)
    stored = {s.name: stored_count(s, out, keys) for s in a.scorers}
    if any(n < keys.num_rows for n in stored.values()) and not staged["staged"]:  # a finished run removed the staged images
        keys, staged = staged_pairs(cfg, out, images=True, seen=seen)
        stored = {s.name: stored_count(s, out, keys) for s in a.scorers}
    todo = [s for s in a.scorers if stored[s.name] < keys.num_rows]
    if len(todo) < len(a.scorers):
        print(f"[accuracy] {len(a.scorers) - len(todo)} of {len(a.scorers)} scorers' scores kept from an earlier run", flush=True)
    for s in todo:
        print(scoring_line(s.name, keys.num_rows, stored[s.name]), flush=True)
        score_pairs(out, s, cfg.build.task_cpus)
    scores = merged_scores(out, keys, a.scorers)
    pq.write_table(scores, out / "scores.parquet")
    _write_json(out / STAGED_COUNTS, {**staged, "staged": False})
    shutil.rmtree(out / "staged", ignore_errors=True)  # a copy of the pairs' images, there only to stream them
    rows = accuracy_rows(scores, names, a.aspects, a.tie_tolerance)
    labels = scores.column(S.LABEL).to_numpy(zero_copy_only=False)
    meta = {
        "pairs_path": a.pairs,
        "format": a.format,
        "pairs_read": staged["pairs"],
        "strict_pairs": int(((labels != S.TIE) & ~np.isnan(labels)).sum()),
        "tie_labelled": int((labels == S.TIE).sum()),
        "unlabelled": int(np.isnan(labels).sum()),
        "quarantined": staged["quarantined"],
        "tie_rule": TIE_RULE.format(tol=a.tie_tolerance),
    }
    table_md = markdown(rows, meta)
    (out / "accuracy.md").write_text(table_md)
    with open(out / "accuracy.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(_COLUMNS))
        w.writeheader()
        w.writerows([{k: r[k] for k in _COLUMNS} for r in rows])
    summary = {**meta, "rows": rows, "seconds": round(time.time() - t0, 1)}
    (out / "accuracy.json").write_text(json_text(summary))
    return summary
