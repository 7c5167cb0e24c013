"""Scorer models' image preprocessing on tensors, differentiably: what reward feedback learning
(raypref.train_refl) backpropagates through from a score to the pixels a diffusion model drew.

Each scorer's own path takes PIL images (resize, crop or pad, rescale, normalise); ``to_model_pixels``
does the same steps on a (B, 3, H, W) float tensor in [0, 1]. Resizing is antialiased, as PIL's is,
so the two agree to within rounding (the tests check each scorer's pair).
"""

from __future__ import annotations

from typing import Sequence

RESIZE_MODES = ("shortest", "longest", "squash")


def to_model_pixels(images, size, mean: Sequence[float], std: Sequence[float], resize_mode: str = "shortest",
                    interpolation: str = "bicubic", fill: float = 0.0):
    """RGB images in [0, 1] -> normalised model pixels of ``size`` (an int, (h, w), or a
    {"height", "width"} / {"shortest_edge"} dict as image processors write it).

    resize_mode: ``shortest`` scales the short side to the target and center-crops (CLIP's
    transform); ``longest`` scales the long side and pads with ``fill`` (HPSv2's); ``squash``
    resizes to the target whatever the aspect (BLIP's)."""
    import torch
    from torch.nn import functional as F

    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    h, w = _hw(size)
    mode = interpolation if interpolation in ("bicubic", "bilinear") else "bicubic"
    _, _, ih, iw = images.shape
    if resize_mode == "squash":
        images = _resize(images, (h, w), mode)
    elif resize_mode == "shortest":
        nh, nw, top, left = shortest_crop(ih, iw, h, w)
        images = _resize(images, (nh, nw), mode)
        images = images[:, :, top:top + h, left:left + w]
    else:
        ratio = max(ih / h, iw / w)  # open_clip's ResizeKeepRatio(longest=1)
        nh, nw = max(1, round(ih / ratio)), max(1, round(iw / ratio))
        images = _resize(images, (nh, nw), mode)
        top, left = (h - nh) // 2, (w - nw) // 2  # center pad
        images = F.pad(images, (left, w - nw - left, top, h - nh - top), value=fill)
    mean_t = torch.tensor(list(mean), dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std), dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def shortest_crop(ih: int, iw: int, h: int, w: int) -> tuple[int, int, int, int]:
    """The "shortest" mode's geometry for an ih x iw image and an h x w target: the resized size
    (nh, nw), the short side scaled to the target and the long one truncated (torchvision,
    transformers), and the center crop's top-left corner in it (SDXL's crop coordinates)."""
    t = max(h, w)
    nh, nw = (t, int(t * iw / ih)) if ih <= iw else (int(t * ih / iw), t)
    return nh, nw, int(round((nh - h) / 2)), int(round((nw - w) / 2))


def preprocess_cfg_pixels(cfg: dict, images, resize_mode: str | None = None):
    """to_model_pixels with the settings of a preprocess_cfg dict (open_clip's, or a reward model
    backbone's): ``resize_mode`` overrides the cfg's; without either, a {"height", "width"} size
    (BLIP's) squashes and any other size keeps the short side."""
    mode = resize_mode or cfg.get("resize_mode") or ("squash" if isinstance(cfg["size"], dict) else "shortest")
    return to_model_pixels(images, cfg["size"], cfg["mean"], cfg["std"], mode, cfg.get("interpolation", "bicubic"),
                           cfg.get("fill_color", 0) / 255)


def open_clip_pixels(model, images, resize_mode: str | None = None):
    """to_model_pixels with an open_clip model's own preprocessing settings (model.visual.preprocess_cfg)."""
    return preprocess_cfg_pixels(dict(model.visual.preprocess_cfg), images, resize_mode)


def processor_pixels(image_processor, images):
    """to_model_pixels with a transformers image processor's settings (CLIPImageProcessor: resize the
    short side, center crop; BlipImageProcessor: resize to the size)."""
    crop = getattr(image_processor, "crop_size", None) if getattr(image_processor, "do_center_crop", False) else None
    size = crop or image_processor.size
    mode = "shortest" if crop or _get(image_processor.size, "shortest_edge") else "squash"
    return to_model_pixels(images, size, image_processor.image_mean, image_processor.image_std, mode)


def _get(size, key: str):
    """A key of a size dict or of transformers' SizeDict (attributes, None when unset)."""
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def _hw(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if isinstance(size, (tuple, list)):
        h, w = size
        return int(h), int(w)
    if _get(size, "height"):
        return int(_get(size, "height")), int(_get(size, "width"))
    return int(_get(size, "shortest_edge")), int(_get(size, "shortest_edge"))


def _resize(images, hw: tuple[int, int], mode: str):
    from torch.nn import functional as F

    if tuple(images.shape[-2:]) == tuple(hw):
        return images
    return F.interpolate(images, size=hw, mode=mode, antialias=True, align_corners=False)
