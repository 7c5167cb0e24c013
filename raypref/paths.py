"""Paths in configs: 'raypref:<rel>' names a file shipped inside the package."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).parent


def resolve_path(p: str) -> str:
    if p.startswith("raypref:"):
        return str(PACKAGE_DIR / p[len("raypref:"):])
    return p
