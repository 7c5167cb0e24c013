"""Caption-to-prompt similarity: a BLIP captioner describes each image, and the caption is compared
with the prompt by content-word token F1 (``raypref.answer_match.token_f1``).

The prompt side is its subject phrase (a leading "a photo of" frame is dropped,
``raypref.prompt_nouns.subject_phrase``); both sides are normalised (lowercase, no punctuation or
articles, number words as digits) and common function words (of, on, with, ...) are ignored.
Outputs: main score = F1 in [0, 1]; aspects 'precision' (how much of the caption the prompt
asked for) and 'recall' (how much of the prompt the caption mentions); rationale = the caption.

On a cluster pass model='Salesforce/blip-image-captioning-base' (or '...-large'):
BlipForConditionalGeneration + BlipProcessor, or a local save_pretrained directory of either.
Locally, 'tiny:blip_caption' is the same architecture with random weights (nonsense captions).
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import PositiveInt

from raypref.registry import checked_args
from raypref.scoring import Scorer


class CaptionSimilarity(Scorer):
    outputs = ("precision", "recall", "rationale")

    @checked_args("scorer")
    def __init__(self, name: str = "caption", model: str = "", pretrained: str | None = None, num_gpus: float = 0.0,
                 max_new_tokens: PositiveInt = 30, num_beams: PositiveInt = 1, batch_size: PositiveInt = 32):
        from transformers import BlipForConditionalGeneration

        from actors.blip_common import load_blip

        super().__init__(name)
        self.device, self.processor, self.model, self.generate_kwargs = load_blip(
            name, model, BlipForConditionalGeneration, num_gpus, max_new_tokens, num_beams, batch_size)
        self.batch_size = batch_size

    @torch.no_grad()
    def caption(self, images) -> list[str]:
        captions = []
        for start in range(0, len(images), self.batch_size):
            chunk = [im.convert("RGB") for im in images[start : start + self.batch_size]]
            pixels = self.processor(images=chunk, return_tensors="pt")["pixel_values"].to(self.device, self.model.dtype)
            out = self.model.generate(pixel_values=pixels, **self.generate_kwargs)
            captions += [c.strip() for c in self.processor.batch_decode(out, skip_special_tokens=True)]
        return captions

    def score(self, images, prompts):
        from raypref.answer_match import token_f1
        from raypref.prompt_nouns import subject_phrase

        captions = self.caption(images)
        prf = np.array([token_f1(c, subject_phrase(p)) for c, p in zip(captions, prompts)], np.float32).reshape(-1, 3)
        return {"": prf[:, 2], "precision": prf[:, 0], "recall": prf[:, 1], "rationale": captions}
