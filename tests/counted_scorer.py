"""A scorer that logs each time it is built (a line per actor, its pid), so a test can count how
often a stage loaded it; it scores as the JPEG compressibility scorer does."""

import os
from pathlib import Path

from actors.compressibility import JpegCompressibility


class CountedJpeg(JpegCompressibility):
    untracked_args = ("log",)  # what the test watches, not what decides a score

    def __init__(self, name: str, log: str):
        super().__init__(name)
        with Path(log).open("a") as f:
            f.write(f"{os.getpid()}\n")
