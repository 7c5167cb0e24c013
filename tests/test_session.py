"""raypref.session: a local Ray with its dashboard on loopback by default; Ray Data settings in the driver."""

import os
import re

import pytest


def test_local_ray_dashboard_on_loopback_by_default(ray_started_line):
    # the session-wide Ray is started by init_ray from RayConf's defaults (conftest), as a stage starts it
    try:
        import ray.dashboard.optional_deps  # noqa: F401
    except ImportError:
        pytest.skip("a minimal Ray without ray[default] starts no dashboard")
    if not ray_started_line:  # init_ray found a Ray already up and said nothing
        pytest.skip("a Ray was started before the session fixture")
    assert re.fullmatch(r"\[ray\] new local Ray, 8 CPUs, dashboard http://127\.0\.0\.1:\d+", ray_started_line), ray_started_line


def test_a_ray_without_a_dashboard_says_so():
    from raypref.config import RayConf
    from raypref.session import started_line

    assert RayConf().include_dashboard and RayConf().dashboard_host == "127.0.0.1"
    assert started_line(1, None) == "[ray] new local Ray, 1 CPUs, no dashboard (ray.include_dashboard)"
    assert started_line(2, "127.0.0.1:8265") == "[ray] new local Ray, 2 CPUs, dashboard http://127.0.0.1:8265"


def test_ray_data_settings_apply_to_the_driver(monkeypatch):
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


def test_the_rays_workers_reach_its_state_api_with_other_rays_on_the_host(ray_session, ray_started_line):
    # Ray Train's placement-group cleaner asks Ray's state API, from a worker, whether the run's controller lives;
    # with other Rays on the host that API could not tell which was its own, and the cleaner's watch ended
    try:
        import ray.dashboard.optional_deps  # noqa: F401
    except ImportError:
        pytest.skip("a minimal Ray without ray[default] has no state API")
    if not ray_started_line:
        pytest.skip("a Ray was started before the session fixture")
    ray = ray_session

    @ray.remote(num_cpus=0)
    class Probe:
        def own_state(self):
            from ray._private import services
            from ray.dashboard.utils import get_address_for_submission_client
            from ray.util.state import get_actor

            # as on a host where another Ray runs (this process is killed after)
            services.find_gcs_addresses = lambda: frozenset({"192.0.2.1:6379", "192.0.2.1:6380"})
            url = os.environ.pop("RAY_API_SERVER_ADDRESS", None)
            try:
                get_address_for_submission_client(None)
                unaided = "found"
            except ConnectionError as e:
                unaided = str(e)
            if url is not None:
                os.environ["RAY_API_SERVER_ADDRESS"] = url
            return unaided, get_actor(ray.get_runtime_context().get_actor_id()).state

    probe = Probe.remote()
    try:
        unaided, state = ray.get(probe.own_state.remote(), timeout=120)
    finally:
        ray.kill(probe)
    assert unaided.startswith("Found multiple active Ray instances")  # what the workers met without the address
    assert state == "ALIVE"


def test_the_workers_are_given_a_dashboard_address_they_can_reach():
    from raypref.session import api_server_url

    assert api_server_url("127.0.0.1", 8265) == "http://127.0.0.1:8265"
    assert api_server_url("0.0.0.0", 8266) == "http://127.0.0.1:8266"  # bound everywhere: reached on loopback
    assert api_server_url("::", 8267) == "http://[::1]:8267"


def test_the_dashboard_port_is_rays_default_unless_taken():
    import socket

    from raypref.session import DEFAULT_DASHBOARD_PORT, dashboard_port

    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", DEFAULT_DASHBOARD_PORT))
        holder.listen()
    except OSError:
        pass  # another Ray's dashboard holds it already: the same case
    try:
        port = dashboard_port("127.0.0.1")
        assert port != DEFAULT_DASHBOARD_PORT  # Ray refuses a port given it that is taken: another is chosen
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # and that one is free
    finally:
        holder.close()
