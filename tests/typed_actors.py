"""Actors of one's own (`cls: tests.typed_actors:...`) whose __init__ annotations YAML can write only one way:
a tuple or a set as a list, a Path or an Enum as a string; and build settings (width, pool.num_gpus) narrowed."""

import enum
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from raypref.scoring import Scorer


class Mode(enum.Enum):
    MEAN = "mean"
    MAX = "max"


class TypedScorer(Scorer):
    def __init__(self, name: str = "typed", pretrained: str = "none", size: tuple[int, int] = (8, 8),
                 out: Path | None = None, tags: set[str] = frozenset(), mode: Mode = Mode.MEAN, noise: float = 0.0,
                 count: int = 1, flag: bool = False, words: str | list[str] = "", limit: int | Literal["auto"] = "auto",
                 weights: dict[str, float] | None = None, labels: frozenset[str] = frozenset()):
        super().__init__(name)
        self.size = size

    def score(self, images, prompts):
        return np.zeros(len(images), np.float32)


class TypedGenerator:
    loads_model = False

    def __init__(self, name: str = "typed", width: Annotated[int, Field(multiple_of=8)] | None = None,
                 num_gpus: Annotated[float, Field(le=0)] = 0.0):  # a CPU-only generator
        self.name, self.width = name, width
