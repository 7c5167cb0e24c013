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
    with pytest.raises(ValueError, match=r"^scorer 'j': quality: Input should be "):
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
    with pytest.raises(ValueError, match=r"^scorer 'c': prompt_chars: Input should be greater than or equal to 1, got 0"):
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
    ("jpeg_compressibility", "", {"quality": 150}, "quality: Input should be less than or equal to 100, got 150"),
    ("clip_score", "tiny:clip", {"prompt_chars": 0}, "prompt_chars: Input should be greater than or equal to 1, got 0"),
    ("tifa_vqa", "tiny:blip_vqa", {"answers": "vote"}, "answers: Input should be 'choices' or 'generate', got 'vote'"),
    ("tifa_vqa", "tiny:blip_vqa", {"num_beams": 0}, "num_beams: Input should be greater than 0, got 0"),
    ("captioner", "tiny:blip_caption", {"max_new_tokens": 0}, "max_new_tokens: Input should be greater than 0, got 0"),
    ("vqascore", "tiny:blip_vqa", {"batch_size": -2}, "batch_size: Input should be greater than 0, got -2"),
    ("owlvit", "tiny:owlvit", {"nms_iou": 1.5}, "nms_iou: Input should be less than or equal to 1, got 1.5"),
    ("haar_faces", "", {"scale_factor": 1.0}, "scale_factor: Input should be greater than 1, got 1.0"),
    ("haar_faces", "", {"min_neighbors": -1}, "min_neighbors: Input should be greater than or equal to 0, got -1"),
    ("simulated_judge", "", {"noise": -0.5}, "noise: Input should be greater than or equal to 0, got -0.5"),
])
def test_an_actor_arg_out_of_range_is_named_on_the_driver_and_refused_when_built(cls, model, args, message):
    from raypref.build import scorer_kwargs
    from raypref.config import ScorerConf

    # before Ray, from the class's annotations: it failed only in the actor's __init__, under Ray
    with pytest.raises(ValueError) as e:
        scorer_kwargs(ScorerConf(name="s", cls=cls, model=model, args=args))
    assert str(e.value) == f"scorer 's': args.{message}"
    # the same annotation holds for the class built directly (before any model loads: model="" would fail later),
    # which names the parameter: there is no config
    with pytest.raises(ValueError) as e:
        resolve(cls)(name="s", model=model, **args) if model else resolve(cls)(name="s", **args)
    assert str(e.value) == f"scorer 's': {message}"


def test_a_generator_arg_out_of_range_is_named_on_the_driver_and_refused_when_built():
    from raypref.build import generator_kwargs
    from raypref.config import GeneratorConf

    for args, message in [({"kinds": []}, "kinds: List should have at least 1 item after validation, not 0"),
                          ({"kinds": ["upside_down"]}, "kinds.0: Input should be 'wrong_colour', 'extra_object', "
                                                       "'moved_object', 'wrong_shape' or 'wrong_count', got 'upside_down'"),
                          ({"true_renders": -1}, "true_renders: Input should be greater than or equal to 0, got -1")]:
        with pytest.raises(ValueError) as e:
            generator_kwargs(GeneratorConf(name="r", cls="shapes_render", args=args))
        assert str(e.value) == f"generator 'r': args.{message}"
        with pytest.raises(ValueError) as e:
            resolve("shapes_render")(name="r", **args)
        assert str(e.value) == f"generator 'r': {message}"


def test_a_diffusers_generator_arg_out_of_range_is_named_on_the_driver_and_refused_when_built():
    from raypref.build import generator_kwargs
    from raypref.config import GeneratorConf

    sd = GeneratorConf(name="sd", model="shapes:sd")
    for key, value, message in [("num_samples", 0, "Input should be greater than 0, got 0"),
                                ("num_inference_steps", 0, "Input should be greater than 0, got 0"),
                                ("height", 0, "Input should be greater than 0, got 0"),
                                ("width", -8, "Input should be greater than 0, got -8"),
                                ("embedding_noise_sigma", -0.1, "Input should be greater than or equal to 0, got -0.1"),
                                ("dtype", "fp16", "Input should be 'float32', 'float16' or 'bfloat16', got 'fp16'")]:
        # the config refuses these at load; a conf copied past validation (as eval_sides copies
        # build.generators.0) reached the actor unchecked. Named by the key that set it
        with pytest.raises(ValueError) as e:
            generator_kwargs(sd.model_copy(update={key: value}))
        assert str(e.value) == f"generator 'sd': {key}: {message}"
        # built directly: refused before any model loads (this one does not exist)
        with pytest.raises(ValueError) as e:
            resolve("diffusers")(model="no/such-model", name="sd", **{key: value})
        assert str(e.value) == f"generator 'sd': {key}: {message}"
    # an arg named as a setting would replace it in the actor while the run recorded the setting (8 images a
    # prompt recorded, 4 made): refused, naming the key to set instead, whether or not its value is valid
    for key, value, setting in [("num_samples", 4, "num_samples"), ("num_samples", 0, "num_samples"),
                                ("width", 64, "width"), ("num_gpus", 1, "pool.num_gpus")]:
        with pytest.raises(ValueError) as e:
            generator_kwargs(sd.model_copy(update={"args": {key: value}}))
        assert str(e.value) == (f"generator 'sd': args.{key}: {key} is a setting of the config entry itself, not an "
                                f"extra argument; set {setting} there instead")
    # width and height unset (None: the pipeline's default) pass as set ones do
    for size in ({}, {"width": 64, "height": 48}):
        kw = generator_kwargs(GeneratorConf(name="sd", model="shapes:sd", **size))
        assert (kw["width"], kw["height"]) == (size.get("width"), size.get("height"))


def test_an_arg_named_as_a_setting_names_the_setting_where_the_class_does_not_take_it():
    from raypref.build import scorer_kwargs
    from raypref.config import ScorerConf

    # the JPEG scorer takes neither num_gpus nor pretrained: the user is pointed to the setting all the same,
    # not only told the class's own arguments
    for key, setting in [("num_gpus", "pool.num_gpus"), ("pretrained", "pretrained")]:
        with pytest.raises(ValueError) as e:
            scorer_kwargs(ScorerConf(name="jpeg", cls="jpeg_compressibility", args={key: 1}))
        assert str(e.value) == (f"scorer 'jpeg': args.{key}: {key} is a setting of the config entry itself, not an "
                                f"extra argument; set {setting} there instead")


def test_a_container_arg_of_the_wrong_kind_is_named_in_yaml_words():
    from raypref.build import generator_kwargs, scorer_kwargs
    from raypref.config import GeneratorConf, ScorerConf

    # strict JSON mode says "a valid array" for a tuple, set or list, "an object" for a dict: YAML writes a list,
    # a mapping
    for args, message in [({"size": "8x8"}, "args.size: Input should be a list, not a string (args.size takes tuple[int, int])"),
                          ({"tags": {"a": 1}}, "args.tags: Input should be a list, not a mapping (args.tags takes set[str])"),
                          ({"labels": 3}, "args.labels: Input should be a list, not an integer (args.labels takes "
                                          "frozenset[str])"),
                          ({"weights": ["a"]}, "args.weights: Input should be a mapping, not a list (args.weights takes "
                                               "dict[str, float] | None)")]:
        with pytest.raises(ValueError) as e:
            scorer_kwargs(ScorerConf(name="t", cls=TYPED, args=args))
        assert str(e.value) == f"scorer 't': {message}"
    # a built-in's list arg, on the driver and built directly
    with pytest.raises(ValueError) as e:
        scorer_kwargs(ScorerConf(name="o", cls="owlvit", model="tiny:owlvit", args={"classes": "circle"}))
    assert str(e.value) == "scorer 'o': args.classes: Input should be a list, not a string (args.classes takes list[str] | None)"
    with pytest.raises(ValueError) as e:
        generator_kwargs(GeneratorConf(name="r", cls="shapes_render", args={"kinds": "wrong_colour"}))
    assert str(e.value).startswith("generator 'r': args.kinds: Input should be a list, not a string (args.kinds takes ")
    with pytest.raises(ValueError) as e:
        resolve("shapes_render")(name="r", kinds="wrong_colour")
    assert str(e.value).startswith("generator 'r': kinds: Input should be a list, not a string (kinds takes ")


def test_every_shipped_config_passes_its_actors_arg_checks(monkeypatch):
    from pathlib import Path

    from raypref import build
    from raypref.config import load_config

    # model refs as written: some are other stages' outputs (runs/...), and a tiny: one would be written here
    monkeypatch.setattr(build, "resolve_model", lambda ref, what=None: ref)
    monkeypatch.setattr(build, "resolve_pretrained", lambda model, tag, what=None: tag)
    checked, failed = 0, []
    for path in sorted((Path(__file__).parents[1] / "raypref" / "configs").glob("*.yaml")):
        cfg = load_config(path)
        # the build's settings (name, width, num_gpus...) as well as args, each against its class's annotations
        actors = [(build.generator_kwargs, g) for g in cfg.build.generators]
        actors += [(build.scorer_kwargs, s) for s in cfg.build.scorers + cfg.accuracy.scorers]
        for kwargs, conf in actors:
            try:
                checked += len(kwargs(conf))
            except ValueError as e:
                failed.append(f"{path.name}: {e}")
    assert not failed
    assert checked >= 150  # the settings of every actor of every config, not only their args


TYPED = "tests.typed_actors:TypedScorer"  # a class of one's own, with annotations YAML writes only one way


def test_a_class_of_ones_own_takes_args_as_yaml_writes_them():
    from raypref.build import scorer_kwargs
    from raypref.config import ScorerConf

    # checked as JSON, YAML's data model: a list is a tuple or a set, a string a Path or an Enum, an int a float
    args = {"size": [1, 2], "out": "x", "tags": ["a", "b"], "mode": "max", "noise": 3, "weights": {"a": 1}}
    assert scorer_kwargs(ScorerConf(name="t", cls=TYPED, args=args)) == {"name": "t", "pretrained": None, **args}
    # still strict: a quoted number is no number, a float no int, an int no bool
    for args, message in [({"count": "77"}, "args.count: Input should be a valid integer, not a string (args.count takes int)"),
                          ({"count": 2.0}, "args.count: Input should be a valid integer, not a float (args.count takes int)"),
                          ({"flag": 1}, "args.flag: Input should be a valid boolean, not an integer (args.flag takes bool)"),
                          ({"mode": "median"}, "args.mode: Input should be 'mean' or 'max', got 'median'"),
                          ({"tags": "ab"}, "args.tags: Input should be a list, not a string (args.tags takes set[str])")]:
        with pytest.raises(ValueError) as e:
            scorer_kwargs(ScorerConf(name="t", cls=TYPED, args=args))
        assert str(e.value) == f"scorer 't': {message}"


def test_an_arg_error_names_places_in_the_value_not_a_unions_members():
    from raypref.build import scorer_kwargs
    from raypref.config import ScorerConf

    # pydantic's loc for a union holds the member tried ('str', 'int'): no key of the config
    for args, message in [({"words": 3}, "args.words: Input should be a valid string, not an integer "
                                         "(args.words takes str | list[str])"),
                          ({"limit": "x"}, "args.limit: Input should be a valid integer, not a string "
                                           "(args.limit takes int | 'auto')"),
                          ({"words": ["a", 3]}, "args.words.1: Input should be a valid string, not an integer "
                                                "(args.words takes str | list[str])"),
                          ({"weights": {"a": "x"}}, "args.weights.a: Input should be a valid number, not a string "
                                                    "(args.weights takes dict[str, float] | None)"),
                          ({"size": [1, "a"]}, "args.size.1: Input should be a valid integer, not a string "
                                               "(args.size takes tuple[int, int])")]:
        with pytest.raises(ValueError) as e:
            scorer_kwargs(ScorerConf(name="t", cls=TYPED, args=args))
        assert str(e.value) == f"scorer 't': {message}"


def test_a_float_yaml_1_1_reads_as_text_is_named_with_its_fix(tmp_path):
    from raypref.build import scorer_kwargs
    from raypref.config import ScorerConf, load_config

    path = tmp_path / "c.yaml"
    for written, fix in [("1e-1", "1.0e-1 or 0.1"), ("5E3", "5.0e+3 or 5000.0"), ("2.5e3", "2.5e+3 or 2500.0")]:
        path.write_text(f"build:\n  scorers:\n    - {{name: j, cls: simulated_judge, args: {{noise: {written}}}}}\n")
        with pytest.raises(ValueError) as e:
            scorer_kwargs(load_config(path).build.scorers[0])
        assert str(e.value) == (f"scorer 'j': args.noise: Input should be a valid number, not a string (args.noise "
                                f"takes float; YAML 1.1 reads {written} as text: write {fix})")
        # the fix as YAML 1.1 reads it
        path.write_text(f"build:\n  scorers:\n    - {{name: j, cls: simulated_judge, args: {{noise: {fix.split()[0]}}}}}\n")
        assert scorer_kwargs(load_config(path).build.scorers[0])["noise"] == float(written)
    # other text, or text where no float is taken, gets no such hint
    for args in ({"noise": "0.1x"}, {"count": "1e-1"}):
        with pytest.raises(ValueError) as e:
            scorer_kwargs(ScorerConf(name="t", cls=TYPED, args=args))
        assert "YAML 1.1" not in str(e.value)


def test_the_builds_settings_are_checked_on_the_driver_named_by_their_config_keys():
    from pydantic import ValidationError

    from raypref.build import generator_kwargs, scorer_kwargs
    from raypref.config import GeneratorConf, ScorerConf

    # settings outside args reach the actor too: checked before Ray, named as the generator's keys, not args.
    typed = GeneratorConf(name="g", cls="tests.typed_actors:TypedGenerator", width=24)
    assert generator_kwargs(typed)["width"] == 24
    for update, message in [({"width": 30}, "width: Input should be a multiple of 8, got 30"),
                            ({"pool": {"num_gpus": 1}}, "pool.num_gpus: Input should be less than or equal to 0, got 1.0")]:
        with pytest.raises(ValueError) as e:
            generator_kwargs(GeneratorConf(**{**typed.model_dump(), **update}))
        assert str(e.value) == f"generator 'g': {message}"
    # None is the build's "not set": passed as before to a class that annotates a str for it
    assert scorer_kwargs(ScorerConf(name="t", cls=TYPED))["pretrained"] is None
    # a width of 0 was the default only through `width or 32`: the config refuses it for every generator
    for cls in ("shapes_render", "diffusers"):
        with pytest.raises(ValidationError, match=r"width\n  Input should be greater than or equal to 1"):
            GeneratorConf(name="r", cls=cls, width=0)
    assert generator_kwargs(GeneratorConf(name="r", cls="shapes_render", width=16))["width"] == 16
