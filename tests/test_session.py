"""raypref.session: a new local Ray runs its dashboard on loopback by default, and says where."""

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
