"""Train: reward feedback learning (ReFL) from a scorer's gradient (a trained reward model, ImageReward, CLIP score...), in Ray Train.  `ray job submit -- python -m jobs.train_refl --config C key=value ...`"""

from raypref import stages
from raypref.config import Config


def main(config: Config) -> dict:
    return stages.train_refl(config)


if __name__ == "__main__":
    from jobs._args import run_job

    run_job(main, __doc__)
