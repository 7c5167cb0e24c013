"""The reward model on a BLIP backbone (raypref.reward_blip), no Ray: forward on pairs, one
Bradley-Terry step under each freeze mode, the export round trip and the 'reward_model' scorer."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from raypref.reward_model import CONFIG_FILE, WEIGHTS_FILE, RewardModel
from reward_steps import ASPECTS, PROMPTS, bt_step, img


@pytest.fixture(scope="module")
def tiny_blip_itm() -> str:
    from raypref.models import resolve_model

    return resolve_model("tiny:blip_itm")


@pytest.mark.parametrize("freeze", ["none", "all", "all_but_last"])
def test_blip_reward_step_trains_what_freeze_allows(tiny_blip_itm, freeze):
    from raypref.config import validate

    r = validate({"reward": {"backbone": "tiny:blip_itm", "backbone_kind": "blip", "freeze": freeze}}).reward
    torch.manual_seed(0)
    model = RewardModel.create(tiny_blip_itm, aspects=ASPECTS, hidden=16, freeze=r.freeze, unfrozen_blocks=1,
                               kind=r.backbone_kind)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")}
    after = bt_step(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert {"overall.weight", "trunk.1.weight", "aspect_heads.prompt_following.weight"} <= changed
    backbone_changed = {n for n in changed if n.startswith("backbone.")}
    assert backbone_changed <= trainable  # a frozen weight never moves
    if freeze == "all":
        assert trainable == set() and model.backbone_parameters() == []
    elif freeze == "none":
        assert {"backbone.vision_model.embeddings.patch_embedding.weight",
                "backbone.text_encoder.embeddings.word_embeddings.weight",
                "backbone.text_encoder.encoder.layer.0.crossattention.self.query.weight",
                "backbone.vision_model.encoder.layers.0.self_attn.qkv.weight"} <= backbone_changed
    else:  # the tiny towers have 2 layers: layer 1 of each and the ViT's final norm train, the rest not
        assert any(n.startswith("backbone.vision_model.encoder.layers.1.") for n in backbone_changed)
        assert any(n.startswith("backbone.text_encoder.encoder.layer.1.crossattention.") for n in backbone_changed)
        assert "backbone.vision_model.post_layernorm.weight" in backbone_changed
        assert not any(".layers.0." in n or ".layer.0." in n or ".embeddings." in n for n in trainable)


def test_blip_export_roundtrip_and_scorer(tiny_blip_itm, tmp_path):
    from actors.reward_model import RewardModelScorer

    torch.manual_seed(1)
    model = RewardModel.create(tiny_blip_itm, aspects=ASPECTS, hidden=16, kind="blip")
    bt_step(model)  # trained weights, so a load that re-initialised anything would show
    images = [img((255, 0, 0)), img((0, 0, 255)), img((30, 200, 30))]
    prompts = PROMPTS + ["two green stars"]
    before = model.score(images, prompts, batch_size=2)
    assert set(before) == {"", *ASPECTS} and before[""].shape == (3,)
    assert np.ptp(before[""]) > 0  # the fused feature sees the image and prompt

    d = model.save(tmp_path / "rm")
    assert sorted(p.name for p in d.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE, "backbone"])
    files = {p.name for p in (d / "backbone").iterdir()}
    assert {"config.json", "processor_config.json", "tokenizer.json"} <= files and not any(f.endswith((".bin", ".pt", ".pkl", ".safetensors")) for f in files)
    keys = set(load_file(str(d / WEIGHTS_FILE)))
    assert any(k.startswith("backbone.text_encoder.encoder.layer.0.crossattention.") for k in keys)
    assert not any("itm_head" in k or "vision_proj" in k for k in keys)  # unused by the reward: not kept

    loaded = RewardModel.load(d)
    assert loaded.backbone.kind == "blip" and loaded.config() == model.config()
    after = loaded.score(images, prompts)
    scorer = RewardModelScorer(name="rm", model=str(d), batch_size=2).score(images, prompts)
    for k in before:
        np.testing.assert_allclose(after[k], before[k], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(scorer[k], before[k], rtol=1e-6, atol=1e-6)


def test_blip_backbone_rejects_a_checkpoint_without_the_matching_encoder():
    from raypref.models import resolve_model

    with pytest.raises(ValueError, match="not a BLIP image-text-matching checkpoint"):
        RewardModel.create(resolve_model("tiny:blip_caption"), kind="blip")
    with pytest.raises(ValueError, match="not supported"):
        RewardModel.create("whatever", kind="blip2")


def test_a_blip_backbone_saved_in_fp16_loads_and_trains_in_fp32(tiny_blip_itm, tmp_path):
    # transformers would keep the stored fp16, and AdamW would then step fp16 weights
    import shutil

    from transformers import BlipForImageTextRetrieval

    shutil.copytree(tiny_blip_itm, tmp_path / "m")
    BlipForImageTextRetrieval.from_pretrained(tiny_blip_itm, dtype=torch.float16).save_pretrained(str(tmp_path / "m"))
    model = RewardModel.create(str(tmp_path / "m"), kind="blip")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
