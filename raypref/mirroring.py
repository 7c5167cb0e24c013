"""Left-right mirroring as a training augmentation (``hflip``): an image is mirrored and the words
of its prompt that name a side are swapped, so the prompt still describes it. Pure: no Ray."""

from __future__ import annotations

import re

import numpy as np


def swap_words(prompt: str, swap: dict[str, str]) -> str:
    """The prompt with each whole word in ``swap`` replaced by its partner ("left" <-> "right"), whatever
    punctuation is beside it, in any case (a capitalised or upper-case word stays so)."""
    if not swap:
        return prompt
    lower = {k.lower(): v for k, v in swap.items()}

    def partner(m: re.Match) -> str:
        word, new = m.group(0), lower[m.group(0).lower()]
        if word.isupper() and len(word) > 1:
            return new.upper()
        return new[:1].upper() + new[1:] if word[:1].isupper() else new

    pattern = r"\b(?:" + "|".join(re.escape(k) for k in sorted(lower, key=len, reverse=True)) + r")\b"
    return re.sub(pattern, partner, prompt, flags=re.IGNORECASE)


def draw_flips(n: int, p: float, gen) -> np.ndarray | None:
    """Which of ``n`` rows to mirror, each with probability ``p``, from ``gen`` (a torch.Generator); None
    when ``p`` is 0, drawing nothing, so a run without mirroring keeps its random streams as they were."""
    import torch

    if p <= 0:
        return None
    return (torch.rand(n, generator=gen) < p).numpy()


def mirror_prompts(prompts, flip: np.ndarray | None, swap: dict[str, str]) -> list[str]:
    """The prompts, those of mirrored rows with their ``swap`` words swapped."""
    prompts = list(prompts)
    if flip is None:
        return prompts
    return [swap_words(p, swap) if f else p for p, f in zip(prompts, flip)]


def mirror_images(images: list, flip: np.ndarray | None) -> list:
    """The PIL images, those of mirrored rows flipped left-right."""
    from PIL import ImageOps

    if flip is None:
        return list(images)
    return [ImageOps.mirror(im) if f else im for im, f in zip(images, flip)]
