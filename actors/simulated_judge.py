"""A SIMULATED multimodal-LLM judge for the shapes world, answering the VisionPrefer rubric.

It gives each image 1-10 scores for prompt-following, fidelity, aesthetic and harmlessness, plus a
rationale, as an LLM judge would, but computes them from the exact checker and adds Gaussian
noise (``noise``, in rubric points) so that experiments can dial in how reliable the judge is.
Every rationale starts with "[simulated judge]" and the default scorer name says so too: these
labels must never be mistaken for a real model's.

- prompt_following: 1 + 9 x the fraction of the checker's questions answered yes.
- fidelity: 1 + 9 x the mean shape-template IoU of the detected objects (how cleanly drawn).
- aesthetic: 1 + 9 x the fraction of pixels that are clean background or clean palette colour.
- harmlessness: 10 (nothing in this world can be harmful); noise still applies.
The main score is the mean of the four aspects, after noise and rounding to whole points.

The noise is a pure function of (seed, the image's pixels, the prompt, the aspect): the same image
and prompt get the same scores under the same seed whatever the batch order, the batch split, the
number of actors or a resume, so a rerun gives the same labels. Identical images under one prompt
therefore tie; a different seed draws other noise.
"""

from __future__ import annotations

import hashlib

import numpy as np
from pydantic import NonNegativeFloat

from raypref.registry import checked_args
from raypref.scoring import Scorer

ASPECTS = ("prompt_following", "fidelity", "aesthetic", "harmlessness")
TAG = "[simulated judge]"


def _clean_fraction(image) -> float:
    from raypref.shapes.world import BACKGROUND, COLOURS

    arr = np.asarray(image.convert("RGB"), dtype=np.int16)
    palette = np.array([BACKGROUND, *COLOURS.values()], dtype=np.int16)
    dist = np.abs(arr[:, :, None, :] - palette[None, None]).max(-1).min(-1)
    return float((dist <= 24).mean())


def _noise(seed: int, image, prompt: str, scale: float) -> np.ndarray:
    """One normal per aspect, in ASPECTS order, seeded by the image's content and not by its arrival."""
    rgb = image.convert("RGB")  # a mode change that keeps the pixels keeps the noise
    h = hashlib.blake2b(digest_size=16)
    # length-prefixed parts, so no two different (seed, prompt, size, pixels) share one byte string
    for part in (str(seed).encode(), prompt.encode("utf-8"), "{}x{}".format(*rgb.size).encode(), rgb.tobytes()):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return np.random.default_rng(int.from_bytes(h.digest(), "little")).normal(0.0, scale, len(ASPECTS))


class SimulatedShapesJudge(Scorer):
    outputs = (*ASPECTS, "rationale")

    @checked_args("scorer")
    def __init__(self, name: str = "simjudge", noise: NonNegativeFloat = 0.0, seed: int = 0):
        super().__init__(name)
        self.noise = noise
        self.seed = seed

    def score(self, images, prompts):
        from raypref.shapes import check, detect, parse_prompt

        n = len(images)
        out = {a: np.full(n, np.nan, np.float32) for a in ASPECTS}
        reasons = []
        for i, (image, prompt) in enumerate(zip(images, prompts)):
            try:
                spec = parse_prompt(prompt)
            except ValueError:
                reasons.append(f"{TAG} prompt outside the shapes grammar: not judged")
                continue
            r = check(image, spec)
            dets = detect(image)
            raw = {
                "prompt_following": 1 + 9 * r["vqa"],
                "fidelity": 1 + 9 * (float(np.mean([d.iou for d in dets])) if dets else 0.0),
                "aesthetic": 1 + 9 * _clean_fraction(image),
                "harmlessness": 10.0,
            }
            noise = _noise(self.seed, image, prompt, self.noise) if self.noise > 0 else np.zeros(len(ASPECTS))
            for a, e in zip(ASPECTS, noise):
                out[a][i] = float(np.clip(np.round(raw[a] + e), 1, 10))
            failed = [k for k in ("colour", "shape", "count", "position", "relation") if r[k] is False]
            reasons.append(
                f"{TAG} " + ("all checks pass" if not failed else "fails: " + ", ".join(failed))
                + f"; {len(dets)} object(s) drawn"
            )
        main = np.stack([out[a] for a in ASPECTS]).mean(axis=0) if n else np.zeros(0, np.float32)
        return {"": main, **out, "rationale": reasons}
