"""A build killed mid-way (SIGKILL to the whole process group: driver and its Ray) and rerun, with
one prompt added, skips the prompt shards already written, runs only the unfinished and new ones,
and never duplicates a row; an empty prompt line is quarantined."""

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


def test_killed_build_resumes_without_duplicates(tmp_path, tiny_sd):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:3] + ["   "] + PROMPTS[3:]) + "\n")  # line 4 is empty: quarantined
    cfg = tiny_config_dict(tmp_path / "run", prompts, shard_size=1)
    cfg["ray"]["num_cpus"] = 4
    cfg["build"]["generators"][0].update(num_samples=2, pool={"batch_size": 1, "num_cpus": 1})
    cfg["build"]["scorers"] = [{"name": "slow", "cls": "slow_scorer:SlowJpeg", "pool": {"batch_size": 1, "num_cpus": 1}}]
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    log = tmp_path / "scored.log"
    # the driver's environment reaches the Ray workers of the cluster it starts
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'tests'}:{REPO}", RAYPREF_TEST_SCORED_LOG=str(log), RAYPREF_TEST_SLOW_S="0.8")
    groups = tmp_path / "run" / "build" / "groups"

    first = _run(tmp_path / "cfg.yaml", env)
    deadline = time.time() + 240
    while time.time() < deadline and not (groups.exists() and any(groups.glob("*.parquet"))):
        assert first.poll() is None, f"build ended before the kill:\n{first.stdout.read()}"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    kept = {p.name: p.stat().st_mtime_ns for p in groups.glob("*.parquet")}
    done = set(pds.dataset(groups, format="parquet").to_table(columns=[S.PROMPT]).column(S.PROMPT).to_pylist())
    assert 1 <= len(done) < len(PROMPTS), "the kill should land mid-build"
    assert not (tmp_path / "run" / "build" / "pairs").exists()

    # the rerun also brings a prompt the first run never had: resume serves growing prompt files too
    prompts.write_text(prompts.read_text() + NEW + "\n")
    scored_before = len(_scored(log))
    second = _run(tmp_path / "cfg.yaml", dict(env, RAYPREF_TEST_SLOW_S="0"))  # nothing left to land a kill in
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out
    rerun = set(_scored(log)[scored_before:])
    assert rerun == set(PROMPTS + [NEW]) - done  # only the unfinished and the new prompts ran
    # the first run's files are untouched; every prompt is there exactly once
    assert all(groups.joinpath(n).stat().st_mtime_ns == t for n, t in kept.items())
    table = pds.dataset(groups, format="parquet").to_table(columns=[S.PROMPT_ID, S.PROMPT])
    assert sorted(table.column(S.PROMPT).to_pylist()) == sorted(PROMPTS + [NEW])
    samples = pds.dataset(tmp_path / "run" / "build" / "samples", format="parquet").to_table(columns=[S.SAMPLE_ID])
    assert samples.num_rows == 2 * 7 and len(set(samples.column(S.SAMPLE_ID).to_pylist())) == samples.num_rows
    assert "[build] 7 prompts -> 14 samples" in out and "1 quarantined [prompts: empty prompt 1]" in out
