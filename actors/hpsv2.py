"""HPSv2 (Wu et al. 2023, Human Preference Score v2): an open_clip ViT-H-14 fine-tuned on HPD v2
human preferences. The score is cosine(image embedding, text embedding), reported as is (about
0.2-0.3 for typical images; the HPSv2 repo's numbers).

On a cluster pass the architecture and the HPSv2 checkpoint file (from the xswu/HPSv2 hub repo);
the file holds the full model's weights under a 'state_dict' key (read with
torch.load(weights_only=True); a .safetensors file of the bare state dict works too)::

    model: ViT-H-14
    args: {checkpoint: /data/HPS_v2.1_compressed.pt}

``pretrained: /data/HPS_v2.1_compressed.pt`` is accepted in place of ``checkpoint`` (not beside it); a
pretrained *tag* is refused, since the checkpoint replaces every weight. Locally, 'local-dir:<dir>' gives an
open_clip config directory; when ``checkpoint`` is omitted it is ``<dir>/HPS_v2.1_compressed.pt``
(the layout ``tiny:hpsv2`` builds). Images are resized on their longest side and padded to
square, as HPSv2's evaluation transform does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from raypref.scoring import Scorer, pick_device

CHECKPOINT_FILE = "HPS_v2.1_compressed.pt"
LOCAL_DIR = "local-dir:"


def _checkpoint(what: str, model: str, pretrained: str | None, checkpoint: str | None) -> str:
    if checkpoint and pretrained:  # one would be dropped without a word
        raise ValueError(f"{what}: both pretrained={pretrained!r} and args.checkpoint are given; HPSv2's weights are "
                         "its checkpoint alone: give args.checkpoint (or a checkpoint file as pretrained), not both")
    if checkpoint:
        return checkpoint
    if pretrained:
        if not Path(pretrained).is_file():
            raise ValueError(f"{what}: pretrained={pretrained!r} is not a file; HPSv2 weights come from the HPSv2 "
                             "checkpoint (args.checkpoint or pretrained=<path to HPS_v2.1_compressed.pt>)")
        return pretrained
    local = Path(model[len(LOCAL_DIR):]) if model.startswith(LOCAL_DIR) else Path(model)
    if (local / CHECKPOINT_FILE).is_file():
        return str(local / CHECKPOINT_FILE)
    raise ValueError(f"{what}: pass checkpoint=<path to {CHECKPOINT_FILE}> (none next to model {model!r})")


class HPSv2(Scorer):
    @classmethod
    def check_pretrained(cls, where: str, pretrained: str | None, args: dict) -> None:
        """On the driver (build.scorer_kwargs): what _checkpoint refuses in every actor, refused once, before Ray."""
        if pretrained:
            _checkpoint(where, "", pretrained, args.get("checkpoint"))

    @classmethod
    def check_files(cls, where: str, args: dict) -> dict:
        """Where a stage runs this scorer, on the driver (registry.constructor_kwargs): the checkpoint
        file exists; returns the args, that path absolute."""
        from raypref.models import check_file_args

        return check_file_args(where, args, files=("checkpoint",))

    def __init__(self, name: str = "hpsv2", model: str = "", pretrained: str | None = None,
                 checkpoint: str | None = None, num_gpus: float = 0.0):
        import open_clip

        from raypref.models import check_model_ref, quiet_missing_weights

        super().__init__(name)
        what = f"scorer {name!r}"
        model = check_model_ref(model, what=f"{what} model")  # also turns a tiny: ref into its path
        ckpt = _checkpoint(what, model, pretrained, checkpoint)
        if not Path(ckpt).is_file():
            raise FileNotFoundError(f"{what}: HPSv2 checkpoint does not exist: {ckpt}")
        self.device = pick_device(num_gpus)
        # architecture only: every weight comes from the HPSv2 checkpoint, loaded strictly below
        with quiet_missing_weights():
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                model, pretrained=None, load_weights=False, image_resize_mode="longest"
            )
        try:
            open_clip.load_checkpoint(self.model, ckpt, strict=True, weights_only=True)
        except RuntimeError as e:
            raise ValueError(f"{what}: {ckpt} does not fit open_clip model {model!r}: {e}") from e
        self.model.to(self.device).eval()
        self.tokenizer = open_clip.get_tokenizer(model)

    def _score(self, pix, prompts):
        tok = self.tokenizer(prompts).to(self.device)
        img = torch.nn.functional.normalize(self.model.encode_image(pix.to(self.device)).float(), dim=-1)
        txt = torch.nn.functional.normalize(self.model.encode_text(tok).float(), dim=-1)
        return (img * txt).sum(-1)

    @torch.no_grad()
    def score(self, images, prompts):
        return self._score(torch.stack([self.preprocess(im) for im in images]), prompts).cpu().numpy().astype(np.float32)

    def differentiable_score(self, images, prompts):
        from raypref.pixels import open_clip_pixels

        return {"": self._score(open_clip_pixels(self.model, images, resize_mode="longest"), prompts)}
