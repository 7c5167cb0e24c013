"""Pretrain the shapes world's clip model in Ray Train.  `ray job submit -- python -m jobs.pretrain_clip --config C key=value ...`"""

from raypref import stages
from raypref.config import Config


def main(config: Config) -> dict:
    return stages.pretrain(config, "clip")


if __name__ == "__main__":
    from jobs._args import parse_config

    main(parse_config(__doc__))
