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


def fit_square(im: Image.Image, size: int) -> Image.Image:
    """The short side scaled to ``size`` (bicubic), the long side center-cropped to it, as the
    diffusers and Diffusion-DPO training scripts prepare images (Resize then CenterCrop): an
    imported or non-square image keeps its proportions instead of being squashed."""
    w, h = im.size
    if (w, h) == (size, size):
        return im
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def to_tensor(images: list[Image.Image], size: int | None = None):
    """PIL images -> float tensor in [-1, 1], shape (B, 3, H, W): the VAE's input range; with
    ``size``, each image fit_square'd to it."""
    import torch

    arrs = []
    for im in images:
        if size is not None:
            im = fit_square(im, size)
        arrs.append(np.asarray(im, dtype=np.float32) / 127.5 - 1.0)
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()
