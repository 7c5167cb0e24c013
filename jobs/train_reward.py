"""Train: a reward model (overall + per-aspect heads, Bradley-Terry) in Ray Train.  `ray job submit -- python -m jobs.train_reward --config C key=value ...`"""

from raypref import stages
from raypref.config import Config


def main(config: Config) -> dict:
    return stages.train_reward(config)


if __name__ == "__main__":
    from jobs._args import run_job

    run_job(main, __doc__)
