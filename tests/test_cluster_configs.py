"""cluster/: the launcher configs pass the checks `ray up` runs on them, keep the dashboard on
loopback, share the launching machine's auth token with every node, and install the same pins as
the Makefile; the job runtime_env is one Ray accepts."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ["cluster/local.yaml", "cluster/aws.yaml"]


def _load(name):
    return yaml.safe_load((ROOT / name).read_text())


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_config_passes_ray_up_validation(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_load(name)))  # what `ray up` does before it starts anything
    bad = _load(name)
    bad["head_start_ray_comands"] = bad.pop("head_start_ray_commands")  # a typo must not pass
    with pytest.raises(Exception, match="head_start_ray_comands"):
        validate_config(prepare_config(bad))


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_config_dashboard_on_loopback_and_pinned_install(name):
    c = _load(name)
    starts = c["head_start_ray_commands"] + c["worker_start_ray_commands"]
    head = [s for s in c["head_start_ray_commands"] if "ray start" in s]
    assert head and all("--dashboard-host=127.0.0.1" in s for s in head)
    assert all("RAY_USAGE_STATS_ENABLED=0" in s for s in starts if "ray start" in s)
    make_pins = set(re.findall(r"torch(?:vision)?==[\d.]+", (ROOT / "Makefile").read_text()))
    setup = " ".join(c["setup_commands"])
    assert make_pins and make_pins <= set(re.findall(r"torch(?:vision)?==[\d.]+", setup))
    assert "-r requirements.lock" in setup
    assert c["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # one token on every node (Ray >= 2.60)


def test_job_runtime_env_is_valid_and_leaves_local_state_behind():
    from ray.runtime_env import RuntimeEnv

    env = RuntimeEnv(**_load("cluster/runtime_env.yaml"))
    assert env["working_dir"] == "."
    assert {".venv/", "runs/", ".git/"} <= set(env["excludes"])
    assert env["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"
