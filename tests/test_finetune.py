"""train.finetune: a LoRA or every UNet weight. What trains, the DPO reference, and the save/resume
round trip. (A full fine-tune in Ray Train, its export and its eval: tests/test_train_eval.py.)"""

import pytest
import torch

from raypref.finetune import export_file, export_name, load_trained, make_trainable, save_trained
from raypref.train_dpo import dpo_step, load_for_training

LORA = {"lora_rank": 2, "lora_alpha": 2.0, "lora_targets": ["to_q", "to_v"], "gradient_checkpointing": False}


def _inputs(unet, g):
    latents = torch.randn(4, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size, generator=g)
    return latents, torch.randn(4, 77, unet.config.cross_attention_dim, generator=g)


def test_full_trains_every_weight_against_a_frozen_copy(tiny_sd):
    _, _, sched, unet, params, ref = load_for_training({**LORA, "base_model": tiny_sd, "finetune": "full"}, "cpu")
    assert len(params) == len(list(unet.parameters())) and all(p.requires_grad for p in params)
    assert ref.frozen is not unet and not any(p.requires_grad for p in ref.frozen.parameters())
    before = {k: v.clone() for k, v in ref.frozen.state_dict().items()}
    opt = torch.optim.AdamW(params, lr=1e-3)
    g = torch.Generator().manual_seed(0)
    latents, enc = _inputs(unet, g)
    loss, m = dpo_step(unet, ref, latents, enc, sched, 500.0, g)
    # the model is its reference at step 0: the DPO loss is log 2 (Wallace et al. Eq. 14 at zero margin)
    assert loss.item() == pytest.approx(0.6931, abs=1e-4)
    loss.backward()
    opt.step()
    after = unet.state_dict()
    assert sum(not torch.equal(after[k], before[k]) for k in before) > len(before) // 2  # most weights moved
    assert all(torch.equal(v, before[k]) for k, v in ref.frozen.state_dict().items())  # the reference did not
    loss2, _ = dpo_step(unet, ref, latents, enc, sched, 500.0, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss2) and loss2.item() != pytest.approx(0.6931, abs=1e-6)


def test_under_bf16_the_frozen_reference_is_a_bf16_copy_at_half_the_memory(tiny_sd):
    from raypref.train_step import autocast

    c = {**LORA, "base_model": tiny_sd, "finetune": "full"}
    _, _, sched, unet, params, ref = load_for_training({**c, "precision": "bf16"}, "cpu")
    _, _, _, _, _, fp32_ref = load_for_training({**c, "precision": "fp32"}, "cpu")
    assert {p.dtype for p in ref.frozen.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in fp32_ref.frozen.parameters()} == {torch.float32} == {p.dtype for p in params}
    size = sum(p.numel() * p.element_size() for p in ref.frozen.parameters())
    assert 2 * size == sum(p.numel() * p.element_size() for p in fp32_ref.frozen.parameters())
    g = torch.Generator().manual_seed(0)
    latents, enc = _inputs(unet, g)
    with autocast("cpu", "bf16"):
        loss, _ = dpo_step(unet, ref, latents, enc, sched, 500.0, g)
    # at step 0 the model matches its reference but for bf16's rounding of the norms' weights
    assert loss.item() == pytest.approx(0.6931, abs=5e-3)
    loss.backward()
    assert all(p.grad is not None for p in params if p.requires_grad)


def test_sft_full_keeps_no_reference_copy_and_lora_uses_the_adapter(tiny_sd):
    *_, unet, params, ref = load_for_training({**LORA, "base_model": tiny_sd, "finetune": "full", "method": "sft"}, "cpu")
    assert ref.frozen is None and len(params) == len(list(unet.parameters()))
    *_, unet, params, ref = load_for_training({**LORA, "base_model": tiny_sd}, "cpu")  # lora is the default
    assert ref.frozen is None and 0 < len(params) < len(list(unet.parameters()))
    assert all("lora" in n for n, p in unet.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_saved_weights_load_back_for_resume(tiny_sd, tmp_path, finetune):
    c = {**LORA, "base_model": tiny_sd, "finetune": finetune}
    unet = load_for_training(c, "cpu")[3]
    with torch.no_grad():
        for p in unet.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    path = save_trained(unet, tmp_path, finetune)
    assert path == tmp_path / export_name(finetune) / export_file(finetune) and path.is_file()
    fresh = load_for_training(c, "cpu")[3]
    load_trained(fresh, tmp_path, finetune)
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), fresh.state_dict().values()))


def test_a_sharded_full_unet_loads_back_for_resume(tiny_sd, tmp_path):
    # diffusers shards a UNet over its max_shard_size (10 GB: SDXL in fp32); a small limit makes the same layout here
    c = {**LORA, "base_model": tiny_sd, "finetune": "full"}
    unet = load_for_training(c, "cpu")[3]
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.01)
    unet.save_pretrained(str(tmp_path / export_name("full")), max_shard_size="200KB")
    assert len(list((tmp_path / export_name("full")).glob("*.safetensors"))) > 1
    fresh = load_for_training(c, "cpu")[3]
    load_trained(fresh, tmp_path, "full")
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), fresh.state_dict().values()))


def test_an_exported_lora_loads_in_diffusers_at_the_strength_it_trained_at(tiny_sd, tmp_path):
    # alpha != rank: the scale alpha/rank must travel with the file, or diffusers assumes alpha == rank
    from diffusers import StableDiffusionPipeline

    c = {**LORA, "lora_rank": 2, "lora_alpha": 8.0, "base_model": tiny_sd}
    unet = load_for_training(c, "cpu")[3]
    with torch.no_grad():
        for p in unet.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p, generator=torch.Generator().manual_seed(1)))
    path = save_trained(unet, tmp_path, "lora")
    g = torch.Generator().manual_seed(0)
    latents, enc = _inputs(unet, g)
    t = torch.tensor([10])
    with torch.no_grad():
        trained = unet(latents, t, encoder_hidden_states=enc).sample
        pipe = StableDiffusionPipeline.from_pretrained(tiny_sd)
        base = pipe.unet(latents, t, encoder_hidden_states=enc).sample
        pipe.load_lora_weights(str(path.parent))
        loaded = pipe.unet(latents, t, encoder_hidden_states=enc).sample
    assert (trained - base).abs().max() > 1e-4  # the adapter does something
    torch.testing.assert_close(loaded, trained, rtol=1e-4, atol=1e-5)


def test_full_weights_of_another_model_are_a_clear_error(tiny_sd, tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "unet").mkdir()
    save_file({"not_a_unet_weight": torch.zeros(1)}, str(tmp_path / "unet" / export_file("full")))
    unet = load_for_training({**LORA, "base_model": tiny_sd, "finetune": "full"}, "cpu")[3]
    with pytest.raises(ValueError, match=r"unet: UNet weights do not match the model: missing .*unexpected \['not_a"):
        load_trained(unet, tmp_path, "full")
    with pytest.raises(ValueError, match="train.finetune must be one of"):
        make_trainable(unet, {"finetune": "partial"}, reference=True)


def test_a_generator_unet_that_does_not_exist_is_named(tmp_path):
    from raypref.build import generator_kwargs
    from raypref.config import GeneratorConf
    from raypref.models import ModelNotFound

    with pytest.raises(ModelNotFound, match=r"generator 'sd' unet: model path does not exist: .*nope"):
        generator_kwargs(GeneratorConf(name="sd", model="shapes:sd", unet=str(tmp_path / "nope")))
    kw = generator_kwargs(GeneratorConf(name="sd", model="shapes:sd", unet=str(tmp_path)))
    assert kw["unet"] == str(tmp_path.resolve()) and kw["lora"] is None
