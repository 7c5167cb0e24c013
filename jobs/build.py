"""Build: generate, score, pair.  `ray job submit -- python -m jobs.build --config C key=value ...`"""

from raypref import stages
from raypref.config import Config


def main(config: Config) -> dict:
    return stages.build(config)


if __name__ == "__main__":
    from jobs._args import run_job

    run_job(main, __doc__)
