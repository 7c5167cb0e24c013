"""Pretrain the shapes world's clip model in Ray Train.  `ray job submit -- python -m jobs.pretrain_clip --config C key=value ...`"""

from raypref import stages
from raypref.config import Config


def main(config: Config) -> dict:
    return stages.pretrain(config, "clip")


if __name__ == "__main__":
    from jobs._args import run_job

    run_job(main, __doc__)
