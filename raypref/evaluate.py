"""Evaluate base vs tuned: the same held-out prompts and seeds, judged by one configured scorer.

Each side's scores are written prompt shard by prompt shard (eval/base/scores, eval/tuned/scores)
with Ray Data checkpointing: a rerun scores only the prompts not yet written, and a side whose
settings changed (the tuned weights re-exported by a longer training run, another scorer) is
scored again while the other side's scores are kept. Where both sides generate, one set of scorer
actors (raypref.shared_scorer) scores both: the scorer is loaded once, not once per side."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raypref import quarantine as Q
from raypref import schema as S
from raypref.build import _duplicates, check_pools_fit, generate_and_score, scorer_kwargs, warn_batch_unit
from raypref.config import Config, renew_if_changed, write_run_meta
from raypref.finetune import export_file, export_name
from raypref.metrics import accuracy, json_text, paired_difference, win_rate
from raypref.parquet_read import read_parquet
from raypref.paths import resolve_path
from raypref.prompts import read_prompts, write_prompt_shards
from raypref.report import value_text
from raypref.resume import actor_settings, checkpointed, untracked_keys
from raypref.shared_scorer import Hosts, score_on, scorer_hosts


SETTINGS_FILE = "settings.json"  # in eval/base and eval/tuned: what their stored scores were made with


def side_settings(gen, scorer, num_samples: int) -> dict:
    """What decides one side's images and scores: the generator (with the tuned weights, if any) and
    the scorer (raypref.resume.actor_settings: less pools and aggregation, with the fingerprints of
    their local files, so weights re-exported to the same path are scored again)."""
    return {"generator": actor_settings(gen), "scorer": actor_settings(scorer), "num_samples": num_samples}


def _holds_all(side: Path, prompts: pa.Table) -> bool:
    """Whether <side>/scores already holds every prompt asked for (unreadable or missing: no). A file whose
    Ray Data checkpoint is still pending counts (unlike accuracy's stored count): read whole, its scores
    are as good as a committed file's, and no pipeline runs to delete it when every prompt is held."""
    try:
        ids = pq.read_table(side / "scores", columns=[S.PROMPT_ID]).column(S.PROMPT_ID).combine_chunks()
    except (OSError, pa.ArrowInvalid):  # FileNotFoundError is an OSError
        return False
    return bool(pc.all(pc.is_in(prompts.column(S.PROMPT_ID), value_set=ids)).as_py())


def _stored(prompts: pa.Table, generator, scorer, side: Path) -> bool:
    """Whether <side>/scores holds every prompt's scores, made with these settings (scores made with
    other settings are removed first)."""
    renew_if_changed(side / SETTINGS_FILE, side_settings(generator, scorer, generator.num_samples), f"[eval] {side.name}",
                     untracked_keys(generator, "generator.config.args") + untracked_keys(scorer, "scorer.config.args"))
    if _holds_all(side, prompts):
        print(f"[eval] {side.name}: every prompt's scores are stored; nothing to generate", flush=True)
        return True
    return False


def _scores(prompts: pa.Table, shards: Path, n_shards: int, generator, scorer, side: Path, task_cpus: float,
            generate: bool, hosts: Hosts | None = None) -> pa.Table:
    """One side's scores of ``prompts``: with ``generate`` (not every one is _stored), generated and
    scored prompt shard by prompt shard into <side>/scores with Ray Data checkpointing, so a rerun
    scores only the prompts not yet written; without, read back (no pipeline starts, no model loads).
    ``hosts``: the scorer's shared actors (_scorer_hosts), else the side starts its own pool."""
    main = S.score_column(scorer.name)
    if generate:
        with checkpointed(S.PROMPT_ID, side / "_checkpoint", side / "scores"):
            ds = read_parquet(str(shards.resolve())).repartition(n_shards)  # a block a shard, as in the build
            if hosts is None:
                ds = generate_and_score(ds, [generator], [scorer])
            else:
                ds = score_on(generate_and_score(ds, [generator], []), hosts, scorer)
            ds = ds.map_batches(eval_columns, fn_kwargs={"main": main}, batch_format="pyarrow", batch_size=None,
                                num_cpus=task_cpus)
            ds.write_parquet(str((side / "scores").resolve()), ray_remote_args={"num_cpus": task_cpus})
    stored = read_side(side / "scores")
    # an earlier run may have scored prompts this one does not ask for (a larger eval.limit)
    stored = stored.filter(pc.is_in(stored.column(S.PROMPT_ID), value_set=prompts.column(S.PROMPT_ID).combine_chunks()))
    _, first = np.unique(stored.column(S.PROMPT_ID).to_numpy(zero_copy_only=False), return_index=True)
    if len(first) != prompts.num_rows:
        raise RuntimeError(f"eval: {side}/scores holds {len(first)} of the {prompts.num_rows} prompts, though its "
                           f"checkpoint says they were written; delete {side} and rerun to score that side again")
    return stored.take(pa.array(first)).sort_by(S.PROMPT_ID)


def _scorer_hosts(sides: dict, stored: dict, scorer):
    """Where both sides generate, the scorer's actors made once for both (raypref.shared_scorer), the
    pools checked to fit first; else nothing shared (a side that generates alone starts its own pool)."""
    if sum(not s for s in stored.values()) < 2:
        return nullcontext(None)
    check_pools_fit([sides["base"]], [scorer])  # the tuned side's generator pool is the base side's
    return scorer_hosts(scorer, scorer_kwargs(scorer))


def eval_columns(t: pa.Table, main: str) -> pa.Table:
    """What a side stores of a scored groups block: prompt, seeds, the scorer's main and aspect columns
    (exact checks report each aspect), a judge's request events (summed in the eval's result), and the
    quarantine notes (images a safety checker blanked, or that did not decode), that column in every
    block, empty where none, so every file has the same columns."""
    keep = (S.PROMPT_ID, S.PROMPT, S.SEED, main)
    cols = [c for c in t.column_names if c in keep or c.startswith((main + "_", S.JUDGE_EVENTS_PREFIX))]
    return Q.add_notes(t, [[]] * t.num_rows).select(cols + [S.QUARANTINE_NOTES])


def read_side(scores: Path) -> pa.Table:
    """A side's stored scores, over the union of its files' columns: files an earlier version wrote lack
    the notes column, and a table read by the first file's columns would drop the later files' notes."""
    import pyarrow.dataset as pds

    files = sorted(scores.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"eval: no scores in {scores}")
    schema = pa.unify_schemas([pq.read_schema(f) for f in files])
    return pds.dataset(files, schema=schema, format="parquet").to_table()


def per_image(side: pa.Table, main: str) -> pa.Table:
    """One side's stored scores (a row a prompt, a list entry an image) as a row an image: prompt id,
    seed, and the scorer's main and aspect columns."""
    seeds = side.column(S.SEED).combine_chunks()
    cols = {S.PROMPT_ID: side.column(S.PROMPT_ID).combine_chunks().take(pc.list_parent_indices(seeds)),
            S.SEED: pc.list_flatten(seeds)}
    for c in side.column_names:
        if c == main or c.startswith(main + "_"):
            cols[c] = pc.list_flatten(side.column(c).combine_chunks())
    return pa.table(cols)


def match_sides(base: pa.Table, tuned: pa.Table, main: str, generator: str) -> tuple[pa.Table, dict[str, list[dict]]]:
    """The images both sides made, matched on (prompt id, seed): a row each, the base's and the tuned's
    score columns side by side (S.base_column, S.tuned_column), by prompt id and seed. And, per side, a
    quarantine note for each of its images the other side lacks (a safety checker left that one out),
    by sample id (``generator``: both sides' name): a win rate compares twins only, so these are
    counted, not compared."""
    keys = [S.PROMPT_ID, S.SEED]
    sides = {name: per_image(t, main) for name, t in (("base", base), ("tuned", tuned))}
    have = {name: set(zip(*(t.column(k).to_pylist() for k in keys))) for name, t in sides.items()}
    unpaired = {}
    for name, other in (("base", "tuned"), ("tuned", "base")):
        unpaired[name] = [Q.note("eval", S.sample_id(pid, generator, seed), f"unpaired: the {other} side has no image "
                                 "of this prompt and seed") for pid, seed in sorted(have[name] - have[other])]
    named = [t.rename_columns([c if c in keys else col(c) for c in t.column_names])
             for t, col in ((sides["base"], S.base_column), (sides["tuned"], S.tuned_column))]
    both = named[0].join(named[1], keys, join_type="inner") if named[0].num_rows and named[1].num_rows else None
    if both is None or both.num_rows == 0:
        raise RuntimeError("eval: no image of the base side has a twin (the same prompt and seed) on the tuned side")
    return both.sort_by([(S.PROMPT_ID, "ascending"), (S.SEED, "ascending")]), unpaired


def nan_notes(pairs: pa.Table, main: str, generator: str) -> dict[str, list[dict]]:
    """Per side, a quarantine note for each twin pair that side scored NaN (a judge gave no rating): the
    win rate leaves such a pair out, so it is counted and written aside, by the side's sample id, naming
    the prompt id, the seed and which side was NaN."""
    pids, seeds = (pairs.column(k).to_pylist() for k in (S.PROMPT_ID, S.SEED))
    nan = {side: np.isnan(pairs.column(col(main)).to_numpy(zero_copy_only=False).astype(np.float64))
           for side, col in (("base", S.base_column), ("tuned", S.tuned_column))}
    out: dict[str, list[dict]] = {"base": [], "tuned": []}
    for i in np.flatnonzero(nan["base"] | nan["tuned"]):
        which = "both sides" if nan["base"][i] and nan["tuned"][i] else "base side" if nan["base"][i] else "tuned side"
        for side in ("base", "tuned"):
            if nan[side][i]:
                out[side].append(Q.note("eval", S.sample_id(pids[i], generator, seeds[i]),
                                        f"NaN score: {main} on the {which} (prompt {pids[i]}, seed {seeds[i]}); "
                                        "the pair is left out of the win rate"))
    return out


def judge_events(side: pa.Table) -> dict[str, int] | None:
    """A side's judge request events, summed as the build sums them (None: its scorer records none)."""
    from raypref.judge_rubric import sum_events

    cols = [c for c in side.column_names if c.startswith(S.JUDGE_EVENTS_PREFIX)]
    if not cols:
        return None
    return sum_events(e for c in cols for e in pc.list_flatten(side.column(c).combine_chunks()).to_pylist())


def exact_accuracy(pairs: pa.Table, main: str, clusters=None) -> dict:
    """Per aspect of a pass/fail scorer (values 0, 1 or NaN), base and tuned pass rates with
    Wilson intervals and their paired difference, over match_sides' ``pairs`` (``clusters``: a
    prompt id per image, so that a prompt's seeds are not counted as independent). Aspects with
    other values are not pass/fail and are left out."""
    out = {}
    prefix = S.base_column(main + "_")
    for bcol in pairs.column_names:
        if not bcol.startswith(prefix):
            continue
        col = bcol[len(S.base_column("")):]
        b, t = (pairs.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in (bcol, S.tuned_column(col)))
        values = np.concatenate([b, t])
        if not np.isin(values[~np.isnan(values)], (0.0, 1.0)).all():
            continue
        out[col[len(main) + 1:]] = {"base": accuracy(b, clusters), "tuned": accuracy(t, clusters),
                                    "diff": paired_difference(b, t, clusters=clusters)}
    return out


def tuned_weights(cfg: Config) -> tuple[str, Path]:
    """What the tuned model adds to the base pipeline: ("lora", dir) or ("unet", dir), from eval.lora or
    eval.unet, else this run's train export of train.finetune's kind."""
    e = cfg.eval
    if e.lora and e.unet:
        raise ValueError("eval.lora and eval.unet are both set; evaluate one of them")
    finetune = "full" if e.unet else "lora" if e.lora else cfg.train.finetune
    key = export_name(finetune)  # the generator's key is the export's name
    given = e.unet or e.lora
    where = Path(given) if given else cfg.stage_dir("train") / export_name(finetune)
    if not (where / export_file(finetune)).is_file():
        hint = ""
        if not given:  # eval reads train.finetune, not the run's record: say where the other kind's export is
            other = "full" if finetune == "lora" else "lora"
            there = cfg.stage_dir("train") / export_name(other)
            if (there / export_file(other)).is_file():
                hint = f"; {there} holds a train.finetune={other} export: set train.finetune={other} to evaluate it"
        raise FileNotFoundError(f"eval.{key}: no {export_file(finetune)} in {where} (train first, or set eval.{key}){hint}")
    return key, where


def eval_sides(cfg: Config, tuned: tuple[str, Path] | None = None) -> dict:
    """The two generators an eval compares: the first build generator at eval.num_samples ("base"),
    and the same with the tuned weights added as its lora or unet ("tuned"; ``tuned_weights(cfg)`` unless given)."""
    part, weights = tuned or tuned_weights(cfg)
    gen = cfg.build.generators[0].model_copy(update={"num_samples": cfg.eval.num_samples})
    return {"base": gen, "tuned": gen.model_copy(update={part: str(weights.resolve())})}


def eval_prompts(e) -> tuple[pa.Table, list[dict]]:
    """eval.prompts read as the build reads its own: an empty or repeated prompt is not an error but a
    quarantine note (returned, for eval/quarantine/prompts.parquet), and repeats are counted."""
    if not e.prompts:
        raise ValueError("eval.prompts: not set (a held-out prompts file, or 'shapes:eval')")
    bad: list[dict] = []
    return read_prompts(resolve_path(e.prompts), limit=e.limit, quarantine=bad, key="eval.prompts"), bad


def run_eval(cfg: Config) -> dict:
    e = cfg.eval
    t0 = time.time()
    prompts, bad_prompts = eval_prompts(e)  # the prompts read first
    if not cfg.build.generators:
        raise ValueError("build.generators: eval uses the first generator's settings")
    scorer = cfg.scorer(e.scorer)
    scorer_kwargs(scorer)  # its model and args checked before the config is written
    part, weights = tuned_weights(cfg)  # and the tuned weights found
    from raypref.session import init_ray

    out = write_run_meta(cfg, cfg.stage_dir("eval"), "eval")  # a judge's missing key stops it here, before Ray
    init_ray(cfg.ray)  # once its inputs are checked (a no-op where the caller's Ray runs)
    Q.write(bad_prompts, out / "quarantine" / "prompts.parquet")
    shards = write_prompt_shards(prompts, out / "prompts", e.shard_size)
    sides = eval_sides(cfg, (part, weights))
    stored = {side: _stored(prompts, g, scorer, out / side) for side, g in sides.items()}
    if not all(stored.values()):  # the batch unit matters only where a pipeline runs
        warn_batch_unit([("generator", sides["base"]), ("scorer", scorer)], e.shard_size, "eval.shard_size", "[eval]")
    with _scorer_hosts(sides, stored, scorer) as hosts:
        scored = {side: _scores(prompts, out / "prompts", len(shards), g, scorer, out / side, cfg.build.task_cpus,
                                not stored[side], hosts) for side, g in sides.items()}
    col = S.score_column(scorer.name)
    pairs, unpaired = match_sides(scored["base"], scored["tuned"], col, sides["base"].name)
    nan = nan_notes(pairs, col, sides["base"].name)
    # what each side left out (blanked by a safety checker, undecodable), its images without a twin,
    # and its NaN scores (their pairs are not compared)
    for side in sides:
        Q.write(pa.concat_tables([Q.explode(scored[side]), pa.Table.from_pylist(unpaired[side] + nan[side], schema=S.QUARANTINE_SCHEMA)]),
                out / "quarantine" / f"{side}.parquet")
    b, t = (pairs.column(c(col)).to_numpy(zero_copy_only=False) for c in (S.base_column, S.tuned_column))
    # the prompt of each image: a prompt's seeds are not independent
    clusters = np.unique(pairs.column(S.PROMPT_ID).to_numpy(zero_copy_only=False), return_inverse=True)[1]
    result = win_rate(b, t, e.tie_tolerance, clusters)
    events = {side: judge_events(scored[side]) for side in sides}
    result.update({"scorer": scorer.name, "prompts": prompts.num_rows, "duplicate_prompts_dropped": _duplicates(prompts),
                   part: str(weights), "quarantined": Q.counts(out / "quarantine"),
                   "judge_events": {side: ev for side, ev in events.items() if ev is not None},
                   "accuracy": exact_accuracy(pairs, col, clusters), "seconds": round(time.time() - t0, 1)})
    pq.write_table(pairs.select([S.PROMPT_ID, S.SEED, S.base_column(col), S.tuned_column(col)]), out / "scores.parquet")
    (out / "win_rate.json").write_text(json_text(result))
    (out / "win_rate.md").write_text(win_rate_table(result) + accuracy_table(result))
    return result


def win_rate_table(r: dict) -> str:
    lo, hi = r["win_rate_ci95"]

    def v(x) -> str:  # a rate or mean over no compared pair (every one had a NaN) has no value
        return value_text(x, ".3f")

    return (
        f"Win rate's 95% CI: Wilson, with n divided by the design effect of a prompt's seeds "
        f"({r.get('design_effect', 1.0):.2f}). n counts the twin pairs compared; a pair with a NaN score on "
        f"either side is left out (eval/quarantine/).\n\n"
        f"| scorer | n | left out (NaN score) | tuned wins | ties | base wins | win rate (95% CI) | base mean | tuned mean |\n"
        f"|---|---|---|---|---|---|---|---|---|\n"
        f"| {r['scorer']} | {r['n']} | {r.get('skipped_nan', 0)} | {r['wins']} | {r['ties']} | {r['losses']} | "
        f"{v(r['win_rate'])} ({v(lo)}-{v(hi)}) | {v(r['base_mean'])} | {v(r['tuned_mean'])} |\n"
    )


def accuracy_table(r: dict) -> str:
    """Markdown: per aspect, base and tuned exact accuracy with 95% CIs and the paired difference."""
    acc = r.get("accuracy") or {}
    if not acc:
        return ""
    lines = ["", f"Exact checks by {r['scorer']} (pass rate, 95% Wilson CI with the design effect of a prompt's seeds; "
             "difference: paired, normal approx., clustered by prompt)", "",
             "| aspect | n | base | tuned | tuned - base (95% CI) |", "|---|---|---|---|---|"]
    for aspect, a in acc.items():
        b, t, d = a["base"], a["tuned"], a["diff"]
        lines.append(f"| {aspect} | {b['n']} | {_pass_rate(b)} | {_pass_rate(t)} | "
                     + (f"{d['diff']:+.3f} ({d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f}) |" if d["n"] else "- |"))
    return "\n".join(lines) + "\n"


def _pass_rate(a: dict) -> str:
    """A side's pass rate and interval; none where no compared image has the aspect (every value NaN:
    it does not apply to their prompts)."""
    return f"{a['accuracy']:.3f} ({a['ci95'][0]:.3f}-{a['ci95'][1]:.3f})" if a["n"] else "no prompts"