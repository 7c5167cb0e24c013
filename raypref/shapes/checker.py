"""The exact checker: detect coloured blobs, then judge an image against a spec attribute by attribute.

Every judgement comes from one list of TIFA-style yes/no questions (``questions``), so the
per-attribute verdicts of ``check`` and the answers of ``answer`` can never disagree: an
attribute passes iff all of its questions are answered yes.

Thresholds are stated for the world's native 32x32 images; on other sizes lengths scale with
the width and areas with the pixel count, so a generator working at 64x64 is judged alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from raypref.shapes.draw import shape_mask
from raypref.shapes.world import (
    COLOURS,
    COUNT_WORDS,
    POSITIONS,
    SHAPE_PLURALS,
    SHAPES,
    Spec,
    template_of,
)

REFERENCE_SIZE = 32  # the size the pixel thresholds below are stated for
MIN_COLOUR_COS = 0.9  # a pixel's RGB direction must be this close (cosine) to its palette colour's
MIN_COLOUR_STRENGTH = 0.5  # ...and keep this fraction of that colour's strength, else background
TEMPLATE_BLURS = (0.4, 0.7, 1.0)  # Gaussian radii of the blurred shape templates (see _bank)
BLUR_BANK_MAX = 48  # blobs wider or taller than this (px) are matched against crisp templates only
MIN_AREA = 6  # components smaller than this many pixels are noise, not objects
REGION_NEAR = 0.4  # left: cx < 0.4 W, top: cy < 0.4 H
REGION_FAR = 0.6  # right: cx > 0.6 W, bottom: cy > 0.6 H
CENTRE_HALF = 0.15  # centre: |cx - W/2| < 0.15 W and |cy - H/2| < 0.15 H
RELATION_MIN_PX = 3.0  # "A left of B" iff cx_A < cx_B - 3 px (likewise for the other relations)

ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "count", "position", "relation")

_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[c] for c in _NAMES], dtype=np.float32)
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Detected:
    colour: str
    shape: str
    bbox: tuple[int, int, int, int]  # inclusive x0, y0, x1, y1
    centroid: tuple[float, float]  # (cx, cy) in pixels
    area: int
    iou: float  # IoU with the winning shape template: how sure the shape call is


def in_region(position: str, cx: float, cy: float, w: int, h: int, margin: float = 0.0) -> bool:
    """Whether a centroid lies in ``position``; a positive margin (px) shrinks the region."""
    if position == "left":
        return cx < REGION_NEAR * w - margin
    if position == "right":
        return cx > REGION_FAR * w + margin
    if position == "top":
        return cy < REGION_NEAR * h - margin
    if position == "bottom":
        return cy > REGION_FAR * h + margin
    if position == "centre":
        return abs(cx - w / 2) < CENTRE_HALF * w - margin and abs(cy - h / 2) < CENTRE_HALF * h - margin
    raise ValueError(f"unknown position {position!r}; expected one of {list(POSITIONS)}")


def relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float], min_px: float) -> bool:
    """Whether centroid a stands in ``relation`` to centroid b by more than min_px."""
    (ax, ay), (bx, by) = a, b
    if relation == "left of":
        return ax < bx - min_px
    if relation == "right of":
        return ax > bx + min_px
    if relation == "above":
        return ay < by - min_px
    if relation == "below":
        return ay > by + min_px
    raise ValueError(f"unknown relation {relation!r}")


def _as_array(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got array of shape {arr.shape}")
    return arr


@lru_cache(maxsize=1024)
def _bank(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """(shape index per template, stacked (n, h, w) masks) for blobs with a w x h bounding box.

    The crisp templates come first, drawn right at the box; then the same drawing at boxes up to
    three px larger, blurred (TEMPLATE_BLURS), thresholded at half and cropped, keeping those whose
    extent is exactly w x h: a blurred or JPEG'd object loses thin tips and fills inner corners, and
    is judged against the shape it came from, not the crisp shape it now happens to resemble.
    Blobs wider than BLUR_BANK_MAX px get crisp templates only: a px of blur no longer matters.
    """
    kinds, masks = [], []
    for k, shape in enumerate(SHAPES):
        kinds.append(k)
        masks.append(shape_mask(shape, w, h))
    for sigma in TEMPLATE_BLURS if max(w, h) <= BLUR_BANK_MAX else ():
        for k, shape in enumerate(SHAPES):
            for bw in range(w, w + 4):
                for bh in range(h, h + 4):
                    img = Image.fromarray(np.pad(shape_mask(shape, bw, bh), 3).astype(np.uint8) * 255)
                    blurred = np.asarray(img.filter(ImageFilter.GaussianBlur(sigma))) >= 128
                    ys, xs = np.nonzero(blurred)
                    if len(ys) and ys.max() - ys.min() + 1 == h and xs.max() - xs.min() + 1 == w:
                        kinds.append(k)
                        masks.append(blurred[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])
    return np.array(kinds), np.stack(masks)


def _classify(blob: np.ndarray) -> tuple[str, float]:
    """Best shape by IoU against the template bank at the blob's own bounding box (crisp wins ties)."""
    kinds, masks = _bank(*blob.shape[::-1])
    inter = np.logical_and(masks, blob).sum(axis=(1, 2))
    union = np.logical_or(masks, blob).sum(axis=(1, 2))
    iou = inter / union
    best = int(iou.argmax())
    return SHAPES[kinds[best]], float(iou[best])


def detect(image) -> list[Detected]:
    """Objects in an image: per-colour 8-connected blobs, each with a shape call."""
    return _detect(_as_array(image))


def _pixel_classes(arr: np.ndarray) -> np.ndarray:
    """Per pixel: 0 for background, else 1 + index into the palette.

    Blur and compression mix an object with the world's black background, which scales its colour toward
    zero, so nearness is judged by direction (cosine) and the pixel must keep at least half of the
    palette colour's strength: the half-way edge a crisp drawing would have had.
    """
    dot = arr @ _PALETTE.T
    strength = dot / np.square(_PALETTE).sum(axis=1)
    cos = dot / (np.linalg.norm(arr, axis=-1, keepdims=True) * np.linalg.norm(_PALETTE, axis=1) + 1e-6)
    k = cos.argmax(axis=-1)
    keep = (np.take_along_axis(strength, k[..., None], -1)[..., 0] >= MIN_COLOUR_STRENGTH) & (
        cos.max(axis=-1) >= MIN_COLOUR_COS
    )
    return np.where(keep, k + 1, 0)


def _detect(arr: np.ndarray) -> list[Detected]:
    h, w = arr.shape[:2]
    nearest = _pixel_classes(arr)
    min_area = MIN_AREA * (h * w) / REFERENCE_SIZE**2
    out: list[Detected] = []
    for k, name in enumerate(_NAMES, start=1):
        labels, n = ndimage.label(nearest == k, structure=_EIGHT)
        if n == 0:
            continue
        for i, sl in enumerate(ndimage.find_objects(labels), start=1):
            blob = labels[sl] == i
            area = int(blob.sum())
            if area < min_area:
                continue
            ys, xs = np.nonzero(blob)
            y0, x0 = sl[0].start, sl[1].start
            shape, iou = _classify(blob)
            out.append(
                Detected(
                    colour=name,
                    shape=shape,
                    bbox=(x0, y0, sl[1].stop - 1, sl[0].stop - 1),
                    centroid=(float(x0 + xs.mean()), float(y0 + ys.mean())),
                    area=area,
                    iou=iou,
                )
            )
    return out


# ---- questions: the single source of every verdict -------------------------------------------

_Judge = Callable[[list[Detected], int, int], bool]


def _of(dets: list[Detected], colour: str) -> list[Detected]:
    return [d for d in dets if d.colour == colour]


def _main(dets: list[Detected], colour: str) -> Detected | None:
    """The largest blob of a colour stands for a single object; stray specks cannot move it."""
    mine = _of(dets, colour)
    return max(mine, key=lambda d: d.area) if mine else None


def _either(names: list[str]) -> str:
    return names[0] if len(names) == 1 else " or ".join(names)


def _items(spec: Spec) -> list[tuple[str, str, _Judge]]:
    """(attribute, question, judge) triples; judges see detections and the image size."""
    template = template_of(spec)
    objs = spec.objects
    colours = [o.colour for o in objs]
    items: list[tuple[str, str, _Judge]] = []

    for c in colours:
        items.append(("colour", f"Is there a {c} object?", lambda d, w, h, c=c: bool(_of(d, c))))
    items.append(
        ("colour", f"Is every object {_either(colours)}?", lambda d, w, h: all(x.colour in colours for x in d))
    )

    for o in objs:
        q = f"Is the {o.colour} object a {o.shape}?" if o.count == 1 else f"Are the {o.colour} objects {SHAPE_PLURALS[o.shape]}?"
        items.append(
            ("shape", q, lambda d, w, h, o=o: bool(_of(d, o.colour)) and all(x.shape == o.shape for x in _of(d, o.colour)))
        )

    for o in objs:
        if o.count == 1:
            q = f"Is there exactly one {o.colour} {o.shape}?"
        else:
            q = f"Are there exactly {COUNT_WORDS[o.count]} {o.colour} {SHAPE_PLURALS[o.shape]}?"
        items.append(("count", q, lambda d, w, h, o=o: len(_of(d, o.colour)) == o.count))
    total = sum(o.count for o in objs)
    q = "Is there exactly one object in total?" if total == 1 else f"Are there exactly {COUNT_WORDS[total]} objects in total?"
    items.append(("count", q, lambda d, w, h: len(d) == total))

    if template == "position":
        (o,) = objs

        def at(d, w, h, o=o):
            m = _main(d, o.colour)
            return m is not None and in_region(o.position, *m.centroid, w, h)

        items.append(("position", f"Is the {o.colour} {o.shape} {POSITIONS[o.position]}?", at))

    if template == "relation":
        a, b = objs

        def rel(d, w, h):
            ma, mb = _main(d, a.colour), _main(d, b.colour)
            px = RELATION_MIN_PX * w / REFERENCE_SIZE
            return ma is not None and mb is not None and relation_holds(spec.relation, ma.centroid, mb.centroid, px)

        items.append(("relation", f"Is the {a.colour} {a.shape} {spec.relation} the {b.colour} {b.shape}?", rel))
    return items


def questions(spec: Spec) -> list[tuple[str, str]]:
    """TIFA-style (attribute, yes/no question) pairs a VQA scorer can ask about an image."""
    return [(attr, q) for attr, q, _ in _items(spec)]


def _answers(dets: list[Detected], w: int, h: int, spec: Spec) -> list[tuple[str, bool]]:
    return [(attr, bool(judge(dets, w, h))) for attr, _, judge in _items(spec)]


def answer(image, spec: Spec) -> list[bool]:
    """Ground-truth yes/no answers to ``questions(spec)``, in the same order."""
    arr = _as_array(image)
    return [ok for _, ok in _answers(_detect(arr), arr.shape[1], arr.shape[0], spec)]


def check(image, spec: Spec) -> dict:
    """Per-attribute verdicts (None where the spec has no such attribute), overall, score (the
    fraction of attributes passing) and vqa (the fraction of questions answered yes, TIFA's score)."""
    arr = _as_array(image)
    verdicts: dict[str, bool | None] = {a: None for a in ATTRIBUTES}
    answers = _answers(_detect(arr), arr.shape[1], arr.shape[0], spec)
    for attr, ok in answers:
        verdicts[attr] = ok if verdicts[attr] is None else (verdicts[attr] and ok)
    applicable = [v for v in verdicts.values() if v is not None]
    return {
        **verdicts,
        "overall": all(applicable),
        "score": sum(applicable) / len(applicable),
        "vqa": sum(ok for _, ok in answers) / len(answers),
    }
