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


def test_images_the_safety_checker_blanks_are_left_out_and_noted(tiny_sd):
    import torch

    from raypref import quarantine as Q

    gen_cls = resolve("diffusers")
    g = gen_cls(model=tiny_sd, name="a", num_samples=3, num_inference_steps=2, guidance_scale=2.0)
    plain = g(_prompts("a red circle", "a blue square"))

    # SD 1.x's checker, as diffusers calls it: it blanks what it flags and says which. Here it flags the
    # second image of the first prompt and all three of the second
    def checker(image, device, dtype):
        flags = [False, True, False, True, True, True]
        image[torch.tensor(flags)] = 0.0
        return image, flags

    g.pipe.run_safety_checker = checker
    out = g(_prompts("a red circle", "a blue square"))
    ids = out.column(S.SAMPLE_ID).to_pylist()
    before = plain.column(S.SAMPLE_ID).to_pylist()
    assert ids == [[before[0][0], before[0][2]], []]
    # the images kept are those of the unflagged seeds, unchanged
    assert out.column(S.IMAGE).to_pylist()[0] == [plain.column(S.IMAGE)[0][i].as_py() for i in (0, 2)]
    assert out.column(S.SEED).to_pylist()[0] == [plain.column(S.SEED)[0][i].as_py() for i in (0, 2)]
    noted = Q.explode(out).to_pylist()
    assert [n[S.ROW] for n in noted] == [before[0][1], *before[1]]
    assert all(n[S.STAGE] == "generate" and n[S.REASON].startswith("safety checker: ") for n in noted)
    # a second generator still appends to those rows
    both = gen_cls(model=tiny_sd, name="b", num_samples=1, num_inference_steps=2)(out)
    assert [len(x) for x in both.column(S.SAMPLE_ID).to_pylist()] == [3, 1]


def test_embedding_noise_changes_images(tiny_sd):
    gen_cls = resolve("diffusers")
    kw = dict(model=tiny_sd, name="a", num_samples=2, num_inference_steps=2, guidance_scale=1.0)
    plain = gen_cls(**kw)(_prompts("two green stars")).column(S.IMAGE).to_pylist()[0]
    noisy = gen_cls(**kw, embedding_noise_sigma=5.0)(_prompts("two green stars")).column(S.IMAGE).to_pylist()[0]
    assert noisy[0] == plain[0]  # AGFSync's generator keeps a prompt's first sample on the clean embedding
    a = np.asarray(I.decode(plain[1]), dtype=np.float32)
    b = np.asarray(I.decode(noisy[1]), dtype=np.float32)
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



@pytest.mark.parametrize("quality", [0, 150, "keep", 90.5, True])
def test_jpeg_quality_outside_1_to_100_is_refused_naming_the_key(quality):
    # PIL would clamp 0 and 150 silently, and fail on 'keep' only when saving, in every batch
    with pytest.raises(ValueError, match=r"^scorer 'j': args\.quality: Input should be "):
        resolve("jpeg_compressibility")(name="j", quality=quality)
    from PIL import Image

    low, high = (resolve("jpeg_compressibility")(name="j", quality=q).score([Image.effect_noise((64, 64), 64)], [""])
                 for q in (1, 100))
    assert low[0] > high[0]  # -kB: the lower quality's smaller file scores higher

def test_clip_score_can_cut_prompts_to_characters_as_agfsync_does(tiny_clip):
    from PIL import Image

    from raypref.models import resolve_model

    imgs = [Image.new("RGB", (32, 32), (200, 30, 30))] * 2
    long = ["a red circle left of a blue square", "two green stars"]
    cut = resolve("clip_score")(name="c", model="tiny:clip", floor_at_zero=False, prompt_chars=8)
    plain = resolve("clip_score")(name="c", model=resolve_model("tiny:clip"), floor_at_zero=False)
    np.testing.assert_allclose(cut.score(imgs, long), plain.score(imgs, [p[:8] for p in long]), rtol=1e-5)
    assert not np.allclose(plain.score(imgs, long), plain.score(imgs, [p[:8] for p in long]))
    with pytest.raises(ValueError, match=r"args\.prompt_chars: Input should be greater than or equal to 1, got 0"):
        resolve("clip_score")(name="c", model=tiny_clip, prompt_chars=0)


def test_generated_pipeline_loads_with_from_pretrained(tiny_sd):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size


def test_the_registry_knows_which_built_ins_check_their_args():
    from raypref.registry import BUILTIN, CHECK_ARGS

    assert {n for n in BUILTIN if hasattr(resolve(n), "check_args")} == CHECK_ARGS  # config.check_scorer_args relies on it


def test_registry_errors():
    with pytest.raises(ValueError, match="cannot import module"):
        resolve("no_such_module:Thing")
    with pytest.raises(ValueError, match="has no 'Nope'"):
        resolve("actors.clip_score:Nope")
    with pytest.raises(ValueError, match="not a registry name"):
        resolve("bogus")
    # a config entry of one kind naming a class of the other is refused by its key, before any model loads
    from raypref.build import generator_kwargs, scorer_kwargs
    from raypref.config import GeneratorConf, ScorerConf

    with pytest.raises(ValueError, match=r"scorer 'v' cls: 'shapes_render' \(actors.shapes_render:ShapesRenderGenerator\) "
                                         r"is a generator, not a scorer; scorers: aesthetic, "):
        scorer_kwargs(ScorerConf(name="v", cls="shapes_render"))
    with pytest.raises(ValueError, match=r"generator 'g' cls: 'shapes_vqa' \(.*\) is a scorer, not a generator; "
                                         r"generators: diffusers, shapes_render, or 'module:Class'"):
        generator_kwargs(GeneratorConf(name="g", cls="shapes_vqa"))
    import collections

    assert resolve("collections:OrderedDict", "scorer") is collections.OrderedDict  # a class of one's own passes
    with pytest.raises(ValueError, match=r"scorer 'v' cls: 'shapes_vq' is not a scorer name \(aesthetic, .*\) nor"):
        scorer_kwargs(ScorerConf(name="v", cls="shapes_vq"))


def test_actor_args_are_checked_against_the_class():
    from raypref.build import generator_kwargs, scorer_kwargs
    from raypref.config import GeneratorConf, ScorerConf

    # the build's common settings go in only where the class names them; the config's args go in whole
    jpeg = ScorerConf(name="j", cls="jpeg_compressibility", args={"incompressible": True})
    assert scorer_kwargs(jpeg) == {"name": "j", "incompressible": True}
    render = GeneratorConf(name="r", cls="shapes_render", num_samples=3, args={"true_renders": 1})
    kw = generator_kwargs(render)
    assert kw["num_samples"] == 3 and kw["true_renders"] == 1 and "guidance_scale" not in kw and "model" not in kw
    resolve("shapes_render")(**kw)
    # a misspelt argument is an error naming it, not an argument silently dropped
    with pytest.raises(ValueError, match=r"scorer 'j': args.incompresible: actors.compressibility:JpegCompressibility "
                                         r"takes no argument 'incompresible'; its arguments: incompressible, quality"):
        scorer_kwargs(jpeg.model_copy(update={"args": {"incompresible": True}}))
    with pytest.raises(ValueError, match=r"generator 'r': args.true_render:"):
        generator_kwargs(render.model_copy(update={"args": {"true_render": 1}}))
    # a class with **kwargs takes every argument and checks them itself: in its check_args, on the driver
    from raypref.registry import constructor_kwargs

    class Open:
        def __init__(self, name: str = "x", **args):
            pass

    assert constructor_kwargs(Open, {"name": "o", "model": "m"}, {"anything": 1}, "scorer 'o'") == {"name": "o", "model": "m",
                                                                                                   "anything": 1}
    judge = ScorerConf(name="judge", cls="llm_judge", args={"anything": 1})
    with pytest.raises(ValueError, match=r"scorer 'judge': invalid llm_judge args\n  args\.anything: unknown key"):
        scorer_kwargs(judge)
    ok = {"backend": "http", "http": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}}
    assert scorer_kwargs(judge.model_copy(update={"args": ok}))["http"] == ok["http"]


def test_an_actor_arg_of_the_wrong_type_is_named_on_the_driver():
    from raypref.build import generator_kwargs, scorer_kwargs
    from raypref.config import GeneratorConf, ScorerConf

    clip = ScorerConf(name="c", cls="clip_score", model="tiny:clip", args={"prompt_chars": "77"})  # a YAML string
    with pytest.raises(ValueError) as e:
        scorer_kwargs(clip)  # before Ray: it failed as a TypeError inside the actor
    assert str(e.value) == ("scorer 'c': args.prompt_chars: Input should be a valid integer, not a string "
                            "(args.prompt_chars takes int | None)")
    with pytest.raises(ValueError, match=r"^scorer 'o': args\.classes\.1: Input should be a valid string, not an integer"):
        scorer_kwargs(ScorerConf(name="o", cls="owlvit", model="tiny:owlvit", args={"classes": ["circle", 3]}))
    with pytest.raises(ValueError, match=r"^scorer 'j': args\.quality: Input should be a valid integer, not null"):
        scorer_kwargs(ScorerConf(name="j", cls="jpeg_compressibility", args={"quality": None}))
    with pytest.raises(ValueError, match=r"^generator 'r': args\.true_renders: .*integer, not a float"):
        generator_kwargs(GeneratorConf(name="r", cls="shapes_render", args={"true_renders": 1.5}))
    # what the annotation takes passes as given: an int where a float is named, null where None is
    kw = scorer_kwargs(clip.model_copy(update={"args": {"prompt_chars": None, "floor_at_zero": False}}))
    assert kw["prompt_chars"] is None and kw["floor_at_zero"] is False
    assert scorer_kwargs(ScorerConf(name="f", cls="haar_faces", args={"scale_factor": 2}))["scale_factor"] == 2


@pytest.mark.parametrize("cls, model, args, message", [
    ("jpeg_compressibility", "", {"quality": 150}, "args.quality: Input should be less than or equal to 100, got 150"),
    ("clip_score", "tiny:clip", {"prompt_chars": 0}, "args.prompt_chars: Input should be greater than or equal to 1, got 0"),
    ("tifa_vqa", "tiny:blip_vqa", {"answers": "vote"}, "args.answers: Input should be 'choices' or 'generate', got 'vote'"),
    ("tifa_vqa", "tiny:blip_vqa", {"num_beams": 0}, "args.num_beams: Input should be greater than 0, got 0"),
    ("captioner", "tiny:blip_caption", {"max_new_tokens": 0}, "args.max_new_tokens: Input should be greater than 0, got 0"),
    ("vqascore", "tiny:blip_vqa", {"batch_size": -2}, "args.batch_size: Input should be greater than 0, got -2"),
    ("owlvit", "tiny:owlvit", {"nms_iou": 1.5}, "args.nms_iou: Input should be less than or equal to 1, got 1.5"),
    ("haar_faces", "", {"scale_factor": 1.0}, "args.scale_factor: Input should be greater than 1, got 1.0"),
    ("haar_faces", "", {"min_neighbors": -1}, "args.min_neighbors: Input should be greater than or equal to 0, got -1"),
    ("simulated_judge", "", {"noise": -0.5}, "args.noise: Input should be greater than or equal to 0, got -0.5"),
])
def test_an_actor_arg_out_of_range_is_named_on_the_driver_and_refused_when_built(cls, model, args, message):
    from raypref.build import scorer_kwargs
    from raypref.config import ScorerConf

    # before Ray, from the class's annotations: it failed only in the actor's __init__, under Ray
    with pytest.raises(ValueError) as e:
        scorer_kwargs(ScorerConf(name="s", cls=cls, model=model, args=args))
    assert str(e.value) == f"scorer 's': {message}"
    # the same annotation holds for the class built directly (before any model loads: model="" would fail later)
    with pytest.raises(ValueError) as e:
        resolve(cls)(name="s", model=model, **args) if model else resolve(cls)(name="s", **args)
    assert str(e.value) == f"scorer 's': {message}"


def test_a_generator_arg_out_of_range_is_named_on_the_driver_and_refused_when_built():
    from raypref.build import generator_kwargs
    from raypref.config import GeneratorConf

    for args, message in [({"kinds": []}, "args.kinds: List should have at least 1 item after validation, not 0"),
                          ({"kinds": ["upside_down"]}, "args.kinds.0: Input should be 'wrong_colour', 'extra_object', "
                                                       "'moved_object', 'wrong_shape' or 'wrong_count', got 'upside_down'"),
                          ({"true_renders": -1}, "args.true_renders: Input should be greater than or equal to 0, got -1")]:
        with pytest.raises(ValueError) as e:
            generator_kwargs(GeneratorConf(name="r", cls="shapes_render", args=args))
        assert str(e.value) == f"generator 'r': {message}"
        with pytest.raises(ValueError) as e:
            resolve("shapes_render")(name="r", **args)
        assert str(e.value) == f"generator 'r': {message}"


def test_every_shipped_config_passes_its_actors_arg_checks():
    from pathlib import Path

    from raypref.config import load_config
    from raypref.registry import check_arg_types

    checked = 0
    for path in sorted((Path(__file__).parents[1] / "raypref" / "configs").glob("*.yaml")):
        cfg = load_config(path)
        actors = [("generator", g) for g in cfg.build.generators]
        actors += [("scorer", s) for s in cfg.build.scorers + cfg.accuracy.scorers]
        for kind, a in actors:
            check_arg_types(resolve(a.cls, kind), a.args, f"{path.name}: {kind} {a.name!r}")
            checked += bool(a.args)
    assert checked >= 5  # some args were checked, not only empty ones
