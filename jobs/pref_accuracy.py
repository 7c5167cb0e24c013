"""Accuracy: preference-prediction accuracy of scorers on a pairs dataset, one table.  `ray job submit -- python -m jobs.pref_accuracy --config C key=value ...`"""

from raypref import stages
from raypref.config import Config


def main(config: Config) -> dict:
    return stages.accuracy(config)


if __name__ == "__main__":
    from jobs._args import run_job

    run_job(main, __doc__)
