"""A build killed mid-way (SIGKILL to the whole process group: the CLI's driver and its Ray) and
rerun, with one prompt added, skips the prompt shards already written, runs only the unfinished and
new ones, and never duplicates a row; an empty prompt line is quarantined."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pds
import pytest
import yaml

from conftest import REPO, tiny_config_dict
from raypref import schema as S

pytestmark = pytest.mark.slow
PROMPTS = [f"{n} {c} circles" for n in ("one", "two", "three") for c in ("red", "blue")]
NEW = "four green circles"


def _run(cfg_path: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "raypref.cli", "build", "--config", str(cfg_path)], env=env,
                            cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _scored(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_killed_build_resumes_without_duplicates(ray_session, tmp_path, tiny_sd, capsys):
    from raypref import stages
    from raypref.config import validate

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:3] + ["   "] + PROMPTS[3:]) + "\n")  # line 4 is empty: quarantined
    log, delay = tmp_path / "scored.log", tmp_path / "delay"
    delay.write_text("0.8")
    cfg = tiny_config_dict(tmp_path / "run", prompts, shard_size=1)
    cfg["ray"]["num_cpus"] = 4
    cfg["build"]["generators"][0].update(num_samples=2, pool={"batch_size": 1, "num_cpus": 1})
    slow = {"name": "slow", "cls": "tests.slow_scorer:SlowJpeg", "args": {"log": str(log), "delay": str(delay)},
            "pool": {"batch_size": 1, "num_cpus": 1}}
    cfg["build"]["scorers"] = [slow]
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    groups = tmp_path / "run" / "build" / "groups"

    # the first run is the CLI in a process group of its own, with its own local Ray, so that one
    # SIGKILL takes the driver and every Ray process with it
    first = _run(tmp_path / "cfg.yaml", dict(os.environ, PYTHONPATH=str(REPO)))
    deadline = time.time() + 240
    while time.time() < deadline and not (groups.exists() and any(groups.glob("*.parquet"))):
        assert first.poll() is None, f"build ended before the kill:\n{first.stdout.read()}"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    # the kill may cut a file's write short (Ray Data writes in place): the rerun sets such a file aside
    whole = [p for p in groups.glob("*.parquet") if _readable(p)]
    kept = {p.name: p.stat().st_mtime_ns for p in whole}
    done = set(pds.dataset(whole, format="parquet").to_table(columns=[S.PROMPT]).column(S.PROMPT).to_pylist())
    assert 1 <= len(done) < len(PROMPTS), "the kill should land mid-build"
    assert not (tmp_path / "run" / "build" / "pairs").exists()

    # the rerun also brings a prompt the first run never had: resume serves growing prompt files too. It
    # runs in this process, on the session's Ray, without the delay: there is no kill to land
    prompts.write_text(prompts.read_text() + NEW + "\n")
    scored_before = len(_scored(log))
    delay.write_text("0")
    capsys.readouterr()
    stages.build(validate(cfg))  # as the CLI runs it, with its summary line
    out = capsys.readouterr().out
    rerun = set(_scored(log)[scored_before:])
    assert rerun == set(PROMPTS + [NEW]) - done  # only the unfinished and the new prompts ran
    # the first run's files are untouched; every prompt is there exactly once
    assert all(groups.joinpath(n).stat().st_mtime_ns == t for n, t in kept.items())
    table = pds.dataset(groups, format="parquet").to_table(columns=[S.PROMPT_ID, S.PROMPT])
    assert sorted(table.column(S.PROMPT).to_pylist()) == sorted(PROMPTS + [NEW])
    samples = pds.dataset(tmp_path / "run" / "build" / "samples", format="parquet").to_table(columns=[S.SAMPLE_ID])
    assert samples.num_rows == 2 * 7 and len(set(samples.column(S.SAMPLE_ID).to_pylist())) == samples.num_rows
    assert "[build] 7 prompts -> 14 samples" in out and "1 quarantined [prompts: empty prompt 1]" in out


def _readable(path) -> bool:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(path)
        return True
    except (pa.ArrowInvalid, OSError):
        return False


def test_files_a_kill_cut_short_are_set_aside_and_named(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raypref.resume import set_aside_torn

    d = tmp_path / "groups"
    (d / "sub").mkdir(parents=True)
    pq.write_table(pa.table({"x": [1]}), d / "whole.parquet")
    (d / "sub" / "torn.parquet").write_bytes(b"PAR1")  # what a SIGKILL mid-write leaves: the magic, no footer
    assert set_aside_torn(d) == [tmp_path / "groups.torn" / "sub" / "torn.parquet"]
    assert [p.name for p in d.rglob("*.parquet")] == ["whole.parquet"]
    assert "1 file(s) in" in capsys.readouterr().out and (tmp_path / "groups.torn" / "sub" / "torn.parquet").read_bytes() == b"PAR1"
    assert set_aside_torn(d) == [] and set_aside_torn(tmp_path / "none") == []


def test_a_rerun_filters_through_the_one_checkpoint_actor_the_pool_fit_check_counts(tmp_path):
    """Ray Data's checkpoint filter pool grows to 10 actors by default; on a Ray the stage's pools all
    but fill, the ones it could not place kept the filter from finishing: a killed eval, rerun as the
    CLI on 4 CPUs (a generator and a scorer of 1 CPU each), waited for ever."""
    from ray.data import DataContext

    from raypref.build import CHECKPOINT_FILTER_CPUS
    from raypref.resume import checkpointed

    before = DataContext.get_current().checkpoint_config
    with checkpointed("id", tmp_path / "_checkpoint", tmp_path / "out"):
        conf = DataContext.get_current().checkpoint_config
        assert conf.checkpoint_actor_pool_max_size == 1 and conf.checkpoint_actor_pool_min_size == 1
        assert conf.checkpoint_actor_pool_max_size * 1.0 == CHECKPOINT_FILTER_CPUS  # what check_pools_fit reserves
        assert not conf.delete_checkpoint_on_success
    assert DataContext.get_current().checkpoint_config is before
