"""A scorer that logs each time it is built (a line per actor, its pid), so a test can count how
often a stage loaded it, and, given ``calls``, each batch it scores (its pid again), so a test can
see which actor scored it; it scores as the JPEG compressibility scorer does."""

import os
from pathlib import Path

from actors.compressibility import JpegCompressibility


class CountedJpeg(JpegCompressibility):
    untracked_args = ("log", "calls")  # what the test watches, not what decides a score

    def __init__(self, name: str, log: str, calls: str = ""):
        super().__init__(name)
        self.calls = calls
        with Path(log).open("a") as f:
            f.write(f"{os.getpid()}\n")

    def score(self, images, prompts):
        if self.calls:
            with Path(self.calls).open("a") as f:
                f.write(f"{os.getpid()}\n")
        return super().score(images, prompts)
