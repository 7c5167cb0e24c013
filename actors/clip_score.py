"""CLIP score with open_clip: 100 x cosine(image, text), floored at 0 (CLIPScore's max(cos, 0), Hessel
et al. 2021; AGFSync's released code takes 100 x cosine unfloored, which differs only for images whose
cosine is negative). ``floor_at_zero=False`` keeps negative values, useful for weak models whose
cosines are often < 0. ``prompt_chars=77`` cuts each prompt to its first 77 characters before
tokenising, as AGFSync's released scoring does (otherwise the tokenizer truncates at 77 tokens).

On a cluster pass a real checkpoint, e.g. model='ViT-L-14' with pretrained='openai', or
model='hf-hub:laion/CLIP-ViT-H-14-laion2B-s32B-b79K'. Locally, 'local-dir:/path' loads an
open_clip directory (open_clip_config.json + weights) with no network.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from raypref.registry import checked_args
from raypref.scoring import Scorer, pick_device


class CLIPScore(Scorer):
    READS_OPEN_CLIP_TAG = True  # `pretrained` is an open_clip tag (or weights file): checked on the driver

    @checked_args("scorer")
    def __init__(self, name: str = "clip", model: str = "", pretrained: str | None = None, num_gpus: float = 0.0,
                 floor_at_zero: bool = True, prompt_chars: Annotated[int, Field(ge=1)] | None = None):
        import open_clip

        from raypref.models import check_model_ref, open_clip_model

        super().__init__(name)
        self.floor, self.chars = floor_at_zero, prompt_chars
        model = check_model_ref(model, what=f"scorer {name!r} model")  # also turns a tiny: ref into its path
        self.device = pick_device(num_gpus)
        self.model, self.preprocess, _ = open_clip_model(model, pretrained, device=self.device)  # QuickGELU where trained so
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model)

    def _score(self, pix, prompts):
        if self.chars:
            prompts = [p[: self.chars] for p in prompts]
        tok = self.tokenizer(list(prompts)).to(self.device)
        img = torch.nn.functional.normalize(self.model.encode_image(pix.to(self.device)).float(), dim=-1)
        txt = torch.nn.functional.normalize(self.model.encode_text(tok).float(), dim=-1)
        s = 100.0 * (img * txt).sum(-1)
        return s.clamp(min=0.0) if self.floor else s

    @torch.no_grad()
    def score(self, images, prompts):
        pix = torch.stack([self.preprocess(im) for im in images])
        return self._score(pix, prompts).cpu().numpy().astype(np.float32)

    def differentiable_score(self, images, prompts):
        from raypref.pixels import open_clip_pixels

        return {"": self._score(open_clip_pixels(self.model, images), prompts)}
