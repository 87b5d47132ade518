"""Finite-index binders (``sum``/``mean``): ``full``, ``sgd``, ``svrg``."""

from __future__ import annotations

from vrlang.check.program import BinderInfo
from vrlang.errors import VrEstimatorError
from vrlang.estimators.sampling import UniformSampler
from vrlang.estimators.spec import Spec, check_args, number
from vrlang.transforms.base import EstimatorChoice, Transform


def _sampling(spec: Spec):
    s = spec.args.get("sampling")
    if s is None or (isinstance(s, Spec) and s.name == "uniform" and not s.args):
        return "uniform"
    name = s.name if isinstance(s, Spec) else "weights"
    raise VrEstimatorError("E392", f"`sampling = {name}` is not available yet in this version",
                           spec.arg_spans.get("sampling") or spec.span,
                           "use sampling = uniform (importance sampling arrives with issue 3)")


class FullSum(Transform):
    kind, names = "index", ("full",)

    def apply(self, binder, spec, sizes):
        check_args(spec, {}, "estimator")
        return EstimatorChoice(binder.name, binder.kind, spec, True, f"{sizes[binder.name]} (all items)",
                               "none", "exact sum", None, "full")


class MinibatchSum(Transform):
    kind, names = "index", ("sgd",)

    def apply(self, binder, spec, sizes):
        check_args(spec, {"batch": "", "sampling": ""}, "estimator")
        b = number(spec, "batch", 1, integer=True)
        _sampling(spec)
        return EstimatorChoice(binder.name, binder.kind, spec, True, f"{b} per step", "none",
                               f"uniform minibatch of {b}, reweighted n/b", UniformSampler(b), "sgd")


class SVRGSum(Transform):
    kind, names = "index", ("svrg",)

    def apply(self, binder, spec, sizes):
        check_args(spec, {"batch": "", "sampling": "", "epoch": ""}, "estimator")
        b = number(spec, "batch", 1, integer=True)
        _sampling(spec)
        n = sizes[binder.name]
        m = spec.args.get("epoch")
        m = number(spec, "epoch", 1, integer=True) if m is not None else None
        return EstimatorChoice(binder.name, binder.kind, spec, True,
                               f"2*{b} per step + {n} per snapshot", "one copy of the params and of the full gradient",
                               "snapshot + full-gradient control variate (Johnson & Zhang 2013)",
                               UniformSampler(b), "svrg", {"epoch": m})
