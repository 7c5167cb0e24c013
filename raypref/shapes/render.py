"""Draw a spec as a small, crisp image whose ground truth the checker must always accept.

Layouts are sampled with rejection and kept only with margins inside the checker's thresholds
(positions, relation separation, gaps between objects), so a ground-truth render never sits on a
decision boundary. ``render_perturbed`` draws near misses that break the spec in exactly one
named way: they are the hard negatives preference data needs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from raypref.shapes.checker import REFERENCE_SIZE, in_region, relation_holds
from raypref.shapes.draw import draw_shape, shape_mask
from raypref.shapes.world import BACKGROUND, COLOURS, SHAPES, Spec, template_of

SINGLE_SIZES = (8, 12)  # px range (inclusive) of a lone object at 32x32
MULTI_SIZES = (7, 9)  # px range when an object appears two or more times
BORDER = 1  # empty px kept around the canvas edge
GAP = 2  # empty px kept between the bounding boxes of any two objects
POSITION_MARGIN = 2.5  # px a centroid stays inside its region beyond the checker's threshold
RELATION_SEP = 8.0  # px between the two centroids along a relation's axis
TRIES_PER_OBJECT = 400
RESTARTS = 50

PERTURBATIONS: tuple[str, ...] = ("wrong_colour", "extra_object", "moved_object", "wrong_shape", "wrong_count")
_OPPOSITE = {
    "left": "right",
    "right": "left",
    "top": "bottom",
    "bottom": "top",
    "centre": "not_centre",
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}


@dataclass(frozen=True)
class Placed:
    colour: str
    shape: str
    bbox: tuple[int, int, int, int]  # inclusive x0, y0, x1, y1
    centroid: tuple[float, float]  # (cx, cy) of the drawn pixels


@dataclass(frozen=True)
class _Item:
    colour: str
    shape: str
    many: bool  # drawn at MULTI_SIZES: its object appears more than once
    region: str | None = None  # a position, or "not_centre"


def _plan(spec: Spec) -> tuple[list[_Item], str | None]:
    """One item per drawn object; a relation always binds item 0 (A) to item 1 (B)."""
    items = []
    for o in spec.objects:
        items += [_Item(o.colour, o.shape, o.count > 1, o.position) for _ in range(o.count)]
    return items, spec.relation


def _region_ok(region: str, cx: float, cy: float, size: int, margin: float) -> bool:
    if region == "not_centre":
        return not in_region("centre", cx, cy, size, size, margin=-margin)
    return in_region(region, cx, cy, size, size, margin=margin)


def _separated(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return a[2] + gap < b[0] or b[2] + gap < a[0] or a[3] + gap < b[1] or b[3] + gap < a[1]


@lru_cache(maxsize=1024)
def _centroid_offset(shape: str, s: int) -> tuple[float, float]:
    ys, xs = np.nonzero(shape_mask(shape, s, s))
    return float(xs.mean()), float(ys.mean())


def _layout(items: list[_Item], relation: str | None, size: int, rng: np.random.Generator) -> list[Placed]:
    scale = size / REFERENCE_SIZE
    margin, sep = POSITION_MARGIN * scale, RELATION_SEP * scale
    gap, border = max(1, round(GAP * scale)), max(1, round(BORDER * scale))
    for _ in range(RESTARTS):
        placed: list[Placed] = []
        for k, it in enumerate(items):
            lo, hi = (round(v * scale) for v in (MULTI_SIZES if it.many else SINGLE_SIZES))
            for _ in range(TRIES_PER_OBJECT):
                s = int(rng.integers(lo, hi + 1))
                if s + 2 * border > size:
                    raise ValueError(f"canvas {size}px is too small for a {s}px object")
                x0 = int(rng.integers(border, size - border - s + 1))
                y0 = int(rng.integers(border, size - border - s + 1))
                box = (x0, y0, x0 + s - 1, y0 + s - 1)
                ox, oy = _centroid_offset(it.shape, s)
                c = (x0 + ox, y0 + oy)
                if not all(_separated(box, p.bbox, gap) for p in placed):
                    continue
                if it.region is not None and not _region_ok(it.region, *c, size, margin):
                    continue
                if relation is not None and k == 1 and not relation_holds(relation, placed[0].centroid, c, sep):
                    continue
                placed.append(Placed(it.colour, it.shape, box, c))
                break
            else:
                break  # this object found no room: start the whole layout again
        if len(placed) == len(items):
            return placed
    raise RuntimeError(f"no layout found for {len(items)} objects on a {size}px canvas after {RESTARTS} restarts")


def _draw(placed: list[Placed], size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for p in placed:
        draw_shape(draw, p.shape, p.bbox, COLOURS[p.colour])
    return img


def render(spec: Spec, seed: int, size: int = 32) -> tuple[Image.Image, list[Placed]]:
    """The image of a spec and its ground truth; the same seed always gives the same image."""
    items, relation = _plan(spec)
    placed = _layout(items, relation, size, np.random.default_rng(seed))
    return _draw(placed, size), placed


def _perturb(spec: Spec, kind: str, rng: np.random.Generator) -> tuple[list[_Item], str | None]:
    items, relation = _plan(spec)
    template = template_of(spec)
    objs = spec.objects
    k = int(rng.integers(len(objs)))  # which spec object to break
    target = objs[k]
    if kind == "wrong_colour":
        unused = [c for c in COLOURS if c not in {o.colour for o in objs}]
        new = unused[int(rng.integers(len(unused)))]
        return [replace(it, colour=new) if it.colour == target.colour else it for it in items], relation
    if kind == "wrong_shape":
        mine = [i for i, it in enumerate(items) if it.colour == target.colour]
        i = mine[int(rng.integers(len(mine)))]
        others = [s for s in SHAPES if s != target.shape]
        items[i] = replace(items[i], shape=others[int(rng.integers(len(others)))])
        return items, relation
    if kind == "wrong_count":
        n = target.count
        choices = [m for m in (n - 1, n + 1) if 1 <= m <= 4]
        m = choices[int(rng.integers(len(choices)))]
        # Copies are added or dropped at the end, so items 0 and 1 still carry any relation.
        items = [replace(it, many=m > 1) if it.colour == target.colour else it for it in items]
        if m > n:
            first = next(it for it in items if it.colour == target.colour)
            return items + [replace(first, region=None)] * (m - n), relation
        last = max(i for i, it in enumerate(items) if it.colour == target.colour)
        return items[:last] + items[last + 1 :], relation
    if kind == "extra_object":
        colours = list(COLOURS)
        extra = _Item(colours[int(rng.integers(len(colours)))], SHAPES[int(rng.integers(len(SHAPES)))], items[0].many)
        return items + [extra], relation
    if kind == "moved_object":
        if template == "position":
            return [replace(items[0], region=_OPPOSITE[items[0].region])], relation
        if template == "relation":
            return items, _OPPOSITE[relation]
        raise ValueError(f"moved_object needs a position or relation prompt, got {template} spec {spec!r}")
    raise ValueError(f"unknown perturbation {kind!r}; expected one of {list(PERTURBATIONS)}")


def render_perturbed(spec: Spec, seed: int, kind: str, size: int = 32) -> tuple[Image.Image, list[Placed]]:
    """An image that fails the spec in the way ``kind`` names (see PERTURBATIONS)."""
    rng = np.random.default_rng(seed)
    items, relation = _perturb(spec, kind, rng)
    placed = _layout(items, relation, size, rng)
    return _draw(placed, size), placed
