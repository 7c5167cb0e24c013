"""Stable Diffusion 1.5 and SDXL pipelines at their real sizes, with random weights, for the benchmarks.

No model hub here (nor on the lent GPU machines), so a step's time and memory at real scale are
measured on the real architectures: the published UNet, VAE and text-encoder configs, freshly
initialised. Time and memory depend on the shapes, not on the weights' values. The parameter
counts are checked against the released models' (``EXPECTED_PARAMS``) before anything is saved,
so a config slip cannot pass unnoticed. The tokenizer is CLIP's real BPE (raypref.tiny.clip_bpe).

    .venv/bin/python benchmarks/full_size_pipelines.py sd15 /tmp/sd15
    .venv/bin/python benchmarks/full_size_pipelines.py sdxl /tmp/sdxl --device cuda
    .venv/bin/python benchmarks/full_size_pipelines.py sdxl --count   # parameter counts only, no weights
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The released checkpoints' parameter counts (runwayml/stable-diffusion-v1-5 and
# stabilityai/stable-diffusion-xl-base-1.0, as diffusers / transformers load them).
EXPECTED_PARAMS = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
}

CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768, hidden_act="quick_gelu")
OPENCLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                     projection_dim=1280, hidden_act="gelu")


def unet_config(arch: str) -> dict:
    if arch == "sd15":
        return dict(sample_size=64, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                    cross_attention_dim=768, attention_head_dim=8)
    return dict(sample_size=128, layers_per_block=2, block_out_channels=(320, 640, 1280),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816)


def vae_config(arch: str) -> dict:
    return dict(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                sample_size=512 if arch == "sd15" else 1024, scaling_factor=0.18215 if arch == "sd15" else 0.13025)


def parts(arch: str, device: str = "cpu") -> dict:
    """The pipeline's modules, initialised on ``device`` ("meta": shapes only, for counting)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from raypref.tiny import CLIP_VOCAB_SIZE

    def text(cls, cfg):
        return cls(CLIPTextConfig(vocab_size=CLIP_VOCAB_SIZE, max_position_embeddings=77, bos_token_id=CLIP_VOCAB_SIZE - 2,
                                  eos_token_id=CLIP_VOCAB_SIZE - 1, pad_token_id=CLIP_VOCAB_SIZE - 1, **cfg))

    sched = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 steps_offset=1)
    with torch.device(device):
        out = {"unet": UNet2DConditionModel(**unet_config(arch)), "vae": AutoencoderKL(**vae_config(arch))}
        out["text_encoder"] = text(CLIPTextModel, CLIP_L)
        if arch == "sdxl":
            out["text_encoder_2"] = text(CLIPTextModelWithProjection, OPENCLIP_BIGG)
    # schedulers keep their tables on the CPU (and cannot be built on "meta")
    out["scheduler"] = PNDMScheduler(**sched, skip_prk_steps=True) if arch == "sd15" else EulerDiscreteScheduler(**sched)
    return out


def counts(modules: dict) -> dict:
    return {k: sum(p.numel() for p in m.parameters()) for k, m in modules.items() if hasattr(m, "parameters")}


def check_counts(arch: str, modules: dict) -> dict:
    got = counts(modules)
    if got != EXPECTED_PARAMS[arch]:
        raise SystemExit(f"{arch}: parameter counts {got} are not the released model's {EXPECTED_PARAMS[arch]}")
    return got


def build(arch: str, out_dir: str | Path, device: str = "cpu") -> Path:
    """Save a random-weight ``arch`` pipeline (fp16 safetensors, to halve the disk; loading casts to
    the caller's dtype) as a standard diffusers directory."""
    import tempfile

    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    from raypref.tiny import save_clip_tokenizer

    torch.manual_seed(0)
    modules = parts(arch, device)
    check_counts(arch, modules)
    for m in modules.values():
        if isinstance(m, torch.nn.Module):
            m.to(torch.float16)
    with tempfile.TemporaryDirectory() as tmp:
        save_clip_tokenizer(Path(tmp))
        tok = CLIPTokenizer.from_pretrained(tmp)
    if arch == "sd15":
        pipe = StableDiffusionPipeline(**modules, tokenizer=tok, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    else:
        pipe = StableDiffusionXLPipeline(**modules, tokenizer=tok, tokenizer_2=tok, force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    return Path(out_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("arch", choices=sorted(EXPECTED_PARAMS))
    ap.add_argument("out_dir", nargs="?")
    ap.add_argument("--device", default="cpu", help="where to initialise the weights (cuda is much faster)")
    ap.add_argument("--count", action="store_true", help="check and print the parameter counts only")
    a = ap.parse_args()
    if a.count:
        print(a.arch, check_counts(a.arch, parts(a.arch, "meta")))
        return
    if not a.out_dir:
        ap.error("out_dir is needed unless --count")
    print(build(a.arch, a.out_dir, a.device))


if __name__ == "__main__":
    main()
