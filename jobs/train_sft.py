"""Train: supervised fine-tuning with a LoRA on the build's top images (self-reward) in Ray Train.  `ray job submit -- python -m jobs.train_sft --config C key=value ...`"""

from raypref import stages
from raypref.config import Config


def main(config: Config) -> dict:
    return stages.train_sft(config)


if __name__ == "__main__":
    from jobs._args import parse_config

    main(parse_config(__doc__))
