"""Sweeps: ablations and scaling curves as a grid of config overrides.

Every point of ``sweep.grid`` is the base config with that point's overrides, run in its own
dir ``<output_dir>/sweep/points/<key=value,...>`` through ``sweep.stages``, each stage as its CLI
command runs it. The numbers named in ``sweep.metrics`` are then read from the files the stages
wrote, so the table and the plots hold what each point measured. With ``sweep.concurrency`` 1 the
points run one after another in this process; with N > 1 each runs as a Ray task, at most N at
once, its stages asking for their own resources as they do outside a sweep. A metric with a
``fit`` gets a scaling law fitted to it (raypref.scaling) in sweep/fits.json and on its plot.

Resume: a finished point leaves ``result.json`` holding its config; a rerun skips it while the
config is the same, and runs it again (its stages resuming what they can) when it is not. A
failed point leaves ``error.txt`` (removed once it succeeds), the others still run, and the sweep
then fails naming it; a rerun runs it again in place, its stages' own guards resuming or refusing
what an earlier attempt wrote. A metric whose file a finished point holds but that is not a number there
(a typo in its path) stops a rerun before any point runs again or is moved aside: running would not
change the file.
"""

from __future__ import annotations

import copy
import csv
import itertools
import json
import math
import os
import re
import socket
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from raypref.config import Config, ConfigError, SweepConf, _set_dotted, validate, write_run_meta
from raypref.metrics import finite_or_null, json_text
from raypref.resume import write_atomic

STAGE = "sweep"
POINT_TOKEN = "{point}"
RESULT_FILE = "result.json"
ERROR_FILE = "error.txt"


class SweepFailed(RuntimeError):
    """Some points failed; the others' results are written."""


def expand_grid(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the first key varying slowest."""
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.grid.{key}: needs a non-empty list of values")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def point_name(point: dict[str, Any]) -> str:
    """A readable dir name from the point's values: 'rank.top_p=0.1,reward.seed=1'."""
    text = ",".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in point.items())
    return re.sub(r"[^A-Za-z0-9._=,+-]", "-", text) or "base"


def substitute(obj: Any, point_dir: str) -> Any:
    """'{point}' in every string of a config (nested dicts and lists) -> the point's dir."""
    if isinstance(obj, str):
        return obj.replace(POINT_TOKEN, point_dir)
    if isinstance(obj, dict):
        return {k: substitute(v, point_dir) for k, v in obj.items()}
    if isinstance(obj, list):
        return [substitute(v, point_dir) for v in obj]
    return obj


_TOKEN = re.compile(r"\.?([^.\[\]]+)|\[([^\]]*)\]")


def _steps(path: str) -> list[tuple[str | None, dict[str, str] | None]]:
    """A metric path's steps: (key, None) or (None, the filter's terms); KeyError where it does not parse."""
    steps, pos = [], 0
    for m in _TOKEN.finditer(path):
        if m.start() != pos:
            break
        pos = m.end()
        key, filt = m.group(1), m.group(2)
        if key is None:
            want = dict(kv.split("=", 1) for kv in filt.split(",") if "=" in kv)
            if not want:
                raise KeyError(f"{path!r}: [{filt}] needs key=value terms")
            steps.append((None, want))
        else:
            steps.append((key, None))
    if pos != len(path) or not path:
        raise KeyError(f"{path!r}: cannot parse near {path[pos:]!r}")
    return steps


def select(doc: Any, path: str) -> Any:
    """Follow ``path`` into parsed JSON: keys split by '.', a list item by its index ('rows.0') or
    by a filter ('rows[scorer=reward,output=overall]', which must match exactly one item)."""
    node = doc
    for key, want in _steps(path):
        if key is not None:
            if isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            elif isinstance(node, dict) and key in node:
                node = node[key]
            else:
                raise KeyError(f"{path!r}: no {key!r} at this step (there: {_shape(node)})")
        else:
            terms = ",".join(f"{k}={v}" for k, v in want.items())
            if not isinstance(node, list):
                raise KeyError(f"{path!r}: [{terms}] needs a list (there: {_shape(node)})")
            hits = [it for it in node if isinstance(it, dict) and all(str(it.get(k)) == v for k, v in want.items())]
            if len(hits) != 1:
                # the items' values of the filter's keys, so that a misspelt value shows
                seen = sorted({",".join(f"{k}={it.get(k)}" for k in want) for it in node if isinstance(it, dict)})
                raise KeyError(f"{path!r}: [{terms}] matches {len(hits)} items, not 1"
                               + (f" (there: {_some(seen, '; ')})" if not hits and seen else ""))
            node = hits[0]
    return node


def _shape(node: Any) -> str:
    return str(sorted(node)) if isinstance(node, dict) else f"a list of {len(node)}" if isinstance(node, list) else repr(node)


def _some(names: list[str], sep: str) -> str:
    return sep.join(names[:12]) + (f"{sep}..." if len(names) > 12 else "")


def metric_spec(spec: str, key: str) -> tuple[str, str]:
    """'<file>:<path>' -> (file, path), the path parsed; a ConfigError naming ``key`` where it is not one."""
    file, sep, path = spec.partition(":")
    if not sep or not file:
        raise ConfigError(f"{key}: {spec!r} is not '<file>:<path>'")
    try:
        _steps(path)
    except KeyError as e:
        raise ConfigError(f"{key}: {e.args[0]}") from None
    return file, path


def read_metric(point_dir: Path, spec: str, key: str = "sweep.metrics") -> float | None:
    """'<file>:<path>' under a point dir -> a number, or None where the file holds null (or NaN): no number,
    e.g. an interval with no data. A missing file is a FileNotFoundError (a stage may yet write it); a file
    that is there but does not hold a number at that path is a ConfigError naming ``key``, the file and
    what is there."""
    file, path = metric_spec(spec, key)
    f = point_dir / file
    if not f.is_file():
        there = sorted(p.name for p in f.parent.iterdir()) if f.parent.is_dir() else []
        raise FileNotFoundError(f"{key}: no file {f} (did a stage that writes it run?)"
                                + (f"; {f.parent} holds {_some(there, ', ')}" if there else ""))
    try:
        value = select(json.loads(f.read_text()), path)
    except KeyError as e:
        raise ConfigError(f"{key}: in {f}, {e.args[0]}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{key}: {spec!r}: {f} is not JSON ({e})") from None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        what = f"a dict with keys {sorted(value)}" if isinstance(value, dict) else _shape(value)
        raise ConfigError(f"{key}: {spec!r} in {f} is {what}, not a number")
    return float(value) if math.isfinite(value) else None


def point_configs(cfg: Config) -> list[tuple[str, dict[str, Any], Config]]:
    """(name, overrides, config) for every point, all validated before any runs."""
    sw = cfg.sweep
    if not sw.stages:
        raise ConfigError("sweep.stages: name at least one stage to run at every point")
    for section, keys in (("set", sw.set), ("grid", sw.grid)):
        for key in keys:
            if key == "output_dir" or key.startswith("sweep."):
                raise ConfigError(f"sweep.{section}.{key}: the sweep sets output_dir and its own section itself")
    x = x_axis(sw)
    names = [m.name for m in sw.metrics]
    taken = {"point": "a column of its own", "status": "a column of its own", "seconds": "a column of its own",
             **{k: "a grid key" for k in sw.grid}}
    for m in sw.metrics:  # a row holds them side by side: a second of one name would overwrite the first
        for col in [m.name] + [f"{m.name}_{f}" for f, _ in _specs(m) if f != "value"]:
            if col in taken:
                raise ConfigError(f"sweep.metrics.{m.name}.name: its column {col!r} is already {taken[col]}")
            taken[col] = f"metric {m.name}'s column"
    if sw.x is not None and sw.x not in sw.grid and sw.x not in names:  # it would plot and fit nothing
        raise ConfigError(f"sweep.x: {sw.x!r} is neither a grid key ({', '.join(sw.grid) or 'none'}) "
                          f"nor a metric ({', '.join(names) or 'none'})")
    for m in sw.metrics:
        for field, spec in _specs(m):
            metric_spec(spec, f"sweep.metrics.{m.name}.{field}")
        if m.fit and (x is None or x == m.name):
            raise ConfigError(f"sweep.metrics.{m.name}.fit: needs an x axis other than the metric itself (sweep.x or a grid key)")
        if m.fit and x in sw.grid and not all(_num(v) is not None and v > 0 for v in sw.grid[x]):
            raise ConfigError(f"sweep.metrics.{m.name}.fit: the x axis {x!r} must hold numbers > 0, got {sw.grid[x]}")
    return sweep_points(cfg)


def point_label(i: int, n: int, point: dict[str, Any]) -> str:
    """'sweep point 2/4 (a.b, c; sweep.set applied)': a point named in an error by its number and grid
    keys, never by its values (a key pasted into the grid must not be echoed)."""
    keys = ", ".join(point) if point else "no grid keys"
    return f"sweep point {i}/{n} ({keys}; sweep.set applied)"


def sweep_points(cfg: Config) -> list[tuple[str, dict[str, Any], Config]]:
    """(name, overrides, config) for every point: the base with sweep.set and the point's grid values."""
    sw = cfg.sweep
    root = Path(cfg.output_dir) / STAGE / "points"
    base = cfg.model_dump(mode="json")
    grid = expand_grid(sw.grid)
    names, seen = [point_name(p) for p in grid], {}
    for i, name in enumerate(names, 1):
        if name in seen:
            raise ConfigError(f"sweep.grid: points {seen[name]}/{len(grid)} and {i}/{len(grid)} ({', '.join(grid[0])}) "
                              "would share one dir: their values differ only in characters a dir name cannot hold "
                              "(all but A-Z a-z 0-9 . _ = , + - become '-')")
        seen[name] = i
    out = []
    for i, (name, point) in enumerate(zip(names, grid), 1):
        data = copy.deepcopy(base)
        for section, items in (("set", sw.set), ("grid", point)):
            for key, value in items.items():
                try:
                    _set_dotted(data, key, copy.deepcopy(value), "the config")
                except ConfigError as e:
                    raise ConfigError(f"sweep.{section}.{key}: {e}") from None
        data["output_dir"] = str(root / name)
        out.append((name, point, validate(substitute(data, str(root / name)), source=point_label(i, len(grid), point))))
    return out


def check_point_args(points: list[tuple[str, dict[str, Any], Config]]) -> None:
    """Every point's scorers' own argument checks (config.check_scorer_args), before anything is written:
    a key pasted into sweep.set or the grid would otherwise reach sweep/config.yaml, the point dirs' names
    and the results. The error names the point by number and grid keys (point_label)."""
    from raypref.config import check_scorer_args

    for i, (_, point, pcfg) in enumerate(points, 1):
        try:
            check_scorer_args(pcfg)
        except ValueError as e:
            raise ConfigError(f"{point_label(i, len(points), point)}: {e}") from None


def _stage_fns() -> dict:
    from raypref import stages
    from raypref.relabel import relabel

    return {"build": stages.build, "pair": stages.pair, "rank": stages.rank, "relabel": relabel,
            "train_dpo": stages.train_dpo, "train_sft": stages.train_sft, "train_refl": stages.train_refl,
            "train_reward": stages.train_reward, "train_pcclip": stages.train_pcclip, "accuracy": stages.accuracy,
            "eval": stages.evaluate, "report": stages.report}


def _done(point_dir: Path, config: dict, stages: list[str]) -> tuple[dict | None, str, bool]:
    """(this point's earlier result, or None with why it runs now, whether to move it aside first); reads
    only, so that every point is judged before any is touched. A point made under another config is moved
    aside whole (its stages would refuse to resume it, and nothing is lost): it runs from scratch. A point
    whose config differs only in scale or budget (a pool, the ray section, max_steps...), or lacks a stage
    added since, runs again in place; its finished stages resume."""
    f = point_dir / RESULT_FILE
    if not f.is_file():
        return None, "runs", False
    try:
        r = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, f"runs again ({f} is unreadable)", False
    if not isinstance(r, dict):  # valid JSON, but no result run_point writes (e.g. a hand-edited file)
        return None, f"runs again ({f} holds no JSON object)", False
    lacks = [k for k in ("point", "overrides", "seconds") if k not in r]  # what the results table reads of it
    if lacks:
        return None, f"runs again ({f} lacks {', '.join(lacks)})", False
    if _config_changed(r.get("config"), config):
        if _scale_free(r.get("config")) == _scale_free(config):  # the same work: its stages resume it
            return None, "runs again in place (only its scale or budget changed; its stages resume)", False
        return None, "its config changed: runs from scratch", True
    missing = [st for st in stages if st not in r.get("stages", stages)]
    if missing:
        return None, f"runs again for the stage(s) added since: {', '.join(missing)}", False
    return r, "done", False


def _move_aside(point_dir: Path) -> Path:
    """<point>.replaced-<time>, or <...>-2, -3, ... where one of that second is there (a rerun within it)."""
    name = f"{point_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    aside, n = point_dir.with_name(name), 1
    while aside.exists():
        n += 1
        aside = point_dir.with_name(f"{name}-{n}")
    point_dir.rename(aside)
    return aside


def _specs(m) -> list[tuple[str, str]]:
    """A metric's (field, '<file>:<path>') for its value and, where given, its interval ends."""
    return [(field, getattr(m, field)) for field in ("value", "low", "high") if getattr(m, field)]


def collect(point_dir: Path, sw: SweepConf) -> dict[str, float | None]:
    """sweep.metrics read from a point's files (read again on resume, so a metric added later is filled in):
    <name>, and <name>_low, <name>_high where given; None where a file holds null."""
    return {m.name if field == "value" else f"{m.name}_{field}": read_metric(point_dir, spec, f"sweep.metrics.{m.name}.{field}")
            for m in sw.metrics for field, spec in _specs(m)}


def _config_changed(recorded, config: dict) -> bool:
    """Whether a finished point's recorded config differs from this one; a key added to raypref since
    it was recorded (absent from the record) that holds its default is no change."""
    from raypref.config import config_changes

    return not isinstance(recorded, dict) or bool(config_changes(recorded, config))


def _scale_free(config):
    """A point's config less what its stages resume across (train_checkpoint.RESUMABLE): the ray
    section, every pool, and the budget and scale keys of the training sections."""
    from raypref.train_checkpoint import RESUMABLE

    if isinstance(config, dict):
        return {k: _scale_free(v) for k, v in config.items() if k not in RESUMABLE and k not in ("ray", "pool")}
    if isinstance(config, list):
        return [_scale_free(v) for v in config]
    return config


def _point_config(pcfg: Config) -> dict:
    """What decides whether a finished point is still valid: its config less the sweep section,
    so that adding a metric or changing the plot reruns nothing."""
    data = pcfg.model_dump(mode="json")
    data.pop("sweep", None)
    return finite_or_null(data)  # as result.json records it: a NaN setting reads back as null, and still matches


def run_point(name: str, point: dict, pcfg: Config, pconf: dict, sw: SweepConf, fns: dict) -> dict:
    """Run one point's stages and read its metrics; result.json (with ``pconf``, _point_config's
    record) is written last, so a crash leaves none and the point runs again. An error.txt of an
    earlier attempt goes first: a crash between the two leaves neither, not an error beside a result."""
    d = Path(pcfg.output_dir)
    t0 = time.time()
    for stage in sw.stages:
        fns[stage](pcfg)
    result = {"point": name, "overrides": point, "metrics": collect(d, sw), "seconds": round(time.time() - t0, 1),
              "started": round(t0, 3), "host": socket.gethostname(), "pid": os.getpid(), "config": pconf,
              "stages": list(sw.stages)}
    (d / ERROR_FILE).unlink(missing_ok=True)
    write_atomic(d / RESULT_FILE, json_text(result))  # a crash mid-write must not read as done
    return result


def attempt_point(name: str, point: dict, pcfg: Config, pconf: dict, sw: SweepConf) -> tuple[dict | None, str | None]:
    """(result, None), or (None, the error in one line) with the traceback in the point's error.txt:
    one point's failure must not lose the others."""
    d = Path(pcfg.output_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
        return run_point(name, point, pcfg, pconf, sw, _stage_fns()), None
    except Exception as e:  # noqa: BLE001
        (d / ERROR_FILE).write_text(traceback.format_exc())
        return None, f"{type(e).__name__}: {e}"


def _attempt_in(cwd: str, *args) -> tuple[dict | None, str | None]:
    """attempt_point in a Ray task, from the driver's dir so relative paths in the config mean the
    same (under `ray job submit` the worker already starts in the job's working_dir)."""
    if os.path.isdir(cwd) and os.getcwd() != cwd:
        os.chdir(cwd)
    return attempt_point(*args)


def _in_process(pending: list, sw: SweepConf, cfg: Config, say):
    for i, name, point, pcfg, pconf in pending:
        say(i, name, f"running {', '.join(sw.stages)}")
        yield (i, name, point, *attempt_point(name, point, pcfg, pconf, sw))


def _as_ray_tasks(pending: list, sw: SweepConf, cfg: Config, say):
    """At most sweep.concurrency points in flight, each a 0-CPU task driving its stages; yields
    each as it finishes."""
    from raypref.session import init_ray

    ray = init_ray(cfg.ray)
    task = ray.remote(num_cpus=0, max_retries=0)(_attempt_in)  # a rerun resumes; no blind retry
    queue, inflight, cwd = list(pending), {}, os.getcwd()
    while queue or inflight:
        while queue and len(inflight) < sw.concurrency:
            i, name, point, pcfg, pconf = item = queue.pop(0)
            say(i, name, f"running {', '.join(sw.stages)} (as a Ray task, {len(inflight) + 1} in flight)")
            inflight[task.remote(cwd, name, point, pcfg, pconf, sw)] = item
        (ref,), _ = ray.wait(list(inflight), num_returns=1)
        i, name, point, pcfg, _ = inflight.pop(ref)
        try:
            result, err = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - the task's process died (out of memory, node lost)
            result, err = None, f"{type(e).__name__}: {e}"
            Path(pcfg.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(pcfg.output_dir) / ERROR_FILE).write_text(str(e))
        yield i, name, point, result, err


def run_sweep(cfg: Config) -> dict:
    """The sweep stage: <output_dir>/sweep/{points/, results.{csv,md,json}, <metric>.png}."""
    sw = cfg.sweep
    points = point_configs(cfg)
    check_point_args(points)  # before write_run_meta writes sweep.set and the grid to sweep/config.yaml
    # every finished point's metrics are read before anything is written, moved aside or removed: a typo
    # in a metric's path stops the rerun with every point as it was
    plan = []
    for i, (name, point, pcfg) in enumerate(points, 1):
        d = Path(pcfg.output_dir)
        pconf = _point_config(pcfg)
        prior, why, stale = _done(d, pconf, sw.stages)
        if prior is not None:
            try:
                prior["metrics"] = collect(d, sw)
            except FileNotFoundError as e:  # a metric added since whose file its stages did not write: they may now
                prior, why = None, f"runs again (a metric cannot be read: {e})"
            except ConfigError as e:  # the file is there: running again would write it alike, and fail alike
                raise ConfigError(f"{e} (read from the finished point {name}, before any point ran; "
                                  "to have its stages write that file again, delete it)") from None
        plan.append((i, name, point, pcfg, pconf, prior, why, stale))
    out = write_run_meta(cfg, Path(cfg.output_dir) / STAGE, STAGE)
    rows: dict[int, dict] = {}
    pending, failed, resumed = [], [], 0
    t0 = time.time()

    def say(i: int, name: str, text: str):
        print(f"[sweep] point {i}/{len(points)} {name}: {text}", flush=True)

    def fail(i: int, name: str, point: dict, err: str):
        failed.append(name)
        rows[i] = finite_or_null({"point": name, **point, "status": "failed", "seconds": None})
        say(i, name, f"FAILED ({err}); see {Path(cfg.output_dir) / STAGE / 'points' / name / ERROR_FILE}")

    for i, name, point, pcfg, pconf, prior, why, stale in plan:
        d = Path(pcfg.output_dir)
        if stale:
            why += f" (the earlier run is kept in {_move_aside(d)})"
        if prior is None:
            if why != "runs":
                say(i, name, why)
            pending.append((i, name, point, pcfg, pconf))
            continue
        resumed += 1
        (d / ERROR_FILE).unlink(missing_ok=True)  # an earlier attempt's (or a dead task's) error, no longer so
        rows[i] = _row(prior, "done")
        say(i, name, f"done before, {_metrics_text(prior['metrics'])}")
    runner = _in_process if sw.concurrency == 1 or len(pending) <= 1 else _as_ray_tasks
    for i, name, point, result, err in runner(pending, sw, cfg, say):
        if err is not None:
            fail(i, name, point, err)
            continue
        rows[i] = _row(result, "done")
        say(i, name, f"{_metrics_text(result['metrics'])} in {result['seconds']}s")
    failed.sort(key=[p[0] for p in points].index)
    plots = write_results([rows[i] for i in sorted(rows)], out, sw)
    summary = {"points": len(points), "ran": len(points) - resumed - len(failed), "resumed": resumed,
               "failed": failed, "plots": plots, "seconds": round(time.time() - t0, 1)}
    (out / "summary.json").write_text(json_text(summary))
    print(f"[sweep] {len(points)} points ({summary['ran']} ran, {resumed} done before, {len(failed)} failed) "
          f"in {summary['seconds']}s -> {out}/results.md" + (f", plots {', '.join(plots)}" if plots else ""), flush=True)
    if failed:
        raise SweepFailed(f"sweep: {len(failed)} of {len(points)} points failed: {', '.join(failed)} "
                          f"(tracebacks in {out / 'points'}/<point>/{ERROR_FILE}; a rerun retries them)")
    return summary


def _row(result: dict, status: str) -> dict:
    # a point run now holds NaN where one read back from result.json holds null: one spelling in the table
    return finite_or_null({"point": result["point"], **result["overrides"], **result["metrics"], "status": status,
                           "seconds": result["seconds"]})


def _fmt(v: float) -> str:
    """Counts as integers (8498, not 8.498e+03); other numbers to 4 significant digits."""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:.4g}"


def _metrics_text(metrics: dict) -> str:
    return ", ".join(f"{k}={'null (no number)' if v is None else _fmt(v)}" for k, v in metrics.items()) or "no metrics"


def _columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols


def write_results(rows: list[dict], out: Path, sw: SweepConf) -> list[str]:
    """results.{json,csv,md} and one plot per metric (but the one on the x axis); returns the plot file names."""
    cols = _columns(rows)
    (out / "results.json").write_text(json_text(rows))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)

    def cell(v):
        return "" if v is None else _fmt(v) if isinstance(v, float) else str(v)

    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    (out / "results.md").write_text("\n".join(md) + "\n")
    x = x_axis(sw)
    if x is None:  # an empty grid: a single point, nothing to plot against
        return []
    fits = fit_metrics(rows, out, sw, x)
    return [p for m in sw.metrics if m.name != x and (p := plot_metric(rows, out, sw, m.name, x, fits))]


def x_axis(sw: SweepConf) -> str | None:
    """The plots' and fits' x: sweep.x, else the first grid key; None for an empty grid."""
    return sw.x or next(iter(sw.grid), None)


def _series(rows: list[dict], sw: SweepConf, metric: str, x: str) -> tuple[bool, list[str], dict[str, list[dict]]]:
    """The finished points with a number for ``metric``, one series per combination of the other
    grid keys (a metric on the axis stands in for the first grid key), each sorted along x;
    (x numeric?, the x labels when it is not, series)."""
    others = [k for k in sw.grid if k != x] if x in sw.grid else list(sw.grid)[1:]
    done = [r for r in rows if r.get("status") == "done" and _num(r.get(metric)) is not None and x in r
            and (x in sw.grid or _num(r[x]) is not None)]  # a metric on the axis that is null: no point to place
    numeric = all(_num(r[x]) is not None for r in done)
    labels = [] if numeric else list(dict.fromkeys(str(r[x]) for r in done))
    series: dict[str, list[dict]] = {}
    for r in done:
        series.setdefault(", ".join(f"{k}={r[k]}" for k in others), []).append(r)
    for rs in series.values():
        rs.sort(key=lambda r: r[x] if numeric else labels.index(str(r[x])))
    return numeric, labels, series


def _sigma(rs: list[dict], metric: str) -> tuple[list[float] | None, str | None]:
    """(per-point sigma from a 95% interval, (high - low) / (2 * 1.96), where every point has one; why the
    line is fitted unweighted instead). A zero-width interval would weigh its point infinitely: the line
    is fitted unweighted, naming it. One whose low is above its high is a ValueError naming it."""
    lo, hi = [r.get(f"{metric}_low") for r in rs], [r.get(f"{metric}_high") for r in rs]
    if not all(_num(v) is not None for v in lo + hi):
        return None, None
    for r, a, b in zip(rs, lo, hi):
        if a > b:
            raise ValueError(f"point {r['point']}: its {metric} interval is inverted ({metric}_low {_fmt(a)} > "
                             f"{metric}_high {_fmt(b)})")
    zero = [r["point"] for r, a, b in zip(rs, lo, hi) if a == b]
    if zero:
        return None, f"{'points' if len(zero) > 1 else 'point'} {_some(zero, ', ')}: a zero-width {metric} interval ({metric}_low = {metric}_high)"
    return [(b - a) / 3.92 for a, b in zip(lo, hi)], None


def fit_metrics(rows: list[dict], out: Path, sw: SweepConf, x: str) -> dict[str, dict[str, dict]]:
    """sweep/fits.json: for every metric with a ``fit``, one scaling-law fit per series (a fit that
    cannot be made, e.g. too few finished points, is recorded with its reason, and the sweep goes on)."""
    from raypref.scaling import fit

    fits: dict[str, dict[str, dict]] = {}
    for m in sw.metrics:
        if not m.fit:
            continue
        # point_configs has checked that a fitted metric's x is numeric (a metric, or a grid key of numbers)
        for label, rs in _series(rows, sw, m.name, x)[2].items():
            try:
                sigma, unweighted = _sigma(rs, m.name)
                f = fit(m.fit, [r[x] for r in rs], [r[m.name] for r in rs], sigma).as_dict()
                if unweighted:
                    f["unweighted"] = unweighted
                text = f["formula"] + "".join(f"; {k} = {v:.4g} +- {f['stderr'][k]:.2g}" for k, v in f["params"].items()
                                              if f["stderr"].get(k) is not None and k in ("c", "b"))
                text += " (b at the edge of its range: the points do not fix where it levels off)" if f.get("at_bound") else ""
                text += f" (unweighted: {unweighted})" if unweighted else ""
            except ValueError as e:
                f, text = {"form": m.fit, "error": str(e)}, f"no fit: {e}"
            fits.setdefault(m.name, {})[label] = {"x": x, **f}
            print(f"[sweep] fit {m.name} vs {x}{f' ({label})' if label else ''}: {text}", flush=True)
    if fits:
        (out / "fits.json").write_text(json_text(fits))
    else:
        (out / "fits.json").unlink(missing_ok=True)
    return fits


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def plot_metric(rows: list[dict], out: Path, sw: SweepConf, metric: str, x: str, fits: dict | None = None) -> str | None:
    """<metric>.png: the metric against ``x`` (sweep.x or the first grid key), one line per
    combination of the other grid keys, error bars from <metric>_low/_high where given, and the
    metric's scaling-law fit (dashed; dotted: the level it settles at) where one was made."""
    numeric, labels, series = _series(rows, sw, metric, x)
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, rs in series.items():
        xs = [r[x] if numeric else labels.index(str(r[x])) for r in rs]
        ys = [r[metric] for r in rs]
        lo, hi = [r.get(f"{metric}_low") for r in rs], [r.get(f"{metric}_high") for r in rs]
        bars = all(_num(v) is not None for v in lo + hi)
        err = [[y - a for y, a in zip(ys, lo)], [b - y for y, b in zip(ys, hi)]] if bars else None
        if bars and min(err[0] + err[1]) < 0:
            # matplotlib refuses a negative bar, which would end the sweep after every point ran
            outside = [r["point"] for r, a, y, b in zip(rs, lo, ys, hi) if not a <= y <= b]
            print(f"[sweep] plot {metric}{f' ({label})' if label else ''}: no error bars, as the {metric} interval "
                  f"of {_some(outside, ', ')} does not hold its value", flush=True)
            bars = False
        if bars:
            line = ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label or None).lines[0]
        else:
            (line,) = ax.plot(xs, ys, marker="o", label=label or None)
        f = (fits or {}).get(metric, {}).get(label)
        if numeric and f and "params" in f:
            _draw_fit(ax, f, min(xs), max(xs), line.get_color())
    if not numeric:
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    elif sw.log_x and all(r[x] > 0 for rs in series.values() for r in rs):
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.set_title(f"{metric} vs {x} ({sum(map(len, series.values()))} points)")
    fig.tight_layout()
    name = f"{metric}.png"
    fig.savefig(out / name, dpi=90)
    plt.close(fig)
    return name


def _draw_fit(ax, f: dict, lo: float, hi: float, color) -> None:
    from raypref.scaling import Fit

    fit = Fit(f["form"], f["params"], f["stderr"], f["n"], f["rmse"], x0=f["x0"])
    xs = np.geomspace(lo, hi, 100) if lo > 0 else np.linspace(lo, hi, 100)
    note = " (b at its bound: no level found)" if f.get("at_bound") else ""
    ax.plot(xs, fit.predict(xs), "--", color=color, alpha=0.7, label=f"fit: {fit.formula()}{note}")
    if f["form"] == "saturating_power_law" and not f.get("at_bound"):
        ax.axhline(f["params"]["c"], ls=":", color=color, alpha=0.5)
