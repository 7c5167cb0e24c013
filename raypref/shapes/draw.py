"""Rasterising one shape into a box: the one drawing routine the renderer and checker share.

The checker classifies a blob by IoU against templates drawn by exactly this code at the
blob's bounding box, so a rendered object matches its own template pixel for pixel.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw


def _arm(extent: int) -> int:
    """Arm thickness near extent/3 with extent's parity, so the bar sits exactly centred."""
    lo = int(extent // 3)
    options = [t for t in (lo - 1, lo, lo + 1, lo + 2) if t >= 1 and (extent - t) % 2 == 0]
    return min(options, key=lambda t: (abs(t - extent / 3), t)) if options else max(1, extent)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    """Draw ``shape`` filling the inclusive pixel box (x0, y0, x1, y1); never anti-aliased."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0 + 1, y1 - y0 + 1
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
    elif shape == "cross":
        tw, th = _arm(w), _arm(h)
        a, b = (w - tw) // 2, (h - th) // 2
        draw.rectangle([x0 + a, y0, x0 + a + tw - 1, y1], fill=fill)
        draw.rectangle([x0, y0 + b, x1, y0 + b + th - 1], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


@lru_cache(maxsize=4096)
def _mask(shape: str, w: int, h: int) -> np.ndarray:
    img = Image.new("L", (w, h), 0)
    draw_shape(ImageDraw.Draw(img), shape, (0, 0, w - 1, h - 1), 255)
    out = np.asarray(img) > 0
    out.setflags(write=False)
    return out


def shape_mask(shape: str, w: int, h: int) -> np.ndarray:
    """Boolean (h, w) mask of ``shape`` drawn into a w x h box (cached, read-only)."""
    if w < 1 or h < 1:
        raise ValueError(f"box must be at least 1x1, got {w}x{h}")
    return _mask(shape, int(w), int(h))
