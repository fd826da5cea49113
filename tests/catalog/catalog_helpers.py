"""Helpers shared by the catalog tests (a plain module: test files import it by name)."""

from __future__ import annotations

from pathlib import Path


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    """Create ``files`` (relative name -> content) under ``root``; returns ``root``."""
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root
