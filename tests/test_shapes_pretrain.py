"""Pretraining the shapes world's models in Ray Train on 2 workers: resume, loadable output."""

import json

import pytest
import torch

from raypref.config import validate

pytestmark = pytest.mark.slow

TINY_T2I = {"hidden": 16, "unet_channels": [16, 32], "unet_attention": [False, True], "batch_size": 4,
            "vae_steps": 2, "unet_steps": 2, "checkpoint_every": 1, "warmup_steps": 1}
TINY_CLIP = {"embed_dim": 16, "vision_width": 32, "patch_size": 8, "text_width": 16, "layers": 1,
             "batch_size": 8, "steps": 2, "checkpoint_every": 1, "warmup_steps": 1}


def _cfg(out, t2i=None, clip=None):
    return validate({"output_dir": str(out), "pretrain": {"t2i": {**TINY_T2I, **(t2i or {})},
                                                          "clip": {**TINY_CLIP, **(clip or {})}}})


def _history(out, name):
    return [json.loads(x) for x in (out / "pretrain" / name / "metrics.jsonl").read_text().splitlines()]


def test_pretrain_t2i_trains_exports_and_resumes_on_two_workers(ray_session, tmp_path):
    from diffusers import StableDiffusionPipeline

    from raypref.shapes.pretrain_t2i import _arch, run_pretrain_t2i
    from raypref.tiny import sd_parts

    two = {"num_workers": 2, "batch_size": 2}  # data-parallel: 1 worker runs the same loop without the all-reduce
    cfg = _cfg(tmp_path, t2i=two)
    s = run_pretrain_t2i(cfg)
    assert s["workers"] == 2 and s["vae_steps"] == 2 and s["unet_steps"] == 2
    pipe = StableDiffusionPipeline.from_pretrained(s["export"])
    init = sd_parts(**_arch(cfg.pretrain.t2i.model_dump()))
    for part in ("unet", "vae", "text_encoder"):  # every trained part moved away from its init
        before, after = init[part].state_dict(), getattr(pipe, part).state_dict()
        assert any(not torch.allclose(before[k], after[k]) for k in before), part
    assert pipe.vae.config.scaling_factor != init["vae"].config.scaling_factor  # set to 1/std(latents)
    assert pipe.tokenizer.model_max_length == 16
    hist = _history(tmp_path, "t2i")
    assert [(h["phase"], h["step"]) for h in hist] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(torch.isfinite(torch.tensor(h.get("loss", h.get("vae_loss")))) for h in hist)
    image = pipe("a red circle", num_inference_steps=2, output_type="pil").images[0]
    assert image.size == (32, 32)

    # raising the budget resumes phase 2 at step 2; the history up to there is the same
    run_pretrain_t2i(_cfg(tmp_path, t2i={**two, "unet_steps": 3}))
    hist2 = _history(tmp_path, "t2i")
    assert [(h["phase"], h["step"]) for h in hist2] == [(1, 1), (1, 2), (2, 1), (2, 2), (2, 3)]
    assert hist2[:4] == hist


def test_pretrain_clip_on_two_workers(ray_session, tmp_path):
    import open_clip

    from raypref.models import resolve_model
    from raypref.shapes.pretrain_clip import run_pretrain_clip

    s = run_pretrain_clip(_cfg(tmp_path, clip={"num_workers": 2}))
    assert s["workers"] == 2 and s["steps"] == 2
    ref = "local-dir:" + s["export"]
    assert resolve_model(ref) == ref
    model, _, preprocess = open_clip.create_model_and_transforms(ref)
    torch.manual_seed(0)  # the loop's init seed: the exported weights must differ from it
    fresh = open_clip.CLIP(**json.loads((tmp_path / "pretrain" / "clip" / "open_clip_config.json").read_text())["model_cfg"])
    assert any(not torch.allclose(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())
    tok = open_clip.get_tokenizer(ref)
    assert tok(["a red circle"]).shape == (1, 16)


@pytest.mark.parametrize("what", ["t2i", "clip"])
def test_pretrain_checks_its_export_dir_before_ray_starts(tmp_path, monkeypatch, what):
    from raypref import session, stages
    from raypref.shapes import pretrain_clip, pretrain_t2i

    started = []
    for mod in (session, stages, pretrain_t2i, pretrain_clip):
        monkeypatch.setattr(mod, "init_ray", lambda *a, **k: started.append(1), raising=False)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's folder")
    cfg = _cfg(tmp_path / "run", t2i={"export_dir": str(mine)}, clip={"export_dir": str(mine)})
    with pytest.raises(ValueError, match=rf"export_dir: {mine} is a directory raypref did not export to"):
        stages.pretrain(cfg, what)
    assert not started and not list((tmp_path / "run").rglob("run_meta.json"))
