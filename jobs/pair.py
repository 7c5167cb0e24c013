"""Pair: re-pair stored groups from their scores, no model runs.  `ray job submit -- python -m jobs.pair --config C key=value ...`"""

from raypref import stages
from raypref.config import Config


def main(config: Config) -> dict:
    return stages.pair(config)


if __name__ == "__main__":
    from jobs._args import run_job

    run_job(main, __doc__)
