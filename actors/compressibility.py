"""JPEG compressibility / incompressibility (DDPO, Black et al. 2023): the JPEG size is the reward."""

from __future__ import annotations

import io
from typing import Annotated

import numpy as np
from pydantic import Field

from raypref.registry import checked_args
from raypref.scoring import Scorer


class JpegCompressibility(Scorer):
    """score = -(JPEG size in kB) at the given quality; with ``incompressible`` the sign flips."""

    # quality: PIL clamps any other int without a word (the score would not be at the quality recorded), and fails on
    # a string only at save time, in every batch
    @checked_args("scorer")
    def __init__(self, name: str = "jpeg_compressibility", quality: Annotated[int, Field(ge=1, le=100)] = 95, incompressible: bool = False):
        super().__init__(name)
        self.quality = quality
        self.sign = 1.0 if incompressible else -1.0

    def score(self, images, prompts):
        sizes = []
        for im in images:
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=self.quality)
            sizes.append(buf.tell() / 1000.0)
        return self.sign * np.asarray(sizes, dtype=np.float32)
