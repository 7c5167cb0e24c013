"""The rendered near-miss generator (actors/shapes_render.py) and its config plumbing (no Ray)."""

import numpy as np
import pyarrow as pa
import pytest

from raypref import images as I
from raypref import schema as S
from raypref.registry import resolve
from raypref.shapes import check, parse_prompt

PROMPTS = ["a red circle left of a blue square", "three green triangles", "a cyan cross at the top"]


def _batch(prompts):
    return pa.table({S.PROMPT_ID: [S.prompt_id(p) for p in prompts], S.PROMPT: prompts})


def test_true_renders_pass_and_near_misses_fail_the_checker():
    gen = resolve("shapes_render")(num_samples=6, true_renders=2, seed=3)
    out = gen(_batch(PROMPTS))
    images = out.column(S.IMAGE).to_pylist()
    assert [len(x) for x in images] == [6, 6, 6]
    assert out.column(S.GENERATOR).to_pylist()[0] == ["shapes-render"] * 6
    for prompt, row in zip(PROMPTS, images):
        verdicts = [check(I.decode(b), parse_prompt(prompt))["overall"] for b in row]
        assert verdicts[:2] == [True, True]  # the prompt drawn as asked
        assert verdicts[2:] == [False] * 4  # each near miss breaks it
    ids = [i for row in out.column(S.SAMPLE_ID).to_pylist() for i in row]
    assert len(set(ids)) == len(ids)


def test_same_seed_same_images_other_seed_other_images():
    a = resolve("shapes_render")(num_samples=4, seed=0)(_batch(PROMPTS[:1])).column(S.IMAGE).to_pylist()
    b = resolve("shapes_render")(num_samples=4, seed=0)(_batch(PROMPTS[:1])).column(S.IMAGE).to_pylist()
    c = resolve("shapes_render")(num_samples=4, seed=1)(_batch(PROMPTS[:1])).column(S.IMAGE).to_pylist()
    assert a == b and a != c


def test_moved_object_only_where_a_prompt_has_a_place():
    gen = resolve("shapes_render")(num_samples=5, true_renders=0, kinds=["moved_object"])
    rel = gen(_batch(PROMPTS[:1])).column(S.IMAGE).to_pylist()[0]
    spec = parse_prompt(PROMPTS[0])
    assert all(check(I.decode(b), spec)["relation"] is False for b in rel)
    with pytest.raises(ValueError, match="no perturbation .* applies to prompt_id"):
        gen(_batch(["three green triangles"]))


def test_bad_settings_and_prompts_name_the_problem():
    with pytest.raises(ValueError, match="true_renders"):
        resolve("shapes_render")(num_samples=4, true_renders=5)
    with pytest.raises(ValueError, match="kinds"):
        resolve("shapes_render")(kinds=["upside_down"])
    # a prompt outside the grammar gets no samples and a quarantine note; the batch's others are drawn
    out = resolve("shapes_render")(num_samples=2)(_batch(["a photo of a cat", PROMPTS[1]]))
    assert [len(x) for x in out.column(S.IMAGE).to_pylist()] == [0, 2]
    [[note], []] = out.column(S.QUARANTINE_NOTES).to_pylist()
    assert note == {S.STAGE: "generate", S.ROW: S.prompt_id("a photo of a cat"),
                    S.REASON: "not a shapes-world prompt: 'a photo of a cat' (generator 'shapes-render' draws none)"}


def test_generator_conf_args_reach_the_actor_and_diffusers_needs_a_model():
    from raypref.build import generator_kwargs
    from raypref.config import GeneratorConf
    from raypref.models import ModelNotFound

    g = GeneratorConf(name="r", cls="shapes_render", num_samples=4, args={"true_renders": 1})
    kw = generator_kwargs(g)
    assert "model" not in kw and kw["true_renders"] == 1 and "args" not in kw  # it loads no model
    out = resolve(g.cls)(**kw)(_batch(PROMPTS[:1]))
    assert [check(I.decode(b), parse_prompt(PROMPTS[0]))["overall"] for b in out.column(S.IMAGE).to_pylist()[0]] \
        == [True, False, False, False]
    with pytest.raises(ModelNotFound, match="generator 'sd' model: no model given"):
        generator_kwargs(GeneratorConf(name="sd"))
    np.testing.assert_equal(out.column(S.STEPS).to_pylist()[0], [0] * 4)
