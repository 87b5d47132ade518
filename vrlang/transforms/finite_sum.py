"""Finite-index binders (``sum``/``mean``): ``full``, ``sgd``, ``svrg``, ``lsvrg``, ``saga``,
``sarah``, ``spider``, ``page``, ``storm``.

Each transform checks the spec's arguments and records, for ``explain``, the bias status,
the cost per step in component gradients and the memory; ``options`` carries the numeric
hyperparameters to :meth:`vrlang.program.Program._estimator`, which resolves the defaults
that depend on the data size (``None`` here) and builds the runtime estimator.
"""

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


RECURSIVE_NOTE = "variance-reduced, biased (recursive)"


def _batch(spec, binder):
    b = number(spec, "batch", 1, integer=True)
    _sampling(spec)
    return b


def _paren(size: str) -> str:
    return f"({size})" if " " in size else size


def _optional(spec, key, **kw):
    return number(spec, key, None, **kw) if spec.args.get(key) is not None else None


class LSVRGSum(Transform):
    kind, names = "index", ("lsvrg",)

    def apply(self, binder, spec, sizes):
        check_args(spec, {"batch": "", "sampling": "", "p": ""}, "estimator")
        b = _batch(spec, binder)
        n = sizes[binder.name]
        p = _optional(spec, "p", upper=1)
        ptxt = f"{p:g}" if p is not None else f"{b}/{_paren(n)} (default)"
        return EstimatorChoice(binder.name, binder.kind, spec, True,
                               f"2*{b} per step + {n} with probability p = {ptxt}",
                               "one copy of the params and of the full gradient",
                               "loopless SVRG: snapshot refreshed with probability p each step "
                               "(Kovalev, Horvath & Richtarik 2020)",
                               UniformSampler(b), "lsvrg", {"p": p})


class SAGASum(Transform):
    kind, names = "index", ("saga",)

    def apply(self, binder, spec, sizes):
        check_args(spec, {"batch": "", "sampling": ""}, "estimator")
        b = _batch(spec, binder)
        n = sizes[binder.name]
        return EstimatorChoice(binder.name, binder.kind, spec, True,
                               f"{b} per step (+ {n} once, to fill the table)",
                               f"a table of {n} per-item gradients ({n} copies of the params) and their mean",
                               "table of the last per-item gradients as control variate "
                               "(Defazio, Bach & Lacoste-Julien 2014)",
                               UniformSampler(b), "saga", {})


class SARAHSum(Transform):
    kind, names = "index", ("sarah",)

    def apply(self, binder, spec, sizes):
        check_args(spec, {"batch": "", "sampling": "", "epoch": ""}, "estimator")
        b = _batch(spec, binder)
        n = sizes[binder.name]
        m = _optional(spec, "epoch", integer=True)
        return EstimatorChoice(binder.name, binder.kind, spec, False,
                               f"2*{b} per step + {n} per restart (every {m if m else 'n/b'} steps)",
                               "one copy of the params and of the last estimate",
                               f"{RECURSIVE_NOTE}: SARAH, v_t = grad F(w_t) - grad F(w_t-1) + v_t-1 on one "
                               "minibatch, restarted from the full gradient (Nguyen et al. 2017)",
                               UniformSampler(b), "sarah", {"epoch": m})


class SPIDERSum(Transform):
    kind, names = "index", ("spider",)

    def apply(self, binder, spec, sizes):
        check_args(spec, {"batch": "", "sampling": "", "large_batch": "", "period": ""}, "estimator")
        b = _batch(spec, binder)
        n = sizes[binder.name]
        big = _optional(spec, "large_batch", integer=True)
        q = _optional(spec, "period", integer=True)
        restart = f"a minibatch of {big}" if big else "the full gradient"
        return EstimatorChoice(binder.name, binder.kind, spec, False,
                               f"2*{b} per step + {big if big else n} per restart "
                               f"(every {q if q else 'n/b' if not big else 'large_batch/b'} steps)",
                               "one copy of the params and of the last estimate",
                               f"{RECURSIVE_NOTE}: SPIDER, recursive differences restarted from {restart} "
                               "(Fang et al. 2018)",
                               UniformSampler(b), "spider", {"large_batch": big, "period": q})


class PAGESum(Transform):
    kind, names = "index", ("page",)

    def apply(self, binder, spec, sizes):
        check_args(spec, {"batch": "", "sampling": "", "p": ""}, "estimator")
        b = _batch(spec, binder)
        n = sizes[binder.name]
        p = _optional(spec, "p", upper=1)
        ptxt = f"{p:g}" if p is not None else f"{b}/({b} + {n}) (default)"
        return EstimatorChoice(binder.name, binder.kind, spec, False,
                               f"{n} with probability p = {ptxt}, else 2*{b}",
                               "one copy of the params and of the last estimate",
                               f"{RECURSIVE_NOTE}: PAGE, full gradient with probability p, else the "
                               "SARAH-type recursive correction (Li et al. 2021)",
                               UniformSampler(b), "page", {"p": p})


class STORMSum(Transform):
    kind, names = "index", ("storm",)
    DEFAULT_A = 0.1

    def apply(self, binder, spec, sizes):
        check_args(spec, {"batch": "", "sampling": "", "a": ""}, "estimator")
        b = _batch(spec, binder)
        a = number(spec, "a", self.DEFAULT_A, upper=1)
        return EstimatorChoice(binder.name, binder.kind, spec, False,
                               f"2*{b} per step", "one copy of the params and of the last estimate",
                               f"{RECURSIVE_NOTE}: STORM momentum, d_t = grad F(w_t) + (1 - a)(d_t-1 - grad "
                               f"F(w_t-1)) with a = {a:g} (Cutkosky & Orabona 2019)",
                               UniformSampler(b), "storm", {"a": a})
