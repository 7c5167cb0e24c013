"""Issue 4's end-to-end check: a build with every general built-in scorer (tiny checkpoints; not the shapes
world's three, nor reward_model, a trained export, which tests/test_reward_model.py builds with), each in its own
actor pool, writes one column per scorer and aspect; the LLM judge talks to a real chat-completions
server on loopback that fails on purpose, and the build completes and reports each failure."""

import json

import pyarrow.dataset as pds
import pytest

from raypref import schema as S
from raypref.build import run_build
from raypref.config import GeneratorConf, load_config

pytestmark = pytest.mark.slow

EXPECTED = [
    "score_tifa", "score_clip", "score_aesthetic", "score_pickscore", "score_hpsv2", "score_imagereward",
    "score_caption", "score_caption_precision", "score_caption_recall", "score_owl", "score_owl_count",
    "score_faces", "score_faces_present", "score_jpeg", "score_judge", "score_judge_prompt_following",
    "score_judge_fidelity", "score_judge_aesthetic", "score_judge_harmlessness", "rationale_tifa",
    "rationale_caption", "rationale_owl", "rationale_judge", "judge_events_judge",
    "score_vqascore", "score_vqascore_no", "rationale_vqascore",
]


def test_every_scorer_in_its_own_pool(ray_session, tmp_path):
    from test_llm_judge import JudgeServer, http_args, rating

    from raypref.config import DEFAULT_CONFIG
    from raypref.prompts import read_prompts

    # renders in place of the config's tiny diffusion model: one model fewer to load, and this checks the scorers
    cfg = load_config(DEFAULT_CONFIG.parent / "tiny_all_scorers.yaml", [f"output_dir={tmp_path}"])
    cfg.build.generators = [GeneratorConf(name="render", cls="shapes_render", num_samples=2, args={"true_renders": 1},
                                          pool=cfg.build.generators[0].pool)]
    first, second = read_prompts(cfg.build.prompts, limit=cfg.build.limit).column(S.PROMPT).to_pylist()

    def script(text, attempt, n_images):
        if first in text:  # rate-limited once, then answered
            return (429, {"Retry-After": "0"}, b"{}", 0.0) if attempt == 0 else (200, {}, rating(n_images), 0.0)
        assert second in text
        return (500, {}, b"{}", 0.0) if attempt == 0 else (200, {}, b"<html>oops</html>", 0.0)  # then garbage

    with JudgeServer(script) as server:
        judge = cfg.scorer("judge")
        judge.model = ""
        judge.args = http_args(server.base_url, api_key_env=None, timeout_s=30.0)
        summary = run_build(cfg)
    samples = pds.dataset(tmp_path / "build" / "samples", format="parquet").to_table()
    assert samples.num_rows == 4 and summary["pairs"] >= 1
    missing = [c for c in EXPECTED if c not in samples.column_names]
    assert not missing, f"columns not written: {missing}"
    # the weighted scorers (AGFSync recipe) give every sample an aggregate; the others are recorded
    for c in ("score_tifa", "score_clip", "score_aesthetic", "score_pickscore", "score_hpsv2", "score_imagereward", S.SCORE):
        v = samples.column(c).to_pylist()
        assert all(x == x for x in v), f"{c} has NaN: {v}"
    # one request per image (2 prompts x 2 samples): the first prompt's answered after a 429, the
    # second's after a 500 with garbage, which is counted and left NaN, never a crash
    assert summary["judge_events"] == {"judge": {"http_429": 2, "http_5xx": 2, "malformed": 2, "ok": 2, "requests": 4}}
    judged = {r[S.PROMPT]: r["score_judge"] for r in samples.select([S.PROMPT, "score_judge"]).to_pylist()}
    assert judged[first] == pytest.approx(7.75) and judged[second] != judged[second]
    assert json.loads((tmp_path / "build" / "summary.json").read_text())["pairs"] == summary["pairs"]
