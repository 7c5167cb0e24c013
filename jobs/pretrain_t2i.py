"""Pretrain the shapes world's t2i model in Ray Train.  `ray job submit -- python -m jobs.pretrain_t2i --config C key=value ...`"""

from raypref import stages
from raypref.config import Config


def main(config: Config) -> dict:
    return stages.pretrain(config, "t2i")


if __name__ == "__main__":
    from jobs._args import run_job

    run_job(main, __doc__)
