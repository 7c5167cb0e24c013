"""Sweep: run sweep.stages at every point of sweep.grid and collect sweep.metrics (ablations, scaling curves).  `ray job submit -- python -m jobs.sweep --config C key=value ...`"""

from raypref.config import Config
from raypref.stages import sweep


def main(config: Config) -> dict:
    from jobs._args import check_point_dirs

    check_point_dirs(config)  # a point's relative export_dir would land in the job's temporary working_dir
    return sweep(config)


if __name__ == "__main__":
    from jobs._args import run_job

    run_job(main, __doc__)
