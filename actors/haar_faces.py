"""Face counter with OpenCV's Viola-Jones Haar cascade (no learned weights to download).

Main score = the number of faces ``cv2.CascadeClassifier.detectMultiScale`` finds in the
greyscale image (as a float); aspect 'present' = 1 if at least one face, else 0. Use it as a
constraint or filter (e.g. a negative weight to keep faces out, or 'present' to keep portraits).

The real weights ship inside opencv-python-headless 4.x: by default
``cv2.data.haarcascades + 'haarcascade_frontalface_default.xml'``; ``model`` may name another
cascade XML file by path (e.g. haarcascade_frontalface_alt2.xml from the same folder). Faces
smaller than ``min_size`` pixels are not looked for; ``scale_factor`` and ``min_neighbors`` are
detectMultiScale's own knobs (higher min_neighbors: fewer, surer detections).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field, NonNegativeInt, PositiveInt

from raypref.registry import checked_args
from raypref.scoring import Scorer

DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"


def default_cascade_path() -> str:
    import cv2

    return cv2.data.haarcascades + DEFAULT_CASCADE


class HaarFaces(Scorer):
    outputs = ("present",)

    @checked_args("scorer")
    def __init__(self, name: str = "faces", model: str = "", pretrained: str | None = None, num_gpus: float = 0.0,
                 scale_factor: Annotated[float, Field(gt=1)] = 1.1, min_neighbors: NonNegativeInt = 5,
                 min_size: PositiveInt = 24):
        import cv2

        from raypref.models import check_model_ref

        super().__init__(name)
        path = check_model_ref(model, what=f"scorer {name!r} model") if model else default_cascade_path()
        if not Path(path).is_file():  # a bare name passes check_model_ref as a hub name; OpenCV would call it malformed
            raise ValueError(f"scorer {name!r} model: the Haar cascade file {path!r} does not exist (give the path of "
                             f"a cascade XML file; OpenCV's own are in {cv2.data.haarcascades})")
        try:
            self.cascade = cv2.CascadeClassifier(path)
        except (cv2.error, SystemError):  # malformed XML raises inside OpenCV's parser; empty() covers the rest
            self.cascade = None
        if self.cascade is None or self.cascade.empty():
            raise ValueError(f"scorer {name!r}: cannot load a Haar cascade from {path!r}: not an OpenCV cascade XML file")
        self.kwargs = {"scaleFactor": scale_factor, "minNeighbors": min_neighbors, "minSize": (min_size, min_size)}

    def count(self, image) -> int:
        grey = np.ascontiguousarray(np.asarray(image.convert("L"), dtype=np.uint8))
        return len(self.cascade.detectMultiScale(grey, **self.kwargs))

    def score(self, images, prompts):
        faces = np.array([self.count(im) for im in images], np.float32)
        return {"": faces, "present": (faces > 0).astype(np.float32)}
