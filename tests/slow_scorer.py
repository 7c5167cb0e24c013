"""A deliberately slow scorer for the kill-and-resume test: it logs each prompt it scores, so the
test can tell which prompts the rerun really ran. It waits as many seconds as the file ``delay``
says, read at each call: the test changes the wait between runs without changing a setting."""

import time
from pathlib import Path

from actors.compressibility import JpegCompressibility


class SlowJpeg(JpegCompressibility):
    untracked_args = ("log", "delay")  # what the test watches and how long it waits, not what decides a score

    def __init__(self, name: str, log: str, delay: str):
        super().__init__(name)
        self.log, self.delay = Path(log), Path(delay)

    def score(self, images, prompts):
        time.sleep(float(self.delay.read_text()))
        with self.log.open("a") as f:
            f.writelines(p + "\n" for p in sorted(set(prompts)))
        return super().score(images, prompts)
