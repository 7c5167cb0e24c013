"""raypref.session: a local Ray with its dashboard on loopback by default; Ray Data settings in the driver."""

import os
import re
import subprocess
import sys

CODE = """
import sys
from raypref.config import RayConf
from raypref.session import init_ray
init_ray(RayConf(num_cpus=1, **({} if sys.argv[1] == "default" else {"include_dashboard": False}))).shutdown()
"""


def _start(tmp_path, dashboard: str) -> str:
    # a process of its own: init_ray must start a Ray, not find the session-wide fixture's
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", CODE, dashboard], capture_output=True, text=True, env=env,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_local_ray_dashboard_on_loopback_by_default(tmp_path):
    assert re.search(r"\[ray\] new local Ray, 1 CPUs, dashboard http://127\.0\.0\.1:\d+", _start(tmp_path, "default"))
    assert "[ray] new local Ray, 1 CPUs, no dashboard (ray.include_dashboard)" in _start(tmp_path, "off")


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
