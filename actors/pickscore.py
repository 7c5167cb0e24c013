"""PickScore (Kirstain et al. 2023): a CLIP-H fine-tuned on Pick-a-Pic human preferences. The score
is logit_scale.exp() x cosine(image embedding, text embedding), about 18-23 for typical images.

On a cluster pass the published checkpoint and the processor it was trained with (transformers
``from_pretrained`` names or local copies of them)::

    model: yuvalkirstain/PickScore_v1
    args: {processor: laion/CLIP-ViT-H-14-laion2B-s32B-b79K}

``processor`` defaults to ``model``: a directory holding both a CLIPModel and its processor
(``save_pretrained`` of each, the layout ``tiny:pickscore`` builds) needs only ``model``.
"""

from __future__ import annotations

import numpy as np
import torch

from raypref.scoring import Scorer, pick_device


def _embeds(out) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected embedding
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class PickScore(Scorer):
    @classmethod
    def check_files(cls, where: str, args: dict) -> dict:
        """Where a stage runs this scorer, on the driver (registry.constructor_kwargs): the processor
        is a path or hub name; returns the args, a path made absolute."""
        from raypref.models import check_file_args

        return check_file_args(where, args, refs=("processor",))

    def __init__(self, name: str = "pickscore", model: str = "", processor: str | None = None,
                 num_gpus: float = 0.0):
        from transformers import AutoProcessor, CLIPModel

        from raypref.models import check_model_ref

        super().__init__(name)
        model = check_model_ref(model, what=f"scorer {name!r} model")  # also turns a tiny: ref into its path
        processor = processor or model
        processor = check_model_ref(processor, what=f"scorer {name!r} processor")
        self.device = pick_device(num_gpus)
        self.model = CLIPModel.from_pretrained(model, dtype=torch.float32).to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(processor)

    @torch.no_grad()
    def score(self, images, prompts):
        pix = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        return self._score(pix, prompts).cpu().numpy().astype(np.float32)

    def differentiable_score(self, images, prompts):
        from raypref.pixels import processor_pixels

        return {"": self._score(processor_pixels(self.processor.image_processor, images), prompts)}

    def _score(self, pix, prompts):
        unique = list(dict.fromkeys(prompts))
        tok = self.processor(text=unique, padding=True, truncation=True, max_length=77, return_tensors="pt")
        img = _embeds(self.model.get_image_features(pixel_values=pix.to(self.device)))
        txt = _embeds(self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                                   attention_mask=tok["attention_mask"].to(self.device)))
        img = torch.nn.functional.normalize(img.float(), dim=-1)
        txt = torch.nn.functional.normalize(txt.float(), dim=-1)
        pos = {p: i for i, p in enumerate(unique)}
        row = torch.tensor([pos[p] for p in prompts], device=self.device)
        cos = (img * txt[row]).sum(-1)
        return self.model.logit_scale.exp().float() * cos
