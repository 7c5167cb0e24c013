"""Image codecs: images travel as encoded bytes (PNG by default) in Arrow binary columns."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    """Decode bytes to an RGB image; raises ValueError for bytes that are not an image."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # PIL raises several types for bad data
        raise ValueError(f"undecodable image bytes ({len(data or b'')} bytes): {e}") from e
    return img.convert("RGB")


def decode_rows(data, rows) -> list[Image.Image]:
    """decode() of each blob; a failure names its row (``rows[i]``, e.g. "samples row sample_id='x'")."""
    out = []
    for b, row in zip(data, rows):
        try:
            out.append(decode(b))
        except ValueError as e:
            raise ValueError(f"{row}: {e}") from None
    return out


def to_tensor(images: list[Image.Image], size: int | None = None):
    """PIL images -> float tensor in [-1, 1], shape (B, 3, H, W): the VAE's input range. With
    ``size``, each image's short side is scaled to it and the long side center-cropped (the scorers'
    "shortest" mode), as the diffusers and Diffusion-DPO training scripts prepare images (Resize then
    CenterCrop): an imported or non-square image keeps its proportions instead of being squashed."""
    import torch

    from raypref.pixels import to_model_pixels

    half = (0.5, 0.5, 0.5)  # (x - 0.5) / 0.5: [0, 1] -> [-1, 1]
    out = []
    for im in images:
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        out.append(to_model_pixels(x, size or x.shape[-2:], half, half, "shortest"))
    return torch.cat(out).contiguous()


def crop_boxes(images: list[Image.Image], size: int) -> list[tuple[int, int, int, int]]:
    """What to_tensor(images, size) does to each image: (original height, original width, crop
    top, crop left), the crop in the resized image's pixels: SDXL's size conditioning."""
    from raypref.pixels import shortest_crop

    return [(im.height, im.width, *shortest_crop(im.height, im.width, size, size)[2:]) for im in images]
