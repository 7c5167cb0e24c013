"""The shipped shapes-world checkpoints load offline through the standard loaders and work."""

from pathlib import Path

import numpy as np
import pytest
import torch

from raypref.models import SHAPES_WEIGHTS, resolve_model
from raypref.shapes import check, parse_prompt, render

MAX_SHIPPED_BYTES = 30 * 1024 * 1024


def test_shipped_weights_are_safetensors_and_small():
    files = [p for p in SHAPES_WEIGHTS.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)  # no pickle in the package
    assert sum(p.stat().st_size for p in files) <= MAX_SHIPPED_BYTES


def test_shapes_sd_loads_offline_and_draws_prompts():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(resolve_model("shapes:sd"))
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red circle", "a blue square", "a green cross on the left", "a yellow triangle at the top"] * 4
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    images = pipe(prompts, num_inference_steps=20, guidance_scale=3.0, generator=gens).images
    assert images[0].size == (32, 32)
    passed = [check(im, parse_prompt(p))["overall"] for im, p in zip(images, prompts)]
    # a trained model, not noise: most of these seen-in-training prompts come out right
    assert np.mean(passed) >= 0.5, passed


def test_shapes_clip_loads_offline_and_tells_colour_and_shape():
    import open_clip

    from raypref.prompts import read_prompts
    from raypref.shapes import COLOURS, SHAPES, Obj, Spec, prompt_text

    ref = resolve_model("shapes:clip")
    assert ref.startswith("local-dir:") and Path(ref[len("local-dir:"):]).is_dir()
    model, _, preprocess = open_clip.create_model_and_transforms(ref)
    tok = open_clip.get_tokenizer(ref)

    def swapped(spec, kind):
        o = spec.objects[0]
        if kind == "colour":
            c = next(c for c in COLOURS if all(c != x.colour for x in spec.objects))
            o = Obj(c, o.shape, o.count, o.position)
        else:
            o = Obj(o.colour, next(s for s in SHAPES if s != o.shape), o.count, o.position)
        return prompt_text(Spec((o,) + spec.objects[1:], spec.relation))

    prompts = read_prompts("shapes:train", limit=40).column("prompt").to_pylist()
    images = torch.stack([preprocess(render(parse_prompt(p), seed=i)[0]) for i, p in enumerate(prompts)])
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        right = (img * torch.nn.functional.normalize(model.encode_text(tok(prompts)), dim=-1)).sum(-1)
        for kind, floor in (("colour", 0.95), ("shape", 0.75)):
            wrong_text = tok([swapped(parse_prompt(p), kind) for p in prompts])
            wrong = (img * torch.nn.functional.normalize(model.encode_text(wrong_text), dim=-1)).sum(-1)
            # like real CLIPs it is weak on where things are; colour and shape it must tell apart
            assert (right > wrong).float().mean() >= floor, kind


@pytest.mark.parametrize("ref", ["shapes:sd", "shapes:clip"])
def test_shapes_refs_resolve_inside_the_package(ref):
    assert str(SHAPES_WEIGHTS) in resolve_model(ref)
