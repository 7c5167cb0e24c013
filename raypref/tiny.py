"""Tiny models of the real architectures, with random weights, saved in the standard formats.

They let the real loading code (diffusers ``from_pretrained``, open_clip ``local-dir:``) run
offline and fast on a CPU. They are NOT trained: images from the tiny pipeline are noise-like,
and every number measured with them says the code works, not that a model improved.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

import torch

import open_clip

CLIP_VOCAB_SIZE = 49408


def _bytes_to_unicode() -> dict[int, str]:
    # The byte-level BPE alphabet of GPT-2/CLIP: printable bytes map to themselves, the rest to
    # code points above 255, so every byte has a visible, non-whitespace character.
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, (chr(c) for c in chars)))


@lru_cache(maxsize=1)
def clip_bpe() -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary and merges, rebuilt from the BPE file that open_clip ships."""
    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    # 49152 BPE ranks = 256 bytes + merges + 2 specials; the rest of the file is unused
    merges = lines[1 : 49152 - 256 - 2 + 1]
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [a + "</w>" for a in alphabet] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == CLIP_VOCAB_SIZE, len(tokens)
    return {t: i for i, t in enumerate(tokens)}, merges


def save_clip_tokenizer(out_dir: Path, max_length: int = 77) -> None:
    from transformers import CLIPTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_bpe()
    (out_dir / "vocab.json").write_text(json.dumps(vocab))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(
        str(out_dir / "vocab.json"), str(out_dir / "merges.txt"), model_max_length=max_length, pad_token="<|endoftext|>"
    )
    tok.save_pretrained(str(out_dir))


def sd_parts(
    image_size: int = 32,
    seed: int = 0,
    hidden: int = 32,
    unet_channels: tuple[int, ...] = (32, 64),
    unet_attention: tuple[bool, ...] = (True, False),
    text_layers: int = 2,
    max_length: int = 77,
    beta_schedule: str = "scaled_linear",
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
) -> dict:
    """The modules of a StableDiffusionPipeline at tiny sizes, freshly initialised from ``seed``.

    The VAE halves the resolution once (latents are image_size/2). ``unet_attention`` says which
    UNet levels have (self- and cross-) attention: at the full latent resolution it costs most of
    a training step on a CPU. ``max_length`` is the
    tokenizer's and text encoder's context: short prompts need far fewer than CLIP's 77, and
    cross-attention cost grows with it.
    """
    import tempfile

    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=image_size,
    )
    if len(unet_attention) != len(unet_channels):
        raise ValueError(f"unet_attention {unet_attention} needs one flag per level of unet_channels {unet_channels}")
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in unet_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(unet_attention))
    unet = UNet2DConditionModel(
        sample_size=image_size // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=tuple(unet_channels),
        layers_per_block=1,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=hidden,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=text_layers,
            num_attention_heads=4,
            max_position_embeddings=max_length,
            projection_dim=hidden,
            bos_token_id=CLIP_VOCAB_SIZE - 2,
            eos_token_id=CLIP_VOCAB_SIZE - 1,
            pad_token_id=CLIP_VOCAB_SIZE - 1,
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        save_clip_tokenizer(Path(tmp), max_length)
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    scheduler = DDIMScheduler(
        beta_start=beta_start,
        beta_end=beta_end,
        beta_schedule=beta_schedule,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


def save_sd_pipeline(parts: dict, out_dir: str | Path) -> Path:
    """Save the parts as a standard StableDiffusionPipeline directory (safetensors)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    return Path(out_dir)


def build_tiny_sd(out_dir: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    """A StableDiffusionPipeline directory with random weights: tiny UNet, VAE and CLIPTextModel."""
    return save_sd_pipeline(sd_parts(image_size=image_size, seed=seed), out_dir)


def build_tiny_sdxl(out_dir: str | Path, image_size: int = 32, seed: int = 0, hidden: int = 32) -> Path:
    """A StableDiffusionXLPipeline directory with random weights: the SDXL architecture at tiny
    sizes (a UNet taking the pooled text embedding and the six size ids, a CLIPTextModel and a
    CLIPTextModelWithProjection whose hidden states concatenate to its cross-attention width)."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    parts = sd_parts(image_size=image_size, seed=seed, hidden=hidden)
    time_dim = 8
    parts["unet"] = UNet2DConditionModel(
        sample_size=image_size // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=2 * hidden,
        attention_head_dim=8,
        norm_num_groups=8,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + hidden,  # six size ids + the pooled embedding
    )
    text_cfg = parts["text_encoder"].config
    parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**{**text_cfg.to_dict(), "projection_dim": hidden}))
    parts["text_encoder"] = CLIPTextModel(text_cfg)
    parts["tokenizer_2"] = parts["tokenizer"]
    pipe = StableDiffusionXLPipeline(**parts, force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    return Path(out_dir)


def open_clip_cfg(image_size: int = 32, embed_dim: int = 32, vision_width: int = 64, patch_size: int = 8,
                  text_width: int = 32, layers: int = 2, context_length: int = 77) -> dict:
    """An open_clip custom model config (model_cfg + preprocess_cfg) at tiny sizes."""
    return {
        "model_cfg": {
            "embed_dim": embed_dim,
            "vision_cfg": {"image_size": image_size, "layers": layers, "width": vision_width,
                           "patch_size": patch_size, "head_width": 32},
            "text_cfg": {"context_length": context_length, "vocab_size": CLIP_VOCAB_SIZE, "width": text_width,
                         "heads": 4, "layers": layers},
        },
        "preprocess_cfg": {
            "size": [image_size, image_size],
            "mean": list(open_clip.OPENAI_DATASET_MEAN),
            "std": list(open_clip.OPENAI_DATASET_STD),
        },
    }


def save_open_clip(model, cfg: dict, out_dir: str | Path) -> Path:
    """An open_clip model directory (open_clip_config.json + safetensors), loadable as 'local-dir:<path>'."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    return out


def build_tiny_open_clip(out_dir: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    """A random-weight open_clip model directory."""
    cfg = open_clip_cfg(image_size=image_size)
    torch.manual_seed(seed)
    return save_open_clip(open_clip.CLIP(**cfg["model_cfg"]), cfg, out_dir)
