"""Shared argument parsing for the job entry points."""

from __future__ import annotations

import argparse

from raypref.config import Config, load_config


def parse_config(description: str, argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", "-c", default=None, help="YAML config (default: the embedded demo config)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")
    a = p.parse_args(argv)
    return load_config(a.config, a.overrides)
