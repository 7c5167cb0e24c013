"""Face counter with OpenCV's Viola-Jones Haar cascade (no learned weights to download).

Main score = the number of faces ``cv2.CascadeClassifier.detectMultiScale`` finds in the
greyscale image (as a float); aspect 'present' = 1 if at least one face, else 0. Use it as a
constraint or filter (e.g. a negative weight to keep faces out, or 'present' to keep portraits).

The real weights ship inside opencv-python-headless 4.x: by default
``cv2.data.haarcascades + 'haarcascade_frontalface_default.xml'``; ``model`` may name another
cascade XML file by path (e.g. haarcascade_frontalface_alt2.xml from the same folder). Faces
smaller than ``min_size`` pixels are not looked for; ``scale_factor`` and ``min_neighbors`` are
detectMultiScale's own knobs (higher min_neighbors: fewer, surer detections). ``model`` is checked on
the driver, before Ray starts (check_model), and again by the actor built directly.
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


def cascade_file(what: str, model: str) -> str:
    """The cascade file ``model`` names, absolute ('' stays '': OpenCV's default); a ValueError starting with
    ``what`` where it is no file. A cascade is no model reference: a bare name is not looked up on a hub."""
    if not model:
        return ""
    path = Path(model).expanduser()
    if path.is_file():
        return str(path.resolve())
    import cv2

    problem = "is a directory, not a cascade XML file" if path.is_dir() else "does not exist"
    raise ValueError(f"{what}: the Haar cascade file {model!r} {problem} (give the path of a cascade XML file; "
                     f"OpenCV's own are in {cv2.data.haarcascades})")


class HaarFaces(Scorer):
    outputs = ("present",)

    @classmethod
    def check_model(cls, where: str, model: str) -> str:
        """On the driver (build.scorer_kwargs), in place of the model-reference check: the cascade file exists
        here, before Ray starts, rather than in every actor; returns its path made absolute."""
        return cascade_file(f"{where} model", model)

    @checked_args("scorer")
    def __init__(self, name: str = "faces", model: str = "", pretrained: str | None = None, num_gpus: float = 0.0,
                 scale_factor: Annotated[float, Field(gt=1)] = 1.1, min_neighbors: NonNegativeInt = 5,
                 min_size: PositiveInt = 24):
        import cv2

        super().__init__(name)
        # built directly, no driver has checked it; OpenCV would call a missing file malformed
        path = cascade_file(f"scorer {name!r} model", model) or default_cascade_path()
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
