"""Locate the files shipped with the package: the grammar and the standard library.

In an installed wheel they live inside the package (``vrlang/grammar``,
``vrlang/stdlib``, put there by the wheel's force-include); in a source checkout or an
editable install they are the top-level ``grammar/`` and ``stdlib/`` folders.
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    for candidate in (_PKG / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"vrlang installation is missing its {name}/ folder")


def grammar_path() -> Path:
    return resource_dir("grammar") / "vrlang.lark"


def stdlib_dir() -> Path:
    return resource_dir("stdlib")
