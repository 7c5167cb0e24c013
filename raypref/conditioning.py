"""What a diffusers UNet is conditioned on, for the training loops (DPO, SFT, ReFL), which call the
UNet themselves: Stable Diffusion 1.x / 2.x's one CLIP text encoder, or SDXL's two, whose UNet
also takes the pooled text embedding and six size ids (``added_cond_kwargs``).

Encoded as the pipelines encode (diffusers 0.42): SD takes the text encoder's last hidden state;
SDXL concatenates both encoders' penultimate hidden states and pools from the second
(``CLIPTextModelWithProjection``). SDXL's size ids are (original height, original width, crop
top, crop left, target height, target width), per image: what the diffusers SDXL training
scripts give, from the image before it was resized and where it was cropped
(``images.crop_boxes``); generated images (ReFL) get the pipeline's default, (s, s, 0, 0, s, s).
The generator needs none of this: it uses the pipeline's own ``encode_prompt``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# the pipeline components a training loop reads; a pipeline without them (a DiT, a T5-only
# model) is refused by name
_SD_PARTS = ("unet", "vae", "scheduler", "text_encoder", "tokenizer")
_XL_PARTS = ("text_encoder_2", "tokenizer_2")


@dataclass
class Cond:
    """A batch's conditioning: ``hidden`` (B, L, D) encoder states; for SDXL also ``pooled`` (B, P)
    and ``time_ids`` (B, 6)."""

    hidden: object
    pooled: object = None
    time_ids: object = None

    @classmethod
    def of(cls, x) -> Cond:
        """A Cond as is, or a bare hidden-states tensor (an SD model's whole conditioning)."""
        return x if isinstance(x, Cond) else cls(x)

    def unet_kwargs(self) -> dict:
        """The keyword arguments UNet2DConditionModel.forward takes for this conditioning."""
        if self.pooled is None:
            return {"encoder_hidden_states": self.hidden}
        if self.time_ids is None:
            raise ValueError("an SDXL conditioning needs its size ids (with_sizes) before the UNet call")
        return {"encoder_hidden_states": self.hidden,
                "added_cond_kwargs": {"text_embeds": self.pooled, "time_ids": self.time_ids}}

    def repeat(self, n: int) -> Cond:
        """The batch n times over, in order (DPO's winners, then its losers)."""
        def rep(x):
            return None if x is None else x.repeat(n, *([1] * (x.dim() - 1)))

        return Cond(rep(self.hidden), rep(self.pooled), rep(self.time_ids))

    @staticmethod
    def cat(parts: list[Cond]) -> Cond:
        """The batches one after another (classifier-free guidance's unconditional, then conditional)."""
        import torch

        def cat(xs):
            return None if xs[0] is None else torch.cat(xs)

        return Cond(cat([p.hidden for p in parts]), cat([p.pooled for p in parts]), cat([p.time_ids for p in parts]))

    def with_sizes(self, boxes: list[tuple[int, int, int, int]], size: int) -> Cond:
        """SDXL's size ids from each image's (original h, original w, crop top, crop left) and the
        square target ``size``, one box a row of the batch; an SD conditioning is returned as is."""
        if self.pooled is None:
            return self
        import torch

        if len(boxes) != self.pooled.shape[0]:
            raise ValueError(f"{len(boxes)} size boxes for a batch of {self.pooled.shape[0]}")
        ids = torch.tensor([[*b, size, size] for b in boxes], dtype=self.pooled.dtype, device=self.pooled.device)
        return replace(self, time_ids=ids)

    def with_default_sizes(self, size: int) -> Cond:
        """Size ids of images drawn at ``size`` uncropped: the pipeline's default, (s, s, 0, 0, s, s)."""
        n = 0 if self.pooled is None else self.pooled.shape[0]
        return self.with_sizes([(size, size, 0, 0)] * n, size)


def pipeline_parts(base: str) -> tuple[dict, bool]:
    """(the pipeline's model_index.json, whether it is SDXL-like); a pipeline the training loops
    cannot condition is a ValueError naming it."""
    from diffusers import DiffusionPipeline

    index = DiffusionPipeline.load_config(base)
    present = {k for k, v in index.items() if not k.startswith("_") and isinstance(v, (list, tuple)) and v[0]}
    name = index.get("_class_name", "?")
    missing = [p for p in _SD_PARTS if p not in present]
    if missing:
        raise ValueError(f"train.base_model: {base} is a {name} without {missing}; training supports Stable Diffusion "
                         "1.x / 2.x and SDXL pipelines (a UNet with CLIP text encoders)")
    return index, all(p in present for p in _XL_PARTS)


class TextEncoders:
    """The frozen tokenizer(s) and text encoder(s) of a diffusers pipeline directory (or hub name):
    ``encoders(prompts)`` -> Cond."""

    def __init__(self, base: str, device):
        import torch
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        index, self.xl = pipeline_parts(base)
        self.device = device
        subs = [("tokenizer", "text_encoder", CLIPTextModel)]
        if self.xl:
            subs.append(("tokenizer_2", "text_encoder_2", CLIPTextModelWithProjection))
        # float32 as diffusers loads the UNet and VAE: transformers would keep a checkpoint's stored
        # dtype, and an fp16-saved encoder's states crash an fp32 UNet (training casts under autocast)
        self.pairs = [(CLIPTokenizer.from_pretrained(base, subfolder=t),
                       cls.from_pretrained(base, subfolder=e, dtype=torch.float32).to(device).requires_grad_(False))
                      for t, e, cls in subs]
        # SDXL's pipeline conditions an empty negative prompt on zeros when its config says so
        self.zero_uncond = self.xl and bool(index.get("force_zeros_for_empty_prompt", False))

    def __call__(self, prompts) -> Cond:
        import torch

        states, pooled = [], None
        with torch.no_grad():
            for tok, enc in self.pairs:
                t = tok(list(prompts), padding="max_length", truncation=True, max_length=tok.model_max_length,
                        return_tensors="pt")
                ids = t.input_ids.to(self.device)
                if not self.xl:
                    # as StableDiffusionPipeline: the padding masked only where the encoder's config asks (some SD 2.x)
                    mask = t.attention_mask.to(self.device) if getattr(enc.config, "use_attention_mask", False) else None
                    return Cond(enc(ids, attention_mask=mask)[0])
                out = enc(ids, output_hidden_states=True)
                states.append(out.hidden_states[-2])
                pooled = out[0]  # the last encoder's projection: SDXL's pooled embedding
        return Cond(torch.cat(states, dim=-1), pooled)

    def unconditional(self, n: int) -> Cond:
        """The empty prompt's conditioning for classifier-free guidance, n rows."""
        import torch

        empty = self([""] * n)
        if not self.zero_uncond:
            return empty
        return Cond(torch.zeros_like(empty.hidden), torch.zeros_like(empty.pooled))

    def parameters(self):
        for _, enc in self.pairs:
            yield from enc.parameters()
