"""LAION aesthetic predictor: an MLP on the L2-normalised CLIP image embedding, predicting the 1-10
rating people give an image for how good it looks. The prompt is not used.

On a cluster pass the checkpoint the published head was trained on, OpenAI CLIP ViT-L/14 through
open_clip, and the head from christophschuhmann/improved-aesthetic-predictor::

    model: ViT-L-14
    pretrained: openai
    args: {head: /data/sac+logos+ava1-l14-linearMSE.pth}

The head file is a state dict with keys ``layers.{0,2,4,6,7}.{weight,bias}`` (see actors/mlp_head.py),
as .pth/.pt (read with torch.load(weights_only=True)) or .safetensors. Locally, 'local-dir:<dir>'
loads an open_clip directory; when ``head`` is omitted the head is read from
``<dir>/aesthetic_head.safetensors`` (the layout ``tiny:aesthetic`` builds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from raypref.scoring import Scorer, pick_device

HEAD_FILE = "aesthetic_head.safetensors"
LOCAL_DIR = "local-dir:"


class AestheticPredictor(Scorer):
    READS_OPEN_CLIP_TAG = True  # `pretrained` is an open_clip tag (or weights file): checked on the driver

    @classmethod
    def check_files(cls, where: str, args: dict) -> dict:
        """Where a stage runs this scorer, on the driver (registry.constructor_kwargs): the head file
        exists; returns the args, that path absolute."""
        from raypref.models import check_file_args

        return check_file_args(where, args, files=("head",))

    def __init__(self, name: str = "aesthetic", model: str = "", pretrained: str | None = None,
                 head: str | None = None, num_gpus: float = 0.0):
        from actors.mlp_head import load_head, load_state_file
        from raypref.models import check_model_ref, open_clip_model

        super().__init__(name)
        what = f"scorer {name!r}"
        model = check_model_ref(model, what=f"{what} model")  # also turns a tiny: ref into its path
        if head is None:
            local = Path(model[len(LOCAL_DIR):]) if model.startswith(LOCAL_DIR) else Path(model)
            if not (local / HEAD_FILE).is_file():
                raise ValueError(f"{what}: pass head=<aesthetic MLP weights, e.g. sac+logos+ava1-l14-linearMSE.pth> "
                                 f"(no {HEAD_FILE} next to model {model!r})")
            head = str(local / HEAD_FILE)
        self.device = pick_device(num_gpus)
        self.model, self.preprocess, _ = open_clip_model(model, pretrained, device=self.device)  # QuickGELU where trained so
        self.model.eval()
        self.head = load_head(load_state_file(head, f"{what} head"), f"{what} head").to(self.device)
        embed = getattr(self.model.visual, "output_dim", None)
        if embed is not None and embed != self.head.input_size:
            raise ValueError(f"{what}: head {head} expects {self.head.input_size}-d embeddings but {model!r} gives {embed}-d")

    def _score(self, pix):
        emb = torch.nn.functional.normalize(self.model.encode_image(pix.to(self.device)).float(), dim=-1)
        return self.head(emb)

    @torch.no_grad()
    def score(self, images, prompts):
        return self._score(torch.stack([self.preprocess(im) for im in images])).cpu().numpy().astype(np.float32)

    def differentiable_score(self, images, prompts):
        from raypref.pixels import open_clip_pixels

        return {"": self._score(open_clip_pixels(self.model, images))}
