"""Value types with symbolic shapes.

A dimension is an ``int`` or a shape symbol (``str``) such as ``n``; symbols are bound
to sizes when data arrive.  Broadcasting follows NumPy, symbolically: two dimensions
agree when they are equal, or when one of them is the literal 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

Dim = Union[int, str]

_RANK = {"bool": 0, "int": 1, "real": 2}


@dataclass(frozen=True)
class VType:
    base: str  # "real" | "int" | "bool"
    shape: tuple[Dim, ...] = ()

    @property
    def rank(self) -> int:
        return len(self.shape)

    def with_shape(self, shape) -> "VType":
        return VType(self.base, tuple(shape))

    def with_base(self, base: str) -> "VType":
        return VType(base, self.shape)

    def __str__(self) -> str:
        return self.base + (f"[{', '.join(map(str, self.shape))}]" if self.shape else "")


REAL = VType("real")
INT = VType("int")
BOOL = VType("bool")


def join_base(*bases: str) -> str:
    """The numeric type of an arithmetic result (bool < int < real)."""
    return max(bases, key=lambda b: _RANK[b])


def shape_str(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]" if shape else "scalar"


def broadcast(*shapes: tuple[Dim, ...]) -> tuple[Dim, ...] | None:
    """The NumPy broadcast of symbolic shapes, or ``None`` when they do not agree."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for axis in range(rank):
        dims = {s[len(s) - rank + axis] for s in shapes if len(s) - rank + axis >= 0}
        dims.discard(1)
        if len(dims) > 1:
            return None
        out.append(dims.pop() if dims else 1)
    return tuple(out)
