"""Actors called directly (no Ray): tiny real-architecture checkpoints loaded by path."""

import numpy as np
import pyarrow as pa
import pytest

from raypref import images as I
from raypref import schema as S
from raypref.registry import resolve


def _prompts(*texts):
    return pa.table({S.PROMPT_ID: [S.prompt_id(t) for t in texts], S.PROMPT: list(texts)})


def test_generator_appends_seeded_samples(tiny_sd):
    gen_cls = resolve("diffusers")
    g = gen_cls(model=tiny_sd, name="a", num_samples=3, num_inference_steps=2, guidance_scale=2.0)
    out = g(_prompts("a red circle", "a blue square"))
    assert out.column(S.IMAGE).to_pylist()[0].__len__() == 3
    img = I.decode(out.column(S.IMAGE)[0][0].as_py())
    assert img.size == (32, 32)
    seeds = out.column(S.SEED).to_pylist()
    assert len(set(seeds[0] + seeds[1])) == 6
    again = g(_prompts("a red circle"))
    assert again.column(S.SEED).to_pylist()[0] == seeds[0]  # same prompt, same seeds
    assert again.column(S.IMAGE).to_pylist()[0] == out.column(S.IMAGE).to_pylist()[0]  # same images
    # a second generator appends to the same group row
    g2 = gen_cls(model=tiny_sd, name="b", num_samples=2, num_inference_steps=2)
    both = g2(out)
    assert len(both.column(S.SAMPLE_ID)[0]) == 5
    assert both.column(S.GENERATOR).to_pylist()[0] == ["a"] * 3 + ["b"] * 2


def test_embedding_noise_changes_images(tiny_sd):
    gen_cls = resolve("diffusers")
    kw = dict(model=tiny_sd, name="a", num_samples=2, num_inference_steps=2, guidance_scale=1.0)
    plain = gen_cls(**kw)(_prompts("two green stars")).column(S.IMAGE).to_pylist()[0]
    noisy = gen_cls(**kw, embedding_noise_sigma=5.0)(_prompts("two green stars")).column(S.IMAGE).to_pylist()[0]
    a = np.asarray(I.decode(plain[0]), dtype=np.float32)
    b = np.asarray(I.decode(noisy[0]), dtype=np.float32)
    assert np.abs(a - b).mean() > 0


def test_scorers_add_float_columns(tiny_sd, tiny_clip):
    gen = resolve("diffusers")(model=tiny_sd, num_samples=2, num_inference_steps=2)
    groups = gen(_prompts("a red circle", "a yellow triangle"))
    clip = resolve("clip_score")(name="clip", model=tiny_clip, floor_at_zero=False)
    jpeg = resolve("jpeg_compressibility")(name="jpeg")
    out = jpeg(clip(groups))
    for col in (S.score_column("clip"), S.score_column("jpeg")):
        vals = out.column(col).to_pylist()
        assert [len(v) for v in vals] == [2, 2]
        assert all(np.isfinite(v).all() for v in vals)
    assert out.schema.field(S.score_column("clip")).type == pa.list_(pa.float32())
    assert all(x < 0 for x in out.column(S.score_column("jpeg")).to_pylist()[0])  # -kB
    floored = resolve("clip_score")(name="c2", model=tiny_clip)(groups)
    assert min(min(v) for v in floored.column("score_c2").to_pylist()) >= 0
    with pytest.raises(ValueError, match="two scorers write"):
        resolve("jpeg_compressibility")(name="jpeg")(out)


def test_generated_pipeline_loads_with_from_pretrained(tiny_sd):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size


def test_registry_errors():
    with pytest.raises(ValueError, match="cannot import module"):
        resolve("no_such_module:Thing")
    with pytest.raises(ValueError, match="has no 'Nope'"):
        resolve("actors.clip_score:Nope")
    with pytest.raises(ValueError, match="not a registry name"):
        resolve("bogus")
