"""IR transforms: choose and annotate the estimator of every binder.

``TRANSFORMS`` is the list of supported estimators; ``PLANNED`` those that the
language reserves and that later versions implement (refused with that reason).
"""

from __future__ import annotations

import difflib

from vrlang.check.program import BinderInfo
from vrlang.errors import VrEstimatorError
from vrlang.estimators.spec import Spec
from vrlang.transforms.base import EstimatorChoice, Transform
from vrlang.transforms.bilevel import BoRepDecision, ImplicitDecision, PenaltyDecision, UnrollDecision
from vrlang.transforms.control_variate import ControlVariate
from vrlang.transforms.expectation import Enum, Importance, Reparam, Score, default_spec
from vrlang.transforms.finite_sum import (FullSum, LSVRGSum, MinibatchSum, PAGESum, SAGASum, SARAHSum, SPIDERSum,
                                         STORMSum, SVRGSum)

TRANSFORMS: list[Transform] = [FullSum(), MinibatchSum(), SVRGSum(), LSVRGSum(), SAGASum(), SARAHSum(), SPIDERSum(),
                               PAGESum(), STORMSum(), Reparam(), Score(), Enum(), Importance(), ControlVariate(),
                               ImplicitDecision(), UnrollDecision(), PenaltyDecision(), BoRepDecision()]

KNOWN = {
    "index": ("full", "sgd", "svrg", "lsvrg", "saga", "sarah", "spider", "page", "storm"),
    "random": ("reparam", "score", "enum", "importance", "cv"),
    "decision": ("implicit", "unroll", "penalty", "borep"),
}
KIND_TEXT = {"index": "finite-index binder (sum/mean)", "random": "random-choice binder (E)",
             "decision": "decision binder (argmin/argmax/min/max)"}
DEFAULT = {"index": "full", "random": "reparam", "decision": "implicit"}


def default(binder: BinderInfo) -> Spec:
    """The estimator of a binder without an `estimate` statement."""
    if binder.kind == "random":
        return default_spec(binder)
    return Spec(DEFAULT[binder.kind], {})


def choose(binder: BinderInfo, spec: Spec, sizes: dict, consts: dict | None = None) -> EstimatorChoice:
    for t in TRANSFORMS:
        if isinstance(t, (Importance, ControlVariate)):  # proposals are built from the consts
            t = type(t)(consts)
        if t.accepts(binder, spec):
            return t.apply(binder, spec, sizes)
    kind = binder.kind
    for other, names in KNOWN.items():
        if spec.name in names and other != kind:
            raise VrEstimatorError("E303", f"`{spec.name}` does not apply to `{binder.name}`, a {KIND_TEXT[kind]}: "
                                   f"it estimates a {KIND_TEXT[other]}", spec.span,
                                   f"for `{binder.name}` use one of: {', '.join(KNOWN[kind])}")
    if spec.name in KNOWN[kind]:
        available = [t.names[0] for t in TRANSFORMS if t.kind == kind]
        if spec.span is None:  # the default of the binder's kind, not written by the user: point at the binder
            raise VrEstimatorError("E391", f"no estimator for the {KIND_TEXT[kind]} `{binder.name}` is available yet "
                                   f"in this version (its default would be `{spec.name}`)", binder.span,
                                   "the program is well-typed, but this version cannot compile this kind of binder yet")
        raise VrEstimatorError("E391", f"the estimator `{spec.name}` is not available yet in this version",
                               spec.span, "available for this binder: " + (", ".join(available) or "none yet"))
    close = difflib.get_close_matches(spec.name, KNOWN[kind], n=1, cutoff=0.6)
    raise VrEstimatorError("E304", f"unknown estimator `{spec.name}` for the {KIND_TEXT[kind]} `{binder.name}`",
                           spec.span, f"did you mean `{close[0]}`?" if close else
                           f"estimators for this binder: {', '.join(KNOWN[kind])}")


__all__ = ["TRANSFORMS", "KNOWN", "choose", "default", "EstimatorChoice"]
