"""Checking: names, types, symbolic shapes (checker.py) and the bias analysis (bias.py)."""

from vrlang.check.checker import check
from vrlang.check.program import CheckedProgram

__all__ = ["check", "CheckedProgram"]
