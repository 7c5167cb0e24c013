"""SDXL: generation, and the training loops' conditioning (two text encoders, the pooled embedding
and the six size ids), on a tiny random-weight SDXL pipeline (tiny:sdxl)."""

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from raypref import images as I
from raypref import schema as S
from raypref.conditioning import TextEncoders
from raypref.registry import resolve

LORA = {"lora_rank": 2, "lora_alpha": 2.0, "lora_targets": ["to_q", "to_v"], "gradient_checkpointing": False}
PROMPTS = ["a red circle", "two blue squares on the left"]


@pytest.mark.parametrize("which", ["tiny_sd", "tiny_sdxl"])
def test_training_encodes_prompts_as_the_pipeline_does(which, request):
    from diffusers import DiffusionPipeline

    base = request.getfixturevalue(which)
    pipe = DiffusionPipeline.from_pretrained(base)
    out = pipe.encode_prompt(prompt=PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    texts = TextEncoders(base, "cpu")
    cond, uncond = texts(PROMPTS), texts.unconditional(2)
    assert texts.xl == (which == "tiny_sdxl")
    torch.testing.assert_close(cond.hidden, out[0])
    torch.testing.assert_close(uncond.hidden, out[1])
    if texts.xl:  # the pooled embeddings; SDXL's empty negative prompt is zeros (force_zeros_for_empty_prompt)
        torch.testing.assert_close(cond.pooled, out[2])
        torch.testing.assert_close(uncond.pooled, out[3])
        assert not uncond.hidden.any()
    else:
        assert cond.pooled is None and uncond.hidden.abs().sum() > 0


def test_an_sd_text_encoder_that_asks_for_its_attention_mask_gets_it(tiny_sd, tmp_path):
    # some SD 2.x checkpoints set use_attention_mask in the text encoder's config; the pipeline then masks the padding
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd)
    pipe.text_encoder.config.use_attention_mask = True
    pipe.save_pretrained(str(tmp_path / "sd2like"))
    out = pipe.encode_prompt(prompt=PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    unmasked = TextEncoders(tiny_sd, "cpu")(PROMPTS).hidden
    assert not torch.allclose(out[0], unmasked)  # the mask changes the padding's states
    torch.testing.assert_close(TextEncoders(str(tmp_path / "sd2like"), "cpu")(PROMPTS).hidden, out[0])


@pytest.mark.parametrize("which", ["tiny_sd", "tiny_sdxl"])
def test_a_pipeline_saved_in_fp16_trains_in_fp32(which, request, tmp_path):
    # many shared checkpoints are saved in fp16; transformers would load their text encoders so,
    # and fp16 states into the fp32 UNet crashed an fp32 DPO step
    from diffusers import DiffusionPipeline

    from raypref.train_dpo import dpo_step, image_size, load_for_training

    DiffusionPipeline.from_pretrained(request.getfixturevalue(which), dtype=torch.float16).save_pretrained(str(tmp_path))
    c = {"base_model": str(tmp_path), "finetune": "lora", **LORA}
    texts, vae, sched, unet, params, ref = load_for_training(c, "cpu")
    assert {p.dtype for p in texts.parameters()} == {torch.float32} and unet.dtype == torch.float32
    cond = texts(PROMPTS[:1]).with_default_sizes(image_size(unet, vae)).repeat(2)
    s = unet.config.sample_size
    loss, _ = dpo_step(unet, ref, torch.randn(2, 4, s, s), cond, sched, 5000.0, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_sdxl_generator_makes_images_and_noises_the_pooled_embedding_too(tiny_sdxl):
    gen_cls = resolve("diffusers")
    kw = dict(model=tiny_sdxl, name="xl", num_samples=2, num_inference_steps=2)
    batch = pa.table({S.PROMPT_ID: [S.prompt_id(p) for p in PROMPTS], S.PROMPT: PROMPTS})
    plain = gen_cls(**kw)(batch)
    images = plain.column(S.IMAGE).to_pylist()
    assert [[I.decode(x).size for x in row] for row in images] == [[(32, 32)] * 2] * 2
    g = gen_cls(**kw, embedding_noise_sigma=0.5)
    seeds = plain.column(S.SEED).to_pylist()[0]
    clean = gen_cls(**kw)._embeds(PROMPTS[:1] * 2, seeds)
    noisy = g._embeds(PROMPTS[:1] * 2, seeds)
    for key in ("prompt_embeds", "pooled_prompt_embeds"):  # the first sample clean, the second noised
        torch.testing.assert_close(noisy[key][0], clean[key][0])
        assert (noisy[key][1] - clean[key][1]).abs().mean() > 0.1
    assert g(batch).column(S.IMAGE).to_pylist()[0][0] == images[0][0]


def test_a_dpo_lora_on_sdxl_trains_and_loads_in_diffusers(tiny_sdxl, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from raypref.finetune import save_trained
    from raypref.train_dpo import dpo_step, load_for_training, pair_batch_to_latents

    texts, vae, sched, unet, params, ref = load_for_training({**LORA, "base_model": tiny_sdxl}, "cpu")
    rng = np.random.default_rng(0)
    square, wide, tall = (I.encode(Image.fromarray(rng.integers(0, 256, s, dtype=np.uint8))) for s in
                          ((32, 32, 3), (32, 48, 3), (40, 20, 3)))
    batch = {S.PROMPT: PROMPTS, S.CHOSEN_ID: ["a", "b"], S.CHOSEN_IMAGE: [square, wide], S.REJECTED_IMAGE: [tall, square]}
    latents, enc = pair_batch_to_latents(batch, texts, vae, 32, "cpu")
    # each image's own size ids: (h, w, crop top, crop left, 32, 32); 48 wide -> left 8; 20x40 -> 32x64, top 16
    assert enc.time_ids.tolist() == [[32, 32, 0, 0, 32, 32], [32, 48, 0, 8, 32, 32],
                                     [40, 20, 16, 0, 32, 32], [32, 32, 0, 0, 32, 32]]
    assert enc.hidden.shape == (4, 77, 64) and enc.pooled.shape == (4, 32)
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-2)
    loss, _ = dpo_step(unet, ref, latents, enc, sched, 500.0, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(0.6931, abs=1e-4)  # the adapter starts at zero: the model is its reference
    loss.backward()
    opt.step()
    assert sum(not torch.equal(a, b) for a, b in zip(before, params)) == len(params)
    loss2, _ = dpo_step(unet, ref, latents, enc, sched, 500.0, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss2) and loss2.item() != pytest.approx(0.6931, abs=1e-6)

    path = save_trained(unet, tmp_path, "lora")
    t = torch.tensor([10] * 4)
    with torch.no_grad():
        trained = unet(latents, t, **enc.unet_kwargs()).sample
        pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
        pipe.load_lora_weights(str(path.parent))
        loaded = pipe.unet(latents, t, **enc.unet_kwargs()).sample
    torch.testing.assert_close(loaded, trained, rtol=1e-4, atol=1e-5)


def test_a_pipeline_without_a_unet_and_clip_text_is_named(tmp_path):
    import json

    from raypref.conditioning import pipeline_parts

    (tmp_path / "model_index.json").write_text(json.dumps({
        "_class_name": "PixArtAlphaPipeline", "_diffusers_version": "0.42.1", "transformer": ["diffusers", "PixArtTransformer2DModel"],
        "text_encoder": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "T5Tokenizer"],
        "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "DPMSolverMultistepScheduler"]}))
    with pytest.raises(ValueError, match=r"is a PixArtAlphaPipeline without \['unet'\]; training supports"):
        pipeline_parts(str(tmp_path))
