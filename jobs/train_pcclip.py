"""Train: PC-CLIP, an open_clip model fine-tuned on image-embedding differences and difference texts, in Ray Train.  `ray job submit -- python -m jobs.train_pcclip --config C key=value ...`"""

from raypref import stages
from raypref.config import Config


def main(config: Config) -> dict:
    return stages.train_pcclip(config)


if __name__ == "__main__":
    from jobs._args import run_job

    run_job(main, __doc__)
