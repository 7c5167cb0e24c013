"""A scorer for the resume tests: it logs each prompt it scores, so a test can tell which pairs a
rerun really scored, and while a flag file exists it fails on its call after ``calls_before_failing``,
as a crash mid-run would. It fails only once a file has been written to ``after``, so the crash
lands between two written shards whatever order they come in."""

import time
from pathlib import Path

from actors.compressibility import JpegCompressibility


class FlakyJpeg(JpegCompressibility):
    def __init__(self, name: str, log: str, flag: str = "", calls_before_failing: int = 1, after: str = ""):
        super().__init__(name)
        self.log, self.flag, self.ok_calls = Path(log), Path(flag) if flag else None, calls_before_failing
        self.after = Path(after) if after else None
        self.calls = 0

    def score(self, images, prompts):
        self.calls += 1
        if self.flag is not None and self.flag.exists() and self.calls > self.ok_calls:
            deadline = time.time() + 60
            while self.after is not None and not any(self.after.glob("*.parquet")) and time.time() < deadline:
                time.sleep(0.1)
            raise RuntimeError(f"flaky scorer: failing on call {self.calls} as asked")
        with self.log.open("a") as f:
            f.writelines(p + "\n" for p in prompts)
        return super().score(images, prompts)
