"""The shapes world's exact checker behind the scorer interfaces real models use.

- ShapesVQA: a TIFA-style VQA score. Yes/no questions come from the prompt by template and the
  checker answers them exactly; the score is the fraction answered yes. One aspect column per
  attribute (1 pass, 0 fail, NaN where the prompt has no such attribute) feeds exact evaluation.
- ShapesDetector: an object detector for class-conditional prompts (self-reward): the score is
  the shape-template IoU of the best detection of the prompt's object class, 0 when none.

Neither loads a model. A prompt outside the shapes grammar gets NaN (counted as unscored).
"""

from __future__ import annotations

import numpy as np

from raypref.scoring import Scorer


def _spec(prompt: str):
    from raypref.shapes import parse_prompt

    try:
        return parse_prompt(prompt)
    except ValueError:
        return None


class ShapesVQA(Scorer):
    def __init__(self, name: str = "vqa"):
        from raypref.shapes import ATTRIBUTES

        super().__init__(name)
        self.outputs = (*ATTRIBUTES, "overall")

    def score(self, images, prompts):
        from raypref.shapes import ATTRIBUTES, check

        out = {"": np.full(len(images), np.nan, np.float32)}
        out.update({a: np.full(len(images), np.nan, np.float32) for a in ATTRIBUTES})
        out["overall"] = np.full(len(images), np.nan, np.float32)
        for i, (image, prompt) in enumerate(zip(images, prompts)):
            spec = _spec(prompt)
            if spec is None:
                continue
            r = check(image, spec)
            out[""][i] = r["vqa"]
            out["overall"][i] = float(r["overall"])
            for a in ATTRIBUTES:
                if r[a] is not None:
                    out[a][i] = float(r[a])
        return out


class ShapesDetector(Scorer):
    def __init__(self, name: str = "detector"):
        super().__init__(name)

    def score(self, images, prompts):
        from raypref.shapes import detect

        values = np.full(len(images), np.nan, np.float32)
        for i, (image, prompt) in enumerate(zip(images, prompts)):
            spec = _spec(prompt)
            if spec is None:
                continue
            target = spec.objects[0]
            hits = [d.iou for d in detect(image) if d.colour == target.colour and d.shape == target.shape]
            values[i] = max(hits, default=0.0)
        return values
