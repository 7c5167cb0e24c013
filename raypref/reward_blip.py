"""The BLIP backbone of the reward model (raypref.reward_model), through transformers. No Ray here.

Fusion, as ImageReward (Xu et al. 2023) builds its reward on BLIP: BLIP's ViT turns the image into
patch tokens; BLIP's BERT text encoder reads the prompt in encoder (bidirectional) mode with
cross-attention to those tokens in every layer, and the final hidden state of the first token is
the image-text feature (text width, 768 for base) the reward heads read. This is BLIP's
image-text-matching path (``BlipForImageTextRetrieval`` with ``use_itm_head``) without its 2-way
matching classifier. It is chosen over ``BlipModel``'s projected image and text embeddings fused
like the open_clip path because there every prompt word can attend to every image patch, which
late fusion of two pooled vectors cannot do; ImageReward's reward, built on this feature, predicted
human preferences better than CLIP or BLIP embedding-similarity scores in its paper.

Checkpoint: a ``BlipForImageTextRetrieval`` by hub name or local directory (real:
``Salesforce/blip-itm-base-coco``, ``Salesforce/blip-itm-large-coco``) with its ``BlipProcessor``
(image resize/normalise and the BERT tokenizer) from the same place. Only ``vision_model`` and
``text_encoder`` are kept: the matching head and the contrastive projections play no part in the
reward (and would be trainable parameters without gradients, which DDP rejects).

Export: ``backbone/`` holds the ``BlipConfig`` (config.json) and the processor files
(save_pretrained); the weights live in the reward model's single model.safetensors as
``backbone.vision_model.*`` and ``backbone.text_encoder.*``, as the open_clip path keeps its
weights there too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

MAX_TEXT_TOKENS = 35  # the prompt length BLIP's retrieval fine-tuning and ImageReward tokenise to
_TOWERS = ("vision_model.", "text_encoder.")


class BlipBackbone(nn.Module):
    kind = "blip"
    fusion = "text encoder cross-attending to image patches, first-token state (ImageReward) -> layernorm -> linear -> gelu"

    def __init__(self, vision_model: nn.Module, text_encoder: nn.Module, blip_config, processor, source: str,
                 max_text_tokens: int = MAX_TEXT_TOKENS):
        super().__init__()
        self.vision_model = vision_model
        self.text_encoder = text_encoder
        self.blip_config = blip_config
        self.processor = processor
        self.source = source
        self.max_text_tokens = min(int(max_text_tokens), int(blip_config.text_config.max_position_embeddings))
        self.embed_dim = int(blip_config.text_config.hidden_size)
        self.feature_dim = self.embed_dim

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """transformers' per-layer gradient checkpointing on both encoders, non-reentrant: with frozen
        embeddings (freeze=all_but_last) the reentrant kind would pass no gradient to the unfrozen layers.
        BlipTextModel does not opt in to the public switch, though its layers support it (the full BLIP
        model sets them through this same method), hence _set_gradient_checkpointing."""
        import functools

        from torch.utils.checkpoint import checkpoint

        func = functools.partial(checkpoint, use_reentrant=False)
        for tower in (self.vision_model, self.text_encoder):
            tower._set_gradient_checkpointing(enable=enable, gradient_checkpointing_func=func)

    @classmethod
    def from_ref(cls, ref: str, pretrained: str | None = None) -> "BlipBackbone":
        """A BlipForImageTextRetrieval checkpoint by hub name or path (``pretrained`` is an open_clip
        notion and is ignored)."""
        from transformers import BlipForImageTextRetrieval, BlipProcessor

        full, info = BlipForImageTextRetrieval.from_pretrained(ref, output_loading_info=True, dtype=torch.float32)
        missing = [k for k in info["missing_keys"] if k.startswith(_TOWERS)]
        if missing:
            raise ValueError(f"reward backbone {ref!r}: not a BLIP image-text-matching checkpoint (BlipForImageTextRetrieval, "
                             f"e.g. Salesforce/blip-itm-base-coco): its weights lack {missing[:5]}")
        return cls(full.vision_model, full.text_encoder, full.config, BlipProcessor.from_pretrained(ref), ref)

    @classmethod
    def from_export(cls, d: Path, source: str, preprocess: dict | None = None) -> "BlipBackbone":
        """The architecture from an export's backbone/ directory, with random weights: the caller
        loads the weights from model.safetensors."""
        from transformers import BlipConfig, BlipProcessor, BlipTextModel, BlipVisionModel

        cfg = BlipConfig.from_pretrained(str(d))
        vision = BlipVisionModel(cfg.vision_config)
        text = BlipTextModel(cfg.text_config, add_pooling_layer=False)
        tokens = (preprocess or {}).get("max_text_tokens", MAX_TEXT_TOKENS)
        return cls(vision, text, cfg, BlipProcessor.from_pretrained(str(d)), source, tokens)

    def save_arch(self, d: Path) -> None:
        """config.json (BlipConfig) and the BlipProcessor's files; no weights."""
        d.mkdir(parents=True, exist_ok=True)
        self.blip_config.save_pretrained(str(d))
        self.processor.save_pretrained(str(d))

    def preprocess_cfg(self) -> dict:
        ip = self.processor.image_processor
        return {"size": dict(ip.size), "mean": list(ip.image_mean), "std": list(ip.image_std),
                "max_text_tokens": self.max_text_tokens}

    def inputs(self, images: Sequence, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """PIL images and prompts -> (pixels (B, 3, H, W), tokens (B, 2, L): input ids and attention
        mask stacked, so the batch moves and splits as one tensor like open_clip's tokens)."""
        enc = self.processor(images=list(images), text=list(prompts), padding="longest", truncation=True,
                             max_length=self.max_text_tokens, return_tensors="pt")
        return enc["pixel_values"], torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1)

    def text_inputs(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> tokens (B, 2, L), as inputs() makes them (for images that are tensors, not PIL)."""
        enc = self.processor.tokenizer(list(prompts), padding="longest", truncation=True,
                                       max_length=self.max_text_tokens, return_tensors="pt")
        return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1)

    def features(self, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        patches = self.vision_model(pixel_values=pixels).last_hidden_state
        out = self.text_encoder(
            input_ids=tokens[:, 0], attention_mask=tokens[:, 1], encoder_hidden_states=patches,
            encoder_attention_mask=torch.ones(patches.shape[:-1], dtype=torch.long, device=patches.device),
        )  # is_decoder defaults to False: bidirectional self-attention, BLIP's image-grounded encoder mode
        return out.last_hidden_state[:, 0].float()

    def freeze(self, mode: str, unfrozen_blocks: int = 1) -> None:
        """'none': all trainable; 'all': none; 'all_but_last': the last ``unfrozen_blocks`` layers of
        the ViT and of the text encoder, and the ViT's final LayerNorm."""
        from raypref.reward_model import FREEZE_MODES

        if mode not in FREEZE_MODES:
            raise ValueError(f"reward.freeze: {mode!r} is not one of {FREEZE_MODES}")
        if mode == "none":
            return
        self.requires_grad_(False)
        if mode == "all":
            return
        if unfrozen_blocks > 0:
            for layers in (self.vision_model.encoder.layers, self.text_encoder.encoder.layer):
                for block in layers[-unfrozen_blocks:]:
                    block.requires_grad_(True)
        self.vision_model.post_layernorm.requires_grad_(True)
