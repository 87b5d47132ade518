"""Transforms: one estimator family per module.

A transform looks at one binder and, if it ``accepts`` the binder's spec, ``apply``
returns the :class:`EstimatorChoice` that annotates the binder in the transformed
program: the runtime pieces (a sampler) and what ``explain`` reports (bias, cost,
memory).  The list :data:`vrlang.transforms.TRANSFORMS` reads like the list of
supported estimators.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vrlang.check.program import BinderInfo
from vrlang.estimators.spec import Spec


@dataclass
class EstimatorChoice:
    binder: str
    kind: str
    spec: Spec
    unbiased: bool
    cost: str  # per step, in component gradients
    memory: str
    note: str = ""
    sampler: Any = None  # for finite sums: the index sampler, or None when exact
    family: str = "full"  # which program-level gradient estimator it asks for
    options: dict = field(default_factory=dict)
    plan: Any = None  # for expectations: the surrogate builder (vrlang.estimators.expectation)


class Transform:
    kind: str = ""
    names: tuple[str, ...] = ()

    def accepts(self, binder: BinderInfo, spec: Spec) -> bool:
        return binder.kind == self.kind and spec.name in self.names

    def apply(self, binder: BinderInfo, spec: Spec, sizes: dict) -> EstimatorChoice:  # pragma: no cover
        raise NotImplementedError
