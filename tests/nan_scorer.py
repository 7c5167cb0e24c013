"""A scorer for the relabel tests: NaN for an image narrower than ``min_width`` pixels, as a judge
that cannot score an image gives, else the JPEG compressibility score."""

import numpy as np

from actors.compressibility import JpegCompressibility


class NanForSmall(JpegCompressibility):
    def __init__(self, name: str, min_width: int = 20):
        super().__init__(name)
        self.min_width = min_width

    def score(self, images, prompts):
        s = super().score(images, prompts)
        return np.where([im.width < self.min_width for im in images], np.float32("nan"), s).astype(np.float32)
