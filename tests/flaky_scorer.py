"""A scorer for the resume tests: it logs each prompt it scores, so a test can tell which pairs a
rerun really scored, and while a flag file exists it fails once the log holds ``fail_after_lines``
lines, as a crash mid-run would. The state is in files, not in the actor, so an actor that Ray
restarts fails the same way. It fails only once a file has been written to ``after``, so the crash
lands between two written shards whatever order they come in."""

import time
from pathlib import Path

from actors.compressibility import JpegCompressibility


class FlakyJpeg(JpegCompressibility):
    untracked_args = ("log", "flag", "after")  # what the test watches, not what decides a score

    def __init__(self, name: str, log: str, flag: str = "", fail_after_lines: int = 1, after: str = ""):
        super().__init__(name)
        self.log, self.flag, self.fail_after = Path(log), Path(flag) if flag else None, fail_after_lines
        self.after = Path(after) if after else None

    def score(self, images, prompts):
        logged = len(self.log.read_text().splitlines()) if self.log.exists() else 0
        if self.flag is not None and self.flag.exists() and logged >= self.fail_after:
            deadline = time.time() + 60
            while self.after is not None and not any(self.after.glob("*.parquet")) and time.time() < deadline:
                time.sleep(0.1)
            raise RuntimeError(f"flaky scorer: failing after {logged} logged prompts, as asked")
        with self.log.open("a") as f:
            f.writelines(p + "\n" for p in prompts)
        return super().score(images, prompts)
