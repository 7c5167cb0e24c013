"""Endless rendered training data for pretraining in the shapes world.

Templates are drawn uniformly, then a prompt within the template: the relation template has far
more prompts than the others, and drawing prompts uniformly would make it nearly all the data.
"""

from __future__ import annotations

import numpy as np

from raypref.shapes.render import render
from raypref.shapes.world import TEMPLATES, parse_prompt, prompts


def prompts_by_template(split: str) -> dict[str, list[str]]:
    """Prompts of a split, or of a union of splits ('train+align'), by template."""
    out = {t: prompts(split, templates=[t]) for t in TEMPLATES}
    return {t: p for t, p in out.items() if p}


def sample_batch(by_template: dict[str, list[str]], n: int, rng: np.random.Generator, size: int = 32,
                 distinct: bool = False):
    """n (image, prompt) pairs: PIL images rendered from freshly drawn specs and seeds.

    ``distinct`` avoids repeating a prompt within the batch while the template still has unused
    ones: contrastive training treats every other text in the batch as a negative.
    """
    names = sorted(by_template)
    images, texts, used = [], [], set()
    for _ in range(n):
        pool = by_template[names[rng.integers(len(names))]]
        fresh = [p for p in pool if p not in used] if distinct else pool
        pool = fresh or pool
        text = pool[rng.integers(len(pool))]
        used.add(text)
        image, _ = render(parse_prompt(text), seed=int(rng.integers(2**31 - 1)), size=size)
        images.append(image)
        texts.append(text)
    return images, texts
