"""Rank: keep the global top rank.top_p of a pairs dataset by a quality metric.  `ray job submit -- python -m jobs.rank_pairs --config C key=value ...`"""

from raypref.config import Config
from raypref.select import run_rank


def main(config: Config) -> dict:
    return run_rank(config)


if __name__ == "__main__":
    from jobs._args import run_job

    run_job(main, __doc__)
