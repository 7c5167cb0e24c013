"""Train: supervised fine-tuning of a LoRA or the whole UNet (train.finetune) on the build's top images (self-reward) in Ray Train.  `ray job submit -- python -m jobs.train_sft --config C key=value ...`"""

from raypref import stages
from raypref.config import Config


def main(config: Config) -> dict:
    return stages.train_sft(config)


if __name__ == "__main__":
    from jobs._args import run_job

    run_job(main, __doc__)
