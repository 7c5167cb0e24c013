"""The build pipeline (Ray Data, streaming, no shuffle).

prompts -> generator pool(s) -> one actor pool per scorer -> aggregate + pair (row-local) ->
groups (resumable) -> samples and pairs tables.

A row is one prompt with its samples as list columns, so pairing never needs a shuffle. The
groups table is written with Ray Data checkpointing keyed on prompt_id: a rerun after a crash
skips prompts already written and never duplicates one. samples and pairs are then derived from
groups by streaming row-local maps, without re-running a model.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from raypref import aggregate as A
from raypref import pairs as P
from raypref import quarantine as Q
from raypref import schema as S
from raypref.dataset_report import write_report
from raypref.config import (
    BuildConf, Config, GeneratorConf, PoolConf, ScorerConf, guard_rerun, write_run_meta,
)
from raypref.metrics import json_text
from raypref.models import absolute_if_file, resolve_model, resolve_pretrained
from raypref.parquet_read import read_parquet
from raypref.paths import resolve_path
from raypref.prompts import read_prompts, write_prompt_shards
from raypref.registry import constructor_kwargs, resolve
from raypref.resume import checkpointed, local_files, put_back, swap_in, untracked_keys


def pool_args(pool: PoolConf) -> dict:
    """Ray Data map_batches arguments for one actor pool."""
    from ray.data import ActorPoolStrategy

    return {
        "compute": ActorPoolStrategy(size=pool.concurrency),
        "batch_size": pool.batch_size,
        "num_cpus": pool.num_cpus,
        "num_gpus": pool.num_gpus,
    }


_POOL_KEYS = {"num_gpus": "pool.num_gpus"}  # the build's settings an actor takes that are not its conf's own keys


def generator_kwargs(g: GeneratorConf) -> dict:
    """Constructor arguments for a generator actor, model references resolved on the driver."""
    kw = g.model_dump(exclude={"pool", "cls", "args"})
    # a generator class that loads no model says so (loads_model = False) and may leave it empty
    cls = resolve(g.cls, "generator", f"generator {g.name!r} cls")
    needs = g.model or getattr(cls, "loads_model", True)
    kw["model"] = resolve_model(g.model, what=f"generator {g.name!r} model") if needs else ""
    for part in ("lora", "unet"):
        if kw.get(part):
            kw[part] = resolve_model(kw[part], what=f"generator {g.name!r} {part}")
    kw["num_gpus"] = g.pool.num_gpus
    return constructor_kwargs(cls, kw, g.args, f"generator {g.name!r}", keys=_POOL_KEYS)


def scorer_kwargs(s: ScorerConf) -> dict:
    """Constructor arguments for a scorer actor; a scorer with no model (jpeg) gets none. A class whose model
    is no model reference (haar_faces: a cascade file) checks it in its ``check_model(where, model)`` classmethod,
    which returns it as the actor takes it."""
    cls = resolve(s.cls, "scorer", f"scorer {s.name!r} cls")
    check_model = getattr(cls, "check_model", None)
    if check_model is not None:
        model = check_model(f"scorer {s.name!r}", s.model)
    else:
        model = resolve_model(s.model, what=f"scorer {s.name!r} model") if s.model else ""
    what = f"scorer {s.name!r} pretrained"
    # only a class that passes it to open_clip reads a tag (HPSv2's is its checkpoint file, or unread)
    pretrained = (resolve_pretrained(model, s.pretrained, what) if getattr(cls, "READS_OPEN_CLIP_TAG", False)
                  else absolute_if_file(s.pretrained))
    check = getattr(cls, "check_pretrained", None)  # a class that reads it otherwise checks it here, before Ray
    if check is not None:
        check(f"scorer {s.name!r}", s.pretrained, s.args)
    kw = {"name": s.name, "model": model, "pretrained": pretrained, "num_gpus": s.pool.num_gpus}
    return constructor_kwargs(cls, kw, s.args, f"scorer {s.name!r}", keys=_POOL_KEYS)


def finalize_groups(batch: pa.Table, scorers: list[dict], strategy: str, min_margin: float, k: int = 1,
                    tie_tolerance: float = 0.0, keep_ties: bool = False, generator_rule: str = "any",
                    on: str | None = None) -> pa.Table:
    """Row-local: aggregate each group's scores and choose its pairs (index lists). ``on`` pairs on one
    stored score column instead of the aggregate. Samples without a usable score are noted for the
    quarantine table with the columns at fault; a group row missing a score list is noted whole."""
    pair_fn = P.STRATEGIES[strategy]
    opts = {"min_margin": min_margin, "tie_tolerance": tie_tolerance, "keep_ties": keep_ties, "generator_rule": generator_rule}
    if strategy == "top_k_vs_bottom_k":
        opts["k"] = k
    needed = [s["column"] for s in scorers] + ([on] if on and on not in [s["column"] for s in scorers] else [])
    if on and on not in batch.column_names:
        raise ValueError(f"build.pairs.on: no score column {on!r} (score columns: {[c for c in batch.column_names if S.is_score_column(c)]})")
    ids = batch.column(S.SAMPLE_ID).to_pylist()
    pids = batch.column(S.PROMPT_ID).to_pylist()
    gens = batch.column(S.GENERATOR).to_pylist()
    # the groups keep a short list as stored (a re-pairing notes it again); samples and pairs fill it
    short = fill_short_lists(batch, sample_counts(batch))[1]
    lists = {c: batch.column(c).to_pylist() for c in needed}
    totals, chosen, rejected, margins, labels, notes = [], [], [], [], [], []
    for r in range(batch.num_rows):
        n = len(ids[r])
        missing = [c for c in needed if c in short[r]]
        row_notes = [Q.note("pair", pids[r], f"missing score: {c}") for c in short[r] if S.is_score_column(c)]
        raw = {c: np.full(n, np.nan) if c in missing else np.asarray(lists[c][r], dtype=np.float64) for c in needed}
        cols = [A.normalize(raw[s["column"]], s["normalize"], s["value_range"]) for s in scorers]
        total = A.weighted_sum(cols, [s["weight"] for s in scorers])
        key = raw[on] if on else total
        if not missing:
            for i in np.flatnonzero(np.isnan(key)):
                bad = [c for c in needed if np.isnan(raw[c][i])] or ["the aggregate"]
                row_notes.append(Q.note("pair", ids[r][i], "NaN score: " + ", ".join(bad)))
        pairs = pair_fn(key, generators=gens[r], **opts)
        totals.append(total.astype(np.float32).tolist())
        chosen.append([p.chosen for p in pairs])
        rejected.append([p.rejected for p in pairs])
        margins.append([p.margin for p in pairs])
        labels.append([p.label for p in pairs])
        notes.append(row_notes)
    for name, values, typ in (
        (S.SCORE, totals, pa.float32()),
        (S.PAIR_CHOSEN, chosen, pa.int32()),
        (S.PAIR_REJECTED, rejected, pa.int32()),
        (S.PAIR_MARGIN, margins, pa.float32()),
        (S.PAIR_LABEL, labels, pa.float32()),
    ):
        batch = batch.append_column(name, pa.array(values, type=pa.list_(typ)))
    return Q.add_notes(batch, notes)


def sample_counts(batch: pa.Table) -> np.ndarray:
    """How many samples each group row holds."""
    import pyarrow.compute as pc

    return pc.fill_null(pc.list_value_length(batch.column(S.SAMPLE_ID)), 0).to_numpy(zero_copy_only=False)


def fill_short_lists(batch: pa.Table, counts: np.ndarray) -> tuple[pa.Table, list[list[str]]]:
    """A stored row's score (or rationale) list that is null, or not one value per sample, would shift every
    later row's values once the lists are flattened into samples and pairs: it becomes one NaN (null for
    text) per sample. Returns the batch and, per row, the columns so filled."""
    import pyarrow.compute as pc

    short: list[list[str]] = [[] for _ in counts]
    for c in batch.column_names:
        if not ((S.is_score_column(c) and c != S.SCORE) or c.startswith((S.RATIONALE_PREFIX, S.JUDGE_EVENTS_PREFIX))):
            continue
        col = batch.column(c)
        bad = np.flatnonzero(pc.fill_null(pc.list_value_length(col), -1).to_numpy(zero_copy_only=False) != counts)
        if not bad.size:
            continue
        fill = float("nan") if pa.types.is_floating(col.type.value_type) else None
        values = col.to_pylist()
        for r in bad:
            values[r] = [fill] * int(counts[r])
            short[r].append(c)
        batch = batch.set_column(batch.column_names.index(c), c, pa.array(values, col.type))
    return batch, short


def aspect_columns(column_names, scorer_names: list[str]) -> list[str]:
    """The score columns of the groups table that are scorers' extra aspects."""
    main = set(S.score_columns(scorer_names))
    return [c for c in column_names if S.is_score_column(c) and c not in main]


def explode_samples(batch: pa.Table, scorer_names: list[str]) -> pa.Table:
    """groups -> samples: one row per image."""
    counts = sample_counts(batch)
    batch = fill_short_lists(batch, counts)[0]
    idx = np.repeat(np.arange(batch.num_rows), counts)
    cols = {S.PROMPT_ID: batch.column(S.PROMPT_ID).take(idx), S.PROMPT: batch.column(S.PROMPT).take(idx)}
    aspects = aspect_columns(batch.column_names, scorer_names)
    reasons = [c for c in batch.column_names if c.startswith((S.RATIONALE_PREFIX, S.JUDGE_EVENTS_PREFIX))]
    for name in list(S.SAMPLE_LIST_FIELDS) + S.score_columns(scorer_names) + aspects + [S.SCORE] + reasons:
        cols[name] = batch.column(name).combine_chunks().flatten()
    return pa.table(cols).cast(S.samples_schema(scorer_names, aspects, reasons))


def explode_pairs(batch: pa.Table, label_source: str) -> pa.Table:
    """groups -> pairs: one row per pair, images inline, with every score column (scorers and their
    aspects) for both sides, so pairs can be ranked and re-labelled per scorer without a join."""
    batch = fill_short_lists(batch, sample_counts(batch))[0]
    pc = batch.column(S.PAIR_CHOSEN).combine_chunks()
    n_pairs = np.diff(pc.offsets.to_numpy())
    row = np.repeat(np.arange(batch.num_rows), n_pairs)
    # a sample's flat index = its group's offset in the flattened sample lists + its index there
    # (minus the first offset: a sliced batch's list offsets need not start at 0)
    offsets = batch.column(S.SAMPLE_ID).combine_chunks().offsets.to_numpy()
    start = (offsets[:-1] - offsets[0])[row]
    ci = pa.array(start + pc.flatten().to_numpy(zero_copy_only=False))
    ri = pa.array(start + batch.column(S.PAIR_REJECTED).combine_chunks().flatten().to_numpy(zero_copy_only=False))
    flat = {c: batch.column(c).combine_chunks().flatten() for c in batch.column_names if c in _PER_SAMPLE or S.is_score_column(c)}
    score_cols = [c for c in batch.column_names if S.is_score_column(c) and c != S.SCORE]
    margin = batch.column(S.PAIR_MARGIN).combine_chunks().flatten()
    cols = {
        S.PROMPT_ID: batch.column(S.PROMPT_ID).take(row),
        S.PROMPT: batch.column(S.PROMPT).take(row),
        S.CHOSEN_ID: flat[S.SAMPLE_ID].take(ci),
        S.REJECTED_ID: flat[S.SAMPLE_ID].take(ri),
        S.CHOSEN_IMAGE: flat[S.IMAGE].take(ci),
        S.REJECTED_IMAGE: flat[S.IMAGE].take(ri),
        S.CHOSEN_SCORE: flat[S.SCORE].take(ci),
        S.REJECTED_SCORE: flat[S.SCORE].take(ri),
        S.MARGIN: margin,
        S.QUALITY: margin,  # default quality metric: the aggregate margin
        S.LABEL_SOURCE: pa.array([label_source] * len(row), pa.string()),
        # groups stored before pair labels existed hold strict preferences only
        S.LABEL: (batch.column(S.PAIR_LABEL).combine_chunks().flatten() if S.PAIR_LABEL in batch.column_names
                  else pa.array(np.ones(len(row), np.float32))),
        S.CHOSEN_GENERATOR: flat[S.GENERATOR].take(ci),
        S.REJECTED_GENERATOR: flat[S.GENERATOR].take(ri),
    }
    for c in score_cols:
        cols[S.chosen_column(c)] = flat[c].take(ci)
        cols[S.rejected_column(c)] = flat[c].take(ri)
    return pa.table(cols).cast(S.pairs_schema(score_cols))


_PER_SAMPLE = (S.SAMPLE_ID, S.IMAGE, S.GENERATOR, S.SCORE)


READ_TASK_CPUS = 1.0  # what Ray Data's read tasks ask for by default
# a rerun's (resume.checkpointed): Ray Data filters the read through an actor pool of its own, 1 CPU an
# actor by default; a 0.5-CPU pool and a read task ran on a 2-CPU Ray, and the same rerun waited for ever
CHECKPOINT_FILTER_CPUS = 1.0


def check_pools_fit(generators: list[GeneratorConf], scorers: list[ScorerConf]) -> None:
    """Ray Data starts every pool's actors at once and still needs a CPU for a read task, and on a rerun
    one for its checkpoint filter: on a Ray with fewer, the pipeline waits for ever, saying only "pending"
    in its log (measured here: two 1-CPU pools on a 2-CPU local Ray never started; pools of 2 CPUs and a
    read task ran on 3, pools of 2.5 did not). Counted on a first run too, so that a run that starts can
    also resume. An error on a Ray raypref started here (session.started_here); a warning elsewhere: a
    joined cluster's autoscaler may add nodes."""
    import ray

    from raypref import session

    pools = [(f"generator {g.name!r}", g.pool) for g in generators] + [(f"scorer {s.name!r}", s.pool) for s in scorers]
    have = ray.cluster_resources()
    short = []
    for res, key, extra in (("CPU", "num_cpus", READ_TASK_CPUS + CHECKPOINT_FILTER_CPUS), ("GPU", "num_gpus", 0.0)):
        need = sum(p.concurrency * getattr(p, key) for _, p in pools) + extra
        if need > have.get(res, 0.0) + 1e-9:
            parts = [f"{w} {p.concurrency} x {getattr(p, key):g}" for w, p in pools if getattr(p, key)]
            more = (f", a read task {READ_TASK_CPUS:g} and a rerun's checkpoint filter {CHECKPOINT_FILTER_CPUS:g}"
                    if extra else "")
            short.append(f"{need:g} {res}s at once ({', '.join(parts)}{more}) where this Ray has {have.get(res, 0.0):g}")
    if not short:
        return
    msg = ("the actor pools need " + "; and ".join(short) + ": the pipeline would wait for ever. Lower the pools' "
           "pool.num_cpus / pool.num_gpus (fractions are fine) or their concurrency, or raise ray.num_cpus (logical "
           "slots: more than the machine's cores oversubscribes it, as the shipped configs do)")
    session.refuse_or_warn(msg)


def generate_and_score(ds, generators: list[GeneratorConf], scorers: list[ScorerConf]):
    """Append each generator pool's samples, then each scorer pool's score column (the pools checked to fit first)."""
    check_pools_fit(generators, scorers)
    for g in generators:
        ds = ds.map_batches(
            resolve(g.cls), fn_constructor_kwargs=generator_kwargs(g), batch_format="pyarrow", **pool_args(g.pool)
        )
    for s in scorers:
        ds = ds.map_batches(
            resolve(s.cls), fn_constructor_kwargs=scorer_kwargs(s), batch_format="pyarrow", **pool_args(s.pool)
        )
    return ds


SETTINGS_FILE = "build_settings.json"  # what the stored groups were made with (guard_build_resume)


def guard_build_resume(b: BuildConf, out: Path) -> None:
    """A rerun resumes the groups already in <out> (by prompt id) only if they were made by the same
    generators, scorers and pairing, and the same local files they load (fingerprints: a LoRA or reward
    model retrained in place is another model); with others it would mix two builds. Pool sizes, the
    args a class lists as untracked (a judge's retries, say), the prompts (a rerun may add some) and
    the shard size may change. Records the settings for the next rerun."""
    mine = {"build": {"generators": [g.model_dump(mode="json", exclude={"pool"}) for g in b.generators],
                      **labelling_settings(b)},
            "files": build_files(b, out)}
    has_work = any((out / "groups").glob("*.parquet")) or (out / "_checkpoint").exists()
    # a record from before files were fingerprinted cannot compare them: they are recorded from now on
    guard_rerun(out / SETTINGS_FILE, mine, has_work,
                f"build: {out} holds groups made with other settings ({{changed}}); a rerun would mix the two builds. "
                "Use another output_dir, re-pair the stored groups with `raypref pair` (scorer weights and "
                f"normalisation, build.pairs), or delete {out} to build from scratch", untracked_build_keys(b),
                added=("files",))


def build_files(b: BuildConf, out: Path, generators: bool = True) -> dict:
    """The fingerprints of the local files each generator (unless not ``generators``) and scorer loads,
    by its name and the key that names the file (raypref.resume.local_files); the stage's own output
    ``out`` is left out."""
    files = {"generators": {g.name: local_files(g, skip=out) for g in b.generators}} if generators else {}
    return {**files, "scorers": {s.name: local_files(s, skip=out) for s in b.scorers}}


def untracked_build_keys(b: BuildConf, generators: bool = True) -> tuple[str, ...]:
    """The settings keys of the args the scorers' (and generators') classes list as untracked (retries,
    timeouts, logs): neither compared nor recorded, so changing them resumes the build."""
    keys = tuple(k for i, s in enumerate(b.scorers) for k in untracked_keys(s, f"build.scorers.{i}.args"))
    if generators:
        keys += tuple(k for i, g in enumerate(b.generators) for k in untracked_keys(g, f"build.generators.{i}.args"))
    return keys


def labelling_settings(b: BuildConf) -> dict:
    """What decides a sample's scores and its pairs: the scorers (less their pool sizes) and build.pairs.
    A stage that records them ignores untracked_build_keys."""
    return {"scorers": [s.model_dump(mode="json", exclude={"pool"}) for s in b.scorers],
            "pairs": b.pairs.model_dump(mode="json")}


def run_build(cfg: Config) -> dict:
    """Run the build stage; returns its summary (also written to build/summary.json)."""
    import ray

    from raypref.session import init_ray

    b = cfg.build
    if not b.scorers:
        raise ValueError("build.scorers: at least one scorer is needed to make pairs")
    if not b.generators:
        raise ValueError("build.generators: at least one generator is needed")
    if not b.prompts:
        raise ValueError("build.prompts: not set (a prompts file, or 'shapes:<split>')")
    t0 = time.time()
    warn_batch_unit([("generator", g) for g in b.generators] + [("scorer", s) for s in b.scorers],
                    b.shard_size, "build.shard_size", "[build]")
    # every model ref and actor argument is checked (a path test each) before Ray starts: a typo
    # fails in a second, not after Ray's start-up and the first pools
    for g in b.generators:
        generator_kwargs(g)
    for s in b.scorers:
        scorer_kwargs(s)
    bad_prompts: list[dict] = []  # read before anything is written: a bad prompts file leaves no build/ behind
    prompts = read_prompts(resolve_path(b.prompts), limit=b.limit, quarantine=bad_prompts, key="build.prompts")
    # the settings are recorded once the scorers' args (a judge's key variable) are checked too
    out = write_run_meta(cfg, cfg.stage_dir("build"), "build",
                         guard=lambda: guard_build_resume(b, cfg.stage_dir("build")))
    Q.write(bad_prompts, out / "quarantine" / "prompts" / "prompts.parquet")
    shards = write_prompt_shards(prompts, out / "prompts", b.shard_size)
    init_ray(cfg.ray)  # a no-op where the caller's Ray runs

    with checkpointed(S.PROMPT_ID, out / "_checkpoint", out / "groups"):
        # one block per shard: Ray 2.60's V2 Parquet reader merges small files into one block (it
        # ignores override_num_blocks), and neither reader promises a block a file; a block is the
        # unit that streams from pool to pool and that is written, so one block would mean nothing
        # written, and nothing to resume, until the end. Splitting the prompts table costs nothing
        # next to generation.
        ds = read_parquet(str((out / "prompts").resolve())).repartition(len(shards))
        ds = generate_and_score(ds, b.generators, b.scorers)
        # batch_size=None: one call per block; the default bundles blocks up to 1024 rows, so nothing
        # would be written (and nothing could resume) until many prompts had finished
        ds = ds.map_batches(finalize_groups, fn_kwargs=_pairing_kwargs(cfg), batch_format="pyarrow", batch_size=None,
                            num_cpus=b.task_cpus)
        ds.write_parquet(str((out / "groups").resolve()), ray_remote_args={"num_cpus": b.task_cpus})

    summary = write_samples_and_pairs(cfg, out, time.time() - t0, prompts.num_rows, _duplicates(prompts))
    return summary


def _duplicates(prompts: pa.Table) -> int:
    return int((prompts.schema.metadata or {}).get(b"duplicates_dropped", b"0"))


def _scorer_specs(cfg: Config) -> list[dict]:
    """The scorers that enter the aggregate. A weight of 0 records a scorer's columns without letting
    it decide pairs, so its NaNs (a judge that could not answer) do not void the aggregate."""
    specs = [
        {"column": S.score_column(s.name), "normalize": s.normalize, "value_range": s.value_range, "weight": s.weight}
        for s in cfg.build.scorers if s.weight != 0
    ]
    if not specs:
        raise ValueError(f"build.scorers: every weight is 0 ({[s.name for s in cfg.build.scorers]}); at least one must count")
    return specs


def _pairing_kwargs(cfg: Config) -> dict:
    p = cfg.build.pairs
    return {"scorers": _scorer_specs(cfg), **p.model_dump()}


def write_samples_and_pairs(cfg: Config, out: Path, seconds: float, n_prompts: int, duplicates: int,
                            final: Path | None = None) -> dict:
    """<out>/groups -> <out>/samples and <out>/pairs (streaming row-local maps), then the summary.
    ``final``: where <out> will be moved once whole (the summary names the report there)."""
    b = cfg.build
    t0 = time.time()
    names = [s.name for s in b.scorers]
    groups = read_parquet(str((out / "groups").resolve()))
    groups.map_batches(explode_samples, fn_kwargs={"scorer_names": names}, batch_format="pyarrow", num_cpus=b.task_cpus).write_parquet(
        str((out / "samples").resolve()), mode="overwrite", ray_remote_args={"num_cpus": b.task_cpus}
    )
    label = "ai:" + (b.pairs.on or "+".join(f"{s.name}*{s.weight:g}" for s in b.scorers))
    groups.map_batches(explode_pairs, fn_kwargs={"label_source": label}, batch_format="pyarrow", num_cpus=b.task_cpus).write_parquet(
        str((out / "pairs").resolve()), mode="overwrite", ray_remote_args={"num_cpus": b.task_cpus}
    )
    # the notes column alone: a third pass over the groups need not read their images again
    if S.QUARANTINE_NOTES in groups.schema().names:
        notes = read_parquet(str((out / "groups").resolve()), columns=[S.QUARANTINE_NOTES])
        notes.map_batches(Q.explode, batch_format="pyarrow", num_cpus=b.task_cpus).write_parquet(
            str((out / "quarantine" / "groups").resolve()), mode="overwrite", ray_remote_args={"num_cpus": b.task_cpus}
        )
    summary = summarize_build(out, n_prompts, duplicates, seconds + time.time() - t0, scorers=names)
    summary["quarantined"] = Q.counts(out / "quarantine")
    summary["report"] = str((final or out) / "report" / "report.md")
    write_report(out, require_data=False)  # a build whose every image was left out still says so
    (out / "summary.json").write_text(json_text(summary))
    return summary


def regroup(batch: pa.Table, **pairing) -> pa.Table:
    """Re-aggregate and re-pair one batch of stored groups from its score columns alone."""
    wanted = [s["column"] for s in pairing["scorers"]] + ([pairing["on"]] if pairing.get("on") else [])
    missing = [c for c in wanted if c not in batch.column_names]
    if missing:
        raise ValueError(
            f"pair: the stored groups have no column {missing} (score columns there: "
            f"{[c for c in batch.column_names if S.is_score_column(c)]}); re-pairing never runs a scorer"
        )
    # the earlier pairing's outputs and notes go; notes from earlier stages (scoring) stay
    stale = [c for c in (S.SCORE, S.PAIR_CHOSEN, S.PAIR_REJECTED, S.PAIR_MARGIN, S.PAIR_LABEL) if c in batch.column_names]
    if S.QUARANTINE_NOTES in batch.column_names:
        kept = [[n for n in (row or []) if n[S.STAGE] != "pair"] for row in batch.column(S.QUARANTINE_NOTES).to_pylist()]
        batch = batch.drop_columns([S.QUARANTINE_NOTES]).append_column(
            S.QUARANTINE_NOTES, pa.array(kept, pa.list_(S.QUARANTINE_NOTE_TYPE)))
    return finalize_groups(batch.drop_columns(stale), **pairing)


def check_pair_input(cfg: Config, src: Path, out: Path) -> None:
    """What `raypref pair` can check before Ray starts: the stored groups exist, lie outside the pair
    stage's own output (which it replaces), and every file of them holds the columns the pairing reads
    (footers only: a later file with other columns would otherwise fail inside Ray)."""
    from raypref.formats._common import ray_parquet_files, footer_names

    if not src.exists():
        raise FileNotFoundError(f"pair.groups: no stored groups at {src} (run the build first, or set pair.groups)")
    i = src.resolve()
    for o in (out.resolve(), staging_dir(out).resolve()):
        if o == i or o in i.parents or i in o.parents:
            raise ValueError(f"pair.groups: {src} overlaps the pair stage's output {o}, which a re-pairing replaces; "
                             "copy the groups elsewhere first, or re-pair the build's")
    files = ray_parquet_files(i)
    if not files:
        raise FileNotFoundError(f"pair.groups: no Parquet files at {src} (run the build first, or set pair.groups)")
    required = [S.PROMPT_ID, S.PROMPT, *S.SAMPLE_LIST_FIELDS]
    scorer_cols = [s["column"] for s in _scorer_specs(cfg)]
    on = cfg.build.pairs.on
    for f, names in footer_names(files, "pair.groups"):
        score_cols = [c for c in names if S.is_score_column(c)]
        missing = [c for c in required if c not in names]
        if missing:
            raise ValueError(f"pair.groups: {f} has no column {missing}; is it a build's groups table?")
        missing = [c for c in scorer_cols if c not in names]
        if missing:
            raise ValueError(f"build.scorers: the stored groups file {f} has no column {missing} (score columns there: "
                             f"{score_cols}); re-pairing never runs a scorer")
        if on and on not in names:
            raise ValueError(f"build.pairs.on: the stored groups file {f} has no score column {on!r} (score columns "
                             f"there: {score_cols})")


def staging_dir(out: Path) -> Path:
    """Where the pair stage writes before its output is swapped in whole."""
    return out.with_name(out.name + ".partial")


def run_pair(cfg: Config) -> dict:
    """Re-pair stored groups with this config's scorer weights, normalisation and pair strategy,
    without running any model; writes <output_dir>/pair/{groups,samples,pairs}. Everything is written
    to <output_dir>/pair.partial and swapped in at the end: a failure leaves the earlier output whole,
    its config.yaml included, never new groups beside old pairs."""
    from raypref.session import init_ray

    final = cfg.stage_dir("pair")
    src = Path(cfg.pair.groups) if cfg.pair.groups else cfg.stage_dir("build") / "groups"
    put_back(final)  # an output a crash left aside mid-swap is the one there
    check_pair_input(cfg, src, final)
    out = staging_dir(final)
    shutil.rmtree(out, ignore_errors=True)  # what a crashed run left half-written
    try:
        t0 = time.time()
        write_run_meta(cfg, out, "pair")
        init_ray(cfg.ray)  # once its inputs are checked (a no-op where the caller's Ray runs)
        groups = read_parquet(str(src.resolve()))
        groups.map_batches(regroup, fn_kwargs=_pairing_kwargs(cfg), batch_format="pyarrow", num_cpus=cfg.build.task_cpus).write_parquet(
            str((out / "groups").resolve()), mode="overwrite", ray_remote_args={"num_cpus": cfg.build.task_cpus}
        )
        n = read_parquet(str((out / "groups").resolve())).count()
        summary = write_samples_and_pairs(cfg, out, time.time() - t0, n, 0, final=final)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    swap_in(out, final)
    return summary


def summarize_build(out: Path, n_prompts: int, duplicates: int, seconds: float, scorers: list[str] = ()) -> dict:
    """Counts over every stored group (an earlier run's too); ``n_prompts``: the prompts this run read,
    which a rerun with a smaller build.limit makes fewer than those stored. A sample is unscored where
    the aggregate or any of ``scorers``' main columns (a weight-0 scorer's too) is NaN, or its list is short."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pds

    gds = pds.dataset(out / "groups", format="parquet")
    mains = [c for c in S.score_columns(list(scorers)) if c in gds.schema.names]
    groups = gds.to_table(columns=[S.PROMPT_ID, S.SCORE, S.PAIR_CHOSEN] + mains)
    n_groups = groups.num_rows
    n_unique = len(set(groups.column(S.PROMPT_ID).to_pylist()))
    scores = groups.column(S.SCORE).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    counts = pc.fill_null(pc.list_value_length(groups.column(S.SCORE)), 0).to_numpy(zero_copy_only=False)
    unscored = np.isnan(scores)
    by_scorer = {}
    for name, c in zip(scorers, S.score_columns(list(scorers))):
        if c not in mains:
            continue
        col = groups.column(c).combine_chunks()
        # a row's list that is null or not one value per sample counts whole (fill_short_lists' NaNs)
        whole = pc.fill_null(pc.list_value_length(col), -1).to_numpy(zero_copy_only=False) == counts
        nan = np.ones(scores.size, dtype=bool)
        nan[np.repeat(whole, counts)] = np.isnan(
            pc.list_flatten(col.filter(pa.array(whole))).to_numpy(zero_copy_only=False).astype(np.float64))
        by_scorer[name] = int(nan.sum())
        unscored |= nan
    # Ray Data writes no files for an empty table: a build where every prompt tied has no pairs dir
    n_pairs = pds.dataset(out / "pairs", format="parquet").count_rows() if (out / "pairs").exists() else 0
    no_pair = sum(1 for x in groups.column(S.PAIR_CHOSEN).to_pylist() if not x)
    # each LLM judge's request events (429s, 5xx, timeouts, malformed answers, give-ups), summed
    from raypref.judge_rubric import sum_events

    judge_events = {
        c[len(S.JUDGE_EVENTS_PREFIX):]: sum_events(gds.to_table(columns=[c]).column(c).combine_chunks().flatten().to_pylist())
        for c in gds.schema.names if c.startswith(S.JUDGE_EVENTS_PREFIX)
    }
    return {
        "prompts": n_unique,
        "prompts_read": n_prompts,
        "duplicate_prompts_dropped": duplicates,
        "groups_written": n_groups,
        "duplicate_groups": n_groups - n_unique,
        "samples": int(scores.size),
        "samples_without_score": int(unscored.sum()),
        "unscored_by_scorer": by_scorer,
        "prompts_without_pair": no_pair,
        "pairs": n_pairs,
        "judge_events": judge_events,
        "seconds": round(seconds, 1),
    }


def warn_batch_unit(pools: list[tuple[str, GeneratorConf | ScorerConf]], shard_size: int, key: str, tag: str) -> list[str]:
    """Ray Data joins shards into a pool's batch: a pool.batch_size above the shard size makes that batch,
    not the shard, the unit written (and lost to a crash). Prints and returns a warning per such pool."""
    out = [f"{tag} warning: {what} {c.name!r} pool.batch_size {c.pool.batch_size} > {key} {shard_size}: Ray Data "
           f"joins shards into batches of up to {c.pool.batch_size} prompts, and that batch, not the shard, is the "
           f"unit written and resumed (a crash loses the batches in flight); set {key} >= {c.pool.batch_size} or "
           "lower the pool's batch_size" for what, c in pools if c.pool.batch_size > shard_size]
    for line in out:
        print(line, flush=True)
    return out
