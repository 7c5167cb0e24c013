"""Relabel: score imported preference pairs with the config's scorers.  `ray job submit -- python -m jobs.relabel --config C relabel.input=D relabel.format=pickapic ...`"""

from raypref.config import Config
from raypref.relabel import relabel


def main(config: Config) -> dict:
    return relabel(config)


if __name__ == "__main__":
    from jobs._args import run_job

    run_job(main, __doc__)
