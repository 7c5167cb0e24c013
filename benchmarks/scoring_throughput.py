"""Scoring throughput: the build's Ray Data actor pool vs a plain loop over the same scorer.

Both score the same prompt groups (rendered shapes-world images, 8 per prompt) with the same
scorer class and batch size; the pipeline runs ``--concurrency`` actors, the baseline one
in-process instance. Both times include loading the model (the pool's include starting its
actors), as a build pays them; the load time of the loop is printed beside it. Prints images/s
for each and their ratio, measured in this run.

    .venv/bin/python benchmarks/scoring_throughput.py --prompts 64 --concurrency 2
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def groups_table(n_prompts: int, per_prompt: int):
    import pyarrow as pa

    from raypref import images as I
    from raypref import schema as S
    from raypref.prompts import read_prompts
    from raypref.shapes import parse_prompt, render

    prompts = read_prompts("shapes:train", limit=n_prompts).column(S.PROMPT).to_pylist()
    if len(prompts) < n_prompts:  # the images/s figures count n_prompts x per_prompt images
        raise SystemExit(f"--prompts {n_prompts}: the shapes-world train split holds {len(prompts)} prompts")
    rows = {S.PROMPT_ID: [], S.PROMPT: [], S.SAMPLE_ID: [], S.IMAGE: []}
    for p in prompts:
        spec = parse_prompt(p)
        imgs = [I.encode(render(spec, seed=s)[0]) for s in range(per_prompt)]
        rows[S.PROMPT_ID].append(S.prompt_id(p))
        rows[S.PROMPT].append(p)
        rows[S.SAMPLE_ID].append([S.stable_id(p, s) for s in range(per_prompt)])
        rows[S.IMAGE].append(imgs)
    return pa.table(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--per-prompt", type=int, default=8)
    ap.add_argument("--scorer", default="clip_score", help="registry name or module:Class")
    ap.add_argument("--model", default="shapes:clip")
    ap.add_argument("--batch-size", type=int, default=4, help="prompt groups per call")
    ap.add_argument("--concurrency", type=int, default=2, help="actors in the pipeline's pool")
    args = ap.parse_args()

    import ray

    from raypref.build import pool_args, scorer_kwargs
    from raypref.config import PoolConf, ScorerConf
    from raypref.registry import resolve

    table = groups_table(args.prompts, args.per_prompt)
    n_images = args.prompts * args.per_prompt
    conf = ScorerConf(name="s", cls=args.scorer, model=args.model,
                      pool=PoolConf(concurrency=args.concurrency, batch_size=args.batch_size, num_cpus=1))
    kwargs = scorer_kwargs(conf)
    cls = resolve(conf.cls)

    # baseline: one instance, a plain loop over the same batches
    t0 = time.perf_counter()
    scorer = cls(**kwargs)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for start in range(0, table.num_rows, args.batch_size):
        scorer(table.slice(start, args.batch_size))
    loop_s = time.perf_counter() - t0 + load_s

    ray.init(num_cpus=max(args.concurrency, os.cpu_count() or 1), include_dashboard=False, logging_level="ERROR")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ds = ray.data.from_arrow([table.slice(i, args.batch_size) for i in range(0, table.num_rows, args.batch_size)])
    pipe = ds.map_batches(cls, fn_constructor_kwargs=kwargs, batch_format="pyarrow", **pool_args(conf.pool))
    t0 = time.perf_counter()
    out = pipe.materialize()
    pipe_s = time.perf_counter() - t0
    assert out.count() == table.num_rows
    ray.shutdown()

    print(f"scorer {args.scorer} ({args.model}), {n_images} images ({args.prompts} prompts x {args.per_prompt}), "
          f"batch {args.batch_size} groups, {os.cpu_count()} CPUs")
    print(f"{'run':<28}{'seconds':>10}{'images/s':>12}")
    print(f"{'plain loop, 1 process':<28}{loop_s:>10.2f}{n_images / loop_s:>12.1f}   (of which model load {load_s:.1f} s)")
    print(f"{f'Ray Data pool x{args.concurrency}':<28}{pipe_s:>10.2f}{n_images / pipe_s:>12.1f}   "
          "(actor start-up and model load included)")
    print(f"ratio pipeline / loop: {loop_s / pipe_s:.2f}x")


if __name__ == "__main__":
    main()
