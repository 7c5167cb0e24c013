"""Demo: build, train, evaluate.  `ray job submit -- python -m jobs.demo --config C key=value ...`"""

from raypref import stages
from raypref.config import Config


def main(config: Config) -> dict:
    return stages.demo(config)


if __name__ == "__main__":
    from jobs._args import parse_config

    main(parse_config(__doc__))
