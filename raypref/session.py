"""Ray session handling: a new local Ray by default; RAY_ADDRESS or ray.address joins a cluster.

Token auth (Ray 2.60): a new local Ray started by ray.init() turns token auth on and makes a
token in ~/.ray/auth_token (or RAY_AUTH_TOKEN_PATH). Joining a cluster sends the token from
RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token in token mode only: with
RAY_AUTH_MODE=token, which a job's driver inherits from its cluster and an explicit address needs
set. raypref never turns auth off.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

from raypref.config import ConfigError, RayConf


# "1" where the Ray this process uses was started by raypref (init_ray) with a fixed size, "0" where it
# joined a cluster: set before ray.init, so the Ray's workers (a sweep's points) inherit it; unset where
# someone else started it. The pool-fit check refuses a pipeline only on a Ray it knows cannot grow.
LOCAL_RAY_ENV = "RAYPREF_LOCAL_RAY"


def started_here() -> bool:
    """Whether this process's Ray is one raypref started on this machine (no autoscaler adds to it)."""
    return os.environ.get(LOCAL_RAY_ENV) == "1"


def refuse_or_warn(msg: str) -> None:
    """A stage that would wait for ever for resources (the pool and training fit checks): a ConfigError on a Ray
    raypref started here; elsewhere a warning, as a joined cluster's autoscaler may add nodes."""
    if started_here():
        raise ConfigError(msg)
    print(f"[ray] warning: {msg}; it goes on, in case the cluster's autoscaler adds nodes", flush=True)


def ray_is_local(conf: RayConf) -> bool:
    """Whether the Ray this process uses is, or will be, one raypref starts on this machine: init_ray's
    mark once it ran (a sweep's points inherit it), before that whether no cluster address is configured."""
    mark = os.environ.get(LOCAL_RAY_ENV)
    if mark is not None:
        return mark == "1"
    return not (conf.address or os.environ.get("RAY_ADDRESS"))


# Ray's state API, in a worker of a Ray that ray.init started, finds its Ray from this variable; without it, among
# the host's processes, and with another Ray on the host it raised "Found multiple active Ray instances". Ray
# Train's placement-group cleaner (a detached actor) polls that API to see whether the run's controller lives:
# the error ended its watch, and a controller that died then left its placement group, and CPUs, held.
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"
DEFAULT_DASHBOARD_PORT = 8265  # Ray's


def dashboard_port(host: str) -> int:
    """Ray's default dashboard port where it is free on ``host``, else one the system picks: chosen here rather
    than by Ray, so that the Ray's workers can be told it when they start (API_SERVER_ENV)."""
    try:
        family = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]
    except OSError as e:
        raise ConfigError(f"ray.dashboard_host: {host!r} is not an address of this machine ({e})") from None
    for port in (DEFAULT_DASHBOARD_PORT, 0):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            # as Ray's own check binds: a port that only closed connections linger on is free to it
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                if port == 0:
                    raise ConfigError(f"ray.dashboard_host: the dashboard cannot listen on {host} ({e})") from None
                continue
            return s.getsockname()[1]


@contextmanager
def dashboard_port_lock():
    """Held from choosing the port until ray.init has bound it: two raypref runs starting together would
    otherwise both choose the free 8265, and Ray refuses a port given it that is taken (the second run
    failed, leaving a GCS process behind) where it would have tried the next one itself."""
    with open(Path(tempfile.gettempdir()) / "raypref-dashboard-port.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        yield


def api_server_url(host: str, port: int) -> str:
    """Where the dashboard bound to ``host``:``port`` is reached on this machine."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def init_ray(conf: RayConf):
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    set_data_context(conf)
    if ray.is_initialized():
        return ray
    address = conf.address or os.environ.get("RAY_ADDRESS")
    os.environ[LOCAL_RAY_ENV] = "0" if address else "1"
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        with dashboard_port_lock():
            port = dashboard_port(conf.dashboard_host) if conf.include_dashboard else None
            ctx = ray.init(
                num_cpus=conf.num_cpus,
                include_dashboard=conf.include_dashboard,
                dashboard_host=conf.dashboard_host,
                dashboard_port=port,
                runtime_env={"env_vars": {API_SERVER_ENV: api_server_url(conf.dashboard_host, port)}} if port else None,
                logging_level=logging.WARNING,
            )
        # Ray's own "View the dashboard at" line is INFO, below the level set above
        print(started_line(int(ray.cluster_resources().get("CPU", 0)), ctx.dashboard_url), flush=True)
    return ray


def started_line(cpus: int, dashboard_url: str | None) -> str:
    """The line a new local Ray is announced with: where its dashboard is, or that it has none."""
    where = f"dashboard http://{dashboard_url}" if dashboard_url else "no dashboard (ray.include_dashboard)"
    return f"[ray] new local Ray, {cpus} CPUs, {where}"


def set_data_context(conf: RayConf) -> None:
    """Apply ``ray.parquet_footer_actors``, ``ray.v1_read_max_mb`` and ``ray.data_context`` to this driver's Ray Data.

    They act where a dataset is planned, in the driver: the Parquet readers (Ray's footer indexer,
    raypref.parquet_read) read the variables when each read is planned, and every dataset copies the
    DataContext when it is made.
    """
    from ray.data import DataContext

    if conf.parquet_footer_actors is not None:
        os.environ["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] = str(conf.parquet_footer_actors)
    os.environ["RAYPREF_V1_READ_MAX_MB"] = str(conf.v1_read_max_mb)  # read by raypref.parquet_read
    ctx = DataContext.get_current()
    for key, value in conf.data_context.items():
        if not hasattr(ctx, key) or key.startswith("_"):
            raise ConfigError(f"ray.data_context.{key}: Ray Data's DataContext has no such attribute")
        setattr(ctx, key, value)
