"""An eval whose two sides both generate builds its scorer's actors once, not once per side, and
keeps what it wrote and how it resumes."""

import time

import pyarrow.parquet as pq
import pytest

from raypref import schema as S


def _cfg(tmp_path, log, unet):
    from raypref.config import validate

    return validate({
        "output_dir": str(tmp_path / "run"), "ray": {"num_cpus": 8},
        "build": {"generators": [{"name": "shapes", "cls": "shapes_render", "num_samples": 2, "args": {"true_renders": 2},
                                  "pool": {"batch_size": 2, "num_cpus": 0.5}}],
                  "scorers": [{"name": "jpeg", "cls": "tests.counted_scorer:CountedJpeg", "args": {"log": str(log)},
                               "pool": {"concurrency": 2, "batch_size": 2, "num_cpus": 0.5}}]},
        # the shapes renderer takes no unet: both sides draw the same images, so every pair ties
        "eval": {"prompts": "shapes:eval", "limit": 4, "num_samples": 2, "scorer": "jpeg", "unet": str(unet),
                 "shard_size": 2},
    })


def _builds(log) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_both_sides_are_scored_by_one_build_of_each_scorer_actor(ray_session, tmp_path):
    from raypref.evaluate import run_eval

    log, unet = tmp_path / "builds.log", tmp_path / "unet"
    unet.mkdir()
    (unet / "diffusion_pytorch_model.safetensors").write_bytes(b"v1")
    total = ray_session.cluster_resources()["CPU"]
    r = run_eval(_cfg(tmp_path, log, unet))
    assert _builds(log) == 2  # the pool's two actors, for both sides (each side built its own two before)
    assert (r["prompts"], r["n"], r["ties"]) == (4, 8, 8)
    scores = pq.read_table(tmp_path / "run" / "eval" / "scores.parquet").to_pydict()
    assert scores[S.base_column("score_jpeg")] == scores[S.tuned_column("score_jpeg")]
    assert all(s < 0 for s in scores[S.base_column("score_jpeg")])  # real scores, not a default
    # the shared actors end with the eval: a sweep's next stage gets their CPUs back
    deadline = time.time() + 30
    while ray_session.available_resources().get("CPU", 0) < total and time.time() < deadline:
        time.sleep(0.2)
    assert ray_session.available_resources().get("CPU", 0) == pytest.approx(total)

    # a rerun keeps both sides; weights changed in place rescore the tuned side alone, in its own pool
    def files(side):
        return {f.name: f.stat().st_mtime_ns for f in (tmp_path / "run" / "eval" / side / "scores").glob("*.parquet")}

    kept = {side: files(side) for side in ("base", "tuned")}
    assert run_eval(_cfg(tmp_path, log, unet))["ties"] == 8 and _builds(log) == 2
    (unet / "diffusion_pytorch_model.safetensors").write_bytes(b"v2")
    assert run_eval(_cfg(tmp_path, log, unet))["ties"] == 8 and _builds(log) == 4
    assert files("base") == kept["base"] and files("tuned") != kept["tuned"]


def test_each_stage_actor_sends_its_batches_to_a_host_of_its_own_and_keeps_it_when_restarted(ray_session, tmp_path):
    import pyarrow as pa
    import ray
    from PIL import Image

    from raypref import images as I
    from raypref.config import PoolConf, ScorerConf
    from raypref.shared_scorer import ToHosts, scorer_hosts

    conf = ScorerConf(name="jpeg", cls="tests.counted_scorer:CountedJpeg", pool=PoolConf(concurrency=2, num_cpus=0.5))
    calls = tmp_path / "calls.log"
    batch = pa.table({S.PROMPT_ID: ["p"], S.PROMPT: ["a red circle"], S.SAMPLE_ID: [["a"]],
                      S.IMAGE: [[I.encode(Image.new("RGB", (8, 8), (200, 10, 10)))]]})

    def served() -> list[str]:
        return calls.read_text().split()

    with scorer_hosts(conf, {"name": "jpeg", "log": str(tmp_path / "builds.log"), "calls": str(calls)}) as hosts:
        # as Ray Data makes a stage's actors, one after another: 8 of them over the 2 hosts
        for stage in [ToHosts(hosts.actors, hosts.tickets) for _ in range(8)]:
            stage(batch)
            stage(batch)  # a second batch goes where the first went
        pids = served()
        # stage actor k scores on host k mod 2, both its batches (a random start put two in a row on one host
        # half the time, and the round robin then kept them in step there)
        assert len(set(pids)) == 2 and pids == [pids[0], pids[0], pids[2], pids[2]] * 4

        # a stage actor that Ray restarts keeps its host (a new number would have put it on the other's)
        @ray.remote(num_cpus=0, max_restarts=1, max_task_retries=-1)
        class Stage:
            def __init__(self, actors, tickets):
                self.to = ToHosts(actors, tickets)

            def score(self, b):
                self.to(b)

        first = Stage.remote(hosts.actors, hosts.tickets)
        ray.get(first.score.remote(batch))
        second = Stage.remote(hosts.actors, hosts.tickets)
        ray.get(second.score.remote(batch))
        ray.kill(second, no_restart=False)
        ray.get(second.score.remote(batch))
        a, b, b_again = served()[16:]
        assert a != b and b_again == b
