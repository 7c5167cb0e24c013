"""The reward model on the FiLM backbone (raypref.reward_film), no Ray: the prompt steers what the
image tower reads, one Bradley-Terry step trains the conv tower at the heads' rate and the text
tower as freeze allows, and the export round trip scores alike, also as the 'reward_model' scorer."""

import numpy as np
import pytest
import torch
from reward_steps import ASPECTS, PROMPTS, bt_step, img
from safetensors.torch import load_file

from raypref.config import validate
from raypref.reward_film import FILM_FILE, FilmTower
from raypref.reward_model import CONFIG_FILE, WEIGHTS_FILE, RewardModel


def _create(tiny_clip, freeze="none", **film):
    r = validate({"reward": {"backbone": "tiny:clip", "backbone_kind": "film", "freeze": freeze, "film": film}}).reward
    return RewardModel.create(tiny_clip, None, ASPECTS, hidden=16, freeze=r.freeze, kind=r.backbone_kind,
                              film=r.film.model_dump())


def test_film_tower_is_conditioned_on_the_text_and_sees_position():
    torch.manual_seed(0)
    tower = FilmTower(text_dim=8, width=8, blocks=2)
    pixels = torch.zeros(2, 3, 16, 16)
    pixels[0, :, 4:8, 1:5] = 1.0  # the same square, left ...
    pixels[1, :, 4:8, 11:15] = 1.0  # ... and right
    t = torch.randn(1, 8).expand(2, 8)
    out = tower(pixels, t)
    assert out.shape == (2, 16)  # [max-pool, mean-pool] of width 8
    assert not torch.allclose(out[0], out[1])  # coordinate channels: position is readable
    other = tower(pixels, torch.randn(1, 8).expand(2, 8))
    assert not torch.allclose(out, other)  # another prompt reads the same image differently


@pytest.mark.parametrize("freeze", ["none", "all"])
def test_film_step_trains_the_tower_and_what_freeze_allows(tiny_clip, freeze):
    torch.manual_seed(0)
    model = _create(tiny_clip, freeze, width=8, blocks=2)
    assert model.backbone.clip.visual is None  # the CLIP image tower is dropped, not carried
    scratch = {id(p) for p in model.backbone.tower.parameters()}
    assert scratch <= {id(p) for p in model.head_parameters()}  # learns at the heads' rate
    assert not scratch & {id(p) for p in model.backbone_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    after = bt_step(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert {"overall.weight", "backbone.tower.stem.0.weight", "backbone.tower.blocks.1.film.weight"} <= changed
    text_changed = {n for n in changed if n.startswith("backbone.clip.")}
    if freeze == "all":
        assert text_changed == set() and model.backbone_parameters() == []
    else:
        assert "backbone.clip.token_embedding.weight" in text_changed


def test_film_export_roundtrip_and_scorer(tiny_clip, tmp_path):
    from actors.reward_model import RewardModelScorer

    torch.manual_seed(1)
    model = _create(tiny_clip, width=8, blocks=3, coords=False, stride=1)
    bt_step(model)
    images = [img((255, 0, 0)), img((0, 0, 255)), img((30, 200, 30))]
    prompts = PROMPTS + ["two green crosses"]
    before = model.score(images, prompts, batch_size=2)
    assert set(before) == {"", *ASPECTS} and np.ptp(before[""]) > 0

    d = model.save(tmp_path / "rm")
    assert {"open_clip_config.json", FILM_FILE} <= {p.name for p in (d / "backbone").iterdir()}
    assert (d / CONFIG_FILE).is_file() and not any(k.startswith("backbone.clip.visual.") for k in load_file(str(d / WEIGHTS_FILE)))
    loaded = RewardModel.load(d)
    assert loaded.backbone.kind == "film" and loaded.backbone.film_cfg == {"width": 8, "blocks": 3, "coords": False, "stride": 1}
    assert loaded.config() == model.config()
    after = loaded.score(images, prompts)
    scorer = RewardModelScorer(name="rm", model=str(d), batch_size=2).score(images, prompts)
    for k in before:
        np.testing.assert_allclose(after[k], before[k], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(scorer[k], before[k], rtol=1e-6, atol=1e-6)


def test_film_rejects_bad_settings(tiny_clip):
    with pytest.raises(ValueError, match="reward.film: unknown keys"):
        RewardModel.create(tiny_clip, None, kind="film", film={"widht": 8})
    with pytest.raises(Exception, match="width"):
        validate({"reward": {"backbone_kind": "film", "film": {"width": 0}}})
    with pytest.raises(ValueError, match="stride 1 or 2"):
        FilmTower(8, stride=3)
