"""Evaluate base vs tuned: the same held-out prompts and seeds, judged by one configured scorer."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raypref import schema as S
from raypref.build import generate_and_score
from raypref.config import Config, write_run_meta
from raypref.lora import LORA_FILE
from raypref.metrics import win_rate
from raypref.paths import resolve_path
from raypref.prompts import read_prompts


def _scores(prompts: pa.Table, generator, scorer) -> pa.Table:
    import ray
    import ray.data

    ds = generate_and_score(ray.data.from_arrow(prompts), [generator], [scorer])
    ds = ds.select_columns([S.PROMPT_ID, S.PROMPT, S.SEED, S.score_column(scorer.name)])
    return pa.concat_tables(ray.get(ds.to_arrow_refs())).sort_by(S.PROMPT_ID)


def run_eval(cfg: Config) -> dict:
    e = cfg.eval
    t0 = time.time()
    out = write_run_meta(cfg, cfg.stage_dir("eval"), "eval")
    if not cfg.build.generators:
        raise ValueError("build.generators: eval uses the first generator's settings")
    scorer = cfg.scorer(e.scorer)
    lora = Path(e.lora) if e.lora else cfg.stage_dir("train") / "lora"
    if not (lora / LORA_FILE).is_file():
        raise FileNotFoundError(f"eval.lora: no {LORA_FILE} in {lora} (train first, or set eval.lora)")
    prompts = read_prompts(resolve_path(e.prompts))
    gen = cfg.build.generators[0].model_copy(update={"num_samples": e.num_samples})
    base = _scores(prompts, gen, scorer)
    tuned = _scores(prompts, gen.model_copy(update={"lora": str(lora.resolve())}), scorer)
    col = S.score_column(scorer.name)
    b = base.column(col).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    t = tuned.column(col).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    seeds_b = base.column(S.SEED).combine_chunks().flatten().to_pylist()
    seeds_t = tuned.column(S.SEED).combine_chunks().flatten().to_pylist()
    if seeds_b != seeds_t:
        raise RuntimeError("eval: base and tuned images were not made with the same seeds")
    result = win_rate(b, t, e.tie_tolerance)
    result.update({"scorer": scorer.name, "prompts": prompts.num_rows, "lora": str(lora), "seconds": round(time.time() - t0, 1)})
    n = len(b)
    pq.write_table(
        pa.table(
            {
                S.PROMPT_ID: base.column(S.PROMPT_ID).take(pa.array([i // e.num_samples for i in range(n)])),
                S.SEED: pa.array(seeds_b, pa.int64()),
                "base_" + col: pa.array(b, pa.float32()),
                "tuned_" + col: pa.array(t, pa.float32()),
            }
        ),
        out / "scores.parquet",
    )
    (out / "win_rate.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "win_rate.md").write_text(win_rate_table(result))
    return result


def win_rate_table(r: dict) -> str:
    lo, hi = r["win_rate_ci95"]
    return (
        f"| scorer | n | tuned wins | ties | base wins | win rate (95% CI) | base mean | tuned mean |\n"
        f"|---|---|---|---|---|---|---|---|\n"
        f"| {r['scorer']} | {r['n']} | {r['wins']} | {r['ties']} | {r['losses']} | "
        f"{r['win_rate']:.3f} ({lo:.3f}-{hi:.3f}) | {r['base_mean']:.3f} | {r['tuned_mean']:.3f} |\n"
    )
