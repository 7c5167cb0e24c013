"""ImageReward (Xu et al. 2023): BLIP's ViT encodes the image, BLIP's BERT text encoder reads the
prompt with cross-attention to the image tokens, and an MLP on the first ([CLS]) token gives the
reward, normalised with the published mean and std (so about N(0, 1) over their data).

On a cluster pass the files of the THUDM/ImageReward hub repo, as that repo name (downloaded with
huggingface_hub) or as local files::

    model: /data/ImageReward            # a directory with ImageReward.pt and med_config.json
    args: {tokenizer: bert-base-uncased}   # or a local copy of that tokenizer (the default)

``model`` may also be the path of ImageReward.pt itself (``med_config`` then defaults to the
med_config.json beside it) or ``THUDM/ImageReward``. ``tokenizer`` defaults to ``<dir>/tokenizer``
when that exists (the layout ``tiny:image_reward`` builds: ImageReward.pt, med_config.json,
tokenizer/), else ``bert-base-uncased``; ImageReward adds [DEC] and [ENC] to that vocabulary, which
never occur in a tokenised prompt, so the plain tokenizer gives the same ids.

The model is transformers' BlipVisionModel and BlipTextModel (built with cross-attention), loaded
from ImageReward.pt (a flat state dict, read with torch.load(weights_only=True)) by this mapping:

    blip.visual_encoder.cls_token               -> vision embeddings.class_embedding
    blip.visual_encoder.pos_embed               -> vision embeddings.position_embedding
    blip.visual_encoder.patch_embed.proj.*      -> vision embeddings.patch_embedding.*
    blip.visual_encoder.blocks.{i}.norm1.*      -> vision encoder.layers.{i}.layer_norm1.*
    blip.visual_encoder.blocks.{i}.attn.qkv.*   -> vision encoder.layers.{i}.self_attn.qkv.*
    blip.visual_encoder.blocks.{i}.attn.proj.*  -> vision encoder.layers.{i}.self_attn.projection.*
    blip.visual_encoder.blocks.{i}.norm2.*      -> vision encoder.layers.{i}.layer_norm2.*
    blip.visual_encoder.blocks.{i}.mlp.fc{1,2}.* -> vision encoder.layers.{i}.mlp.fc{1,2}.*
    blip.visual_encoder.norm.*                  -> vision post_layernorm.*
    blip.text_encoder.<rest>                    -> text <rest> (BLIP's med.py and BlipTextModel share names)
    mlp.layers.{0,2,4,6,7}.*                    -> head layers.* (actors/mlp_head.py)
    blip.text_encoder.embeddings.position_ids, blip.vision_proj.*, blip.text_proj.*: not used by the
    reward, dropped (any other key outside these prefixes is dropped with a warning, as ImageReward's
    own strict=False load ignores it).

The vision config is read off the tensor shapes (width, depth, patch size, image size from
pos_embed); the head count is not in the file: BLIP's ViTs use 64-wide heads (base 12, large 16),
so it defaults to width // 64 (``vision_heads`` overrides). LayerNorm eps 1e-6 and exact GELU are
BLIP's ViT. The text config comes from med_config.json (a BertConfig), with cross-attention width
set to the ViT width, as BLIP does. Not matched exactly: BLIP masks attention with -10000, the
transformers modules with the dtype minimum (no difference after softmax in float32).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import torch

from raypref.scoring import Scorer, pick_device

CHECKPOINT_FILE = "ImageReward.pt"
MED_CONFIG_FILE = "med_config.json"
TOKENIZER_DIR = "tokenizer"
DEFAULT_TOKENIZER = "bert-base-uncased"
REWARD_MEAN = 0.16717362830052426  # ImageReward's published normalisation (ImageReward.py)
REWARD_STD = 1.0333394966054072
MAX_PROMPT_TOKENS = 35  # ImageReward tokenises with padding='max_length', max_length=35
VISION, TEXT, HEAD = "blip.visual_encoder.", "blip.text_encoder.", "mlp."
DROPPED = ("blip.vision_proj.", "blip.text_proj.", TEXT + "embeddings.position_ids")
_BLOCK = re.compile(r"blocks\.(\d+)\.(norm1|attn\.qkv|attn\.proj|norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias)")
_BLOCK_NAMES = {"norm1": "layer_norm1", "attn.qkv": "self_attn.qkv", "attn.proj": "self_attn.projection",
                "norm2": "layer_norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_VISION_TOP = {"cls_token": "embeddings.class_embedding", "pos_embed": "embeddings.position_embedding",
               "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
               "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
               "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"}

log = logging.getLogger(__name__)


def vision_key(blip_key: str) -> str:
    """BLIP ViT name (without 'blip.visual_encoder.') -> BlipVisionModel name; KeyError if unknown."""
    if blip_key in _VISION_TOP:
        return _VISION_TOP[blip_key]
    m = _BLOCK.fullmatch(blip_key)
    if not m:
        raise KeyError(blip_key)
    i, part, kind = m.groups()
    return f"encoder.layers.{i}.{_BLOCK_NAMES[part]}.{kind}"


def split_state(state: dict[str, torch.Tensor], what: str = "ImageReward checkpoint") -> dict[str, dict]:
    """ImageReward.pt's flat state dict -> {'vision', 'text', 'head', 'dropped'} state dicts in the
    transformers / head module names."""
    out: dict[str, dict] = {"vision": {}, "text": {}, "head": {}, "dropped": {}}
    unknown_vision = []
    for k, v in state.items():
        if k.startswith(DROPPED):
            out["dropped"][k] = v
        elif k.startswith(VISION):
            try:
                out["vision"][vision_key(k[len(VISION):])] = v
            except KeyError:
                unknown_vision.append(k)
        elif k.startswith(TEXT):
            out["text"][k[len(TEXT):]] = v
        elif k.startswith(HEAD):
            out["head"][k[len(HEAD):]] = v
        else:
            out["dropped"][k] = v
    if unknown_vision:
        raise ValueError(f"{what}: vision keys outside BLIP's ViT layout: {unknown_vision[:10]}")
    for part, prefix in (("vision", VISION), ("text", TEXT), ("head", HEAD)):
        if not out[part]:
            raise ValueError(f"{what}: no '{prefix}*' keys; is this an ImageReward checkpoint? (keys: {sorted(state)[:8]})")
    return out


def vision_config(vision: dict[str, torch.Tensor], heads: int | None = None):
    """A BlipVisionConfig read off the BLIP ViT tensor shapes."""
    from transformers import BlipVisionConfig

    width = vision["embeddings.class_embedding"].shape[-1]
    patch = vision["embeddings.patch_embedding.weight"].shape[-1]
    grid = round((vision["embeddings.position_embedding"].shape[1] - 1) ** 0.5)
    if grid * grid + 1 != vision["embeddings.position_embedding"].shape[1]:
        raise ValueError(f"pos_embed of {vision['embeddings.position_embedding'].shape[1]} tokens is not 1 + a square grid")
    depth = len({k.split(".")[2] for k in vision if k.startswith("encoder.layers.")})
    return BlipVisionConfig(
        hidden_size=width, intermediate_size=vision["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=depth, num_attention_heads=heads or max(width // 64, 1), image_size=grid * patch,
        patch_size=patch, hidden_act="gelu", layer_norm_eps=1e-6,
    )


def text_config(med: dict, encoder_width: int, what: str):
    """BlipTextConfig from BLIP's med_config.json (a BertConfig with add_cross_attention)."""
    from transformers import BlipTextConfig

    need = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings")
    missing = [k for k in need if k not in med]
    if missing:
        raise ValueError(f"{what}: med_config lacks {missing}")
    if not med.get("add_cross_attention", False):
        raise ValueError(f"{what}: med_config has no add_cross_attention; ImageReward's text encoder needs it")
    if med.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{what}: only absolute position embeddings are supported, not {med['position_embedding_type']!r}")
    return BlipTextConfig(
        **{k: med[k] for k in need}, hidden_act=med.get("hidden_act", "gelu"),
        layer_norm_eps=med.get("layer_norm_eps", 1e-12), pad_token_id=med.get("pad_token_id", 0),
        bos_token_id=med.get("bos_token_id"), eos_token_id=med.get("eos_token_id"), sep_token_id=med.get("sep_token_id"),
        encoder_hidden_size=encoder_width, is_decoder=True,  # is_decoder: builds the cross-attention layers
    )


def _load(module, state: dict, what: str):
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{what}: missing {result.missing_keys[:10]}, unexpected {result.unexpected_keys[:10]}")
    return module


class ImageReward(Scorer):
    @classmethod
    def check_files(cls, where: str, args: dict) -> dict:
        """Where a stage runs this scorer, on the driver (registry.constructor_kwargs): med_config exists, tokenizer
        is a path or hub name; returns the args, those paths absolute."""
        from raypref.models import check_file_args

        return check_file_args(where, args, files=("med_config",), refs=("tokenizer",))

    def __init__(self, name: str = "image_reward", model: str = "", med_config: str | None = None,
                 tokenizer: str | None = None, vision_heads: int | None = None, num_gpus: float = 0.0):
        import open_clip
        from transformers import AutoTokenizer, BlipTextModel, BlipVisionModel

        from actors.mlp_head import load_head, load_state_file
        from raypref.models import check_model_ref

        super().__init__(name)
        what = f"scorer {name!r}"
        model = check_model_ref(model, what=f"{what} model")  # also turns a tiny: ref into its path
        ckpt, med_path, tok_ref = self._files(model, med_config, tokenizer, what)
        parts = split_state(load_state_file(ckpt, f"{what} checkpoint"), f"{what} checkpoint {ckpt}")
        other = [k for k in parts["dropped"] if not k.startswith(DROPPED)]
        if other:
            log.warning("%s: ignoring keys ImageReward does not use: %s", what, other[:10])
        vcfg = vision_config(parts["vision"], vision_heads)
        med = json.loads(Path(med_path).read_text())
        try:
            self.visual = _load(BlipVisionModel(vcfg), parts["vision"], f"{what} vision encoder")
            self.text = _load(BlipTextModel(text_config(med, vcfg.hidden_size, what), add_pooling_layer=False),
                              parts["text"], f"{what} text encoder")
        except RuntimeError as e:  # a shape mismatch: med_config or vision_heads do not fit the checkpoint
            raise ValueError(f"{what}: {ckpt} does not fit {med_path}: {e}") from e
        self.mlp = load_head(parts["head"], f"{what} head")
        if self.mlp.input_size != self.text.config.hidden_size:
            raise ValueError(f"{what}: head takes {self.mlp.input_size}-d input, text encoder gives {self.text.config.hidden_size}-d")
        self.device = pick_device(num_gpus)
        for m in (self.visual, self.text, self.mlp):
            m.to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(tok_ref)
        self.preprocess = open_clip.image_transform(vcfg.image_size, is_train=False)  # resize, crop, CLIP mean/std

    @staticmethod
    def _files(model: str, med_config: str | None, tokenizer: str | None, what: str) -> tuple[str, str, str]:
        path = Path(model).expanduser()
        if path.is_file():
            ckpt, folder = path, path.parent
        elif path.is_dir():
            ckpt, folder = path / CHECKPOINT_FILE, path
        else:  # a hub repo such as THUDM/ImageReward
            from huggingface_hub import hf_hub_download

            ckpt = Path(hf_hub_download(model, CHECKPOINT_FILE))
            med_config = med_config or hf_hub_download(model, MED_CONFIG_FILE)
            folder = None
        med = Path(med_config) if med_config else folder / MED_CONFIG_FILE
        for p, kind in ((ckpt, "checkpoint"), (med, "med_config")):
            if not p.is_file():
                raise FileNotFoundError(f"{what}: ImageReward {kind} does not exist: {p}")
        if tokenizer is None:
            local = folder / TOKENIZER_DIR if folder is not None else None
            tokenizer = str(local) if local is not None and local.is_dir() else DEFAULT_TOKENIZER
        return str(ckpt), str(med), tokenizer

    @torch.no_grad()
    def score(self, images, prompts):
        return self._score(torch.stack([self.preprocess(im) for im in images]), prompts).cpu().numpy().astype(np.float32)

    def differentiable_score(self, images, prompts):
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        from raypref.pixels import to_model_pixels

        size = self.visual.config.image_size  # the PIL path: open_clip.image_transform (resize, crop, CLIP mean/std)
        return {"": self._score(to_model_pixels(images, size, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD), prompts)}

    def _score(self, pix, prompts):
        image_embeds = self.visual(pixel_values=pix.to(self.device)).last_hidden_state
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=MAX_PROMPT_TOKENS,
                             return_tensors="pt")
        out = self.text(
            input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device),
            is_decoder=False,  # bidirectional self-attention: BLIP's encoder ('multimodal') mode
        )
        reward = self.mlp(out.last_hidden_state[:, 0, :].float())
        return (reward - REWARD_MEAN) / REWARD_STD
