"""raypref.session: a local Ray with its dashboard on loopback by default; Ray Data settings in the driver."""

import os
import re
import subprocess
import sys

CODE = """
from raypref.config import RayConf
from raypref.session import init_ray
init_ray(RayConf(num_cpus=1)).shutdown()
init_ray(RayConf(num_cpus=1, include_dashboard=False)).shutdown()
"""


def _start(tmp_path) -> str:
    # a process of its own: init_ray must start a Ray, not find the session-wide fixture's; one process
    # starts both, one after the other (a Python and its imports fewer)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env,
                         timeout=180, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_local_ray_dashboard_on_loopback_by_default(tmp_path):
    default, off = _start(tmp_path).strip().splitlines()[-2:]
    assert re.fullmatch(r"\[ray\] new local Ray, 1 CPUs, dashboard http://127\.0\.0\.1:\d+", default), default
    assert off == "[ray] new local Ray, 1 CPUs, no dashboard (ray.include_dashboard)"


def test_ray_data_settings_apply_to_the_driver(monkeypatch):
    import pytest
    from ray.data import DataContext

    from raypref.config import ConfigError, RayConf
    from raypref.session import set_data_context

    ctx = DataContext.get_current()
    monkeypatch.setattr(ctx, "target_max_block_size", ctx.target_max_block_size)  # restored after the test
    monkeypatch.setenv("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "32")
    set_data_context(RayConf(parquet_footer_actors=2, data_context={"target_max_block_size": 12345}))
    assert os.environ["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] == "2" and ctx.target_max_block_size == 12345
    set_data_context(RayConf(parquet_footer_actors=None))  # leaves the variable as set
    assert os.environ["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] == "2"
    with pytest.raises(ConfigError, match=r"ray\.data_context\.no_such_knob"):
        set_data_context(RayConf(data_context={"no_such_knob": 1}))
