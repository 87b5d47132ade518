"""Random-choice binders (``E(z ~ D: body)``): ``reparam``, ``score``, ``enum``, ``importance``.

Each transform checks that the estimator applies to the distribution (a pathwise
sampler for ``reparam``, a finite support for ``enum``, a mode for the ``greedy``
baseline, ``samples >= 2`` for leave-one-out baselines) and refuses it with the reason
otherwise.  Defaults: ``reparam`` where the distribution has a reparameterised sampler,
else ``score(samples = 1, baseline = none)``.
"""

from __future__ import annotations

import numpy as np

from vrlang.check.distributions import DISTRIBUTIONS
from vrlang.check.program import BinderInfo
from vrlang.errors import VrEstimatorError
from vrlang.estimators.expectation import (EVAL_SAMPLES, GREEDY_FAMILIES, EnumEstimate, ImportanceEstimate,
                                           ReparamEstimate, ScoreEstimate)
from vrlang.estimators.spec import Spec, check_args, number
from vrlang.syntax import ast
from vrlang.transforms.base import EstimatorChoice, Transform

BASELINES = ("none", "loo", "mean", "group_norm", "greedy")
PLANNED_BASELINES = ("ema", "optimal")


def _dist_name(binder: BinderInfo) -> str:
    return binder.nodes[0].dist.name


def _samples(spec: Spec) -> int:
    return number(spec, "samples", 1, integer=True)


def _eval_samples(spec: Spec) -> int:
    """Samples of the fixed-key evaluation (logged objective, reports, Program.objective): max(k, this)."""
    return number(spec, "eval_samples", EVAL_SAMPLES, integer=True)


class Reparam(Transform):
    kind, names = "random", ("reparam",)

    def apply(self, binder, spec, sizes):
        check_args(spec, {"samples": "", "eval_samples": ""}, "estimator")
        name = _dist_name(binder)
        if not DISTRIBUTIONS[name].reparam:
            raise VrEstimatorError("E305", f"`reparam` does not apply to `{binder.name} ~ {name}(...)`: "
                                   f"{name} has no reparameterised (pathwise) sampler", spec.span,
                                   "use score(samples = k, baseline = loo)" +
                                   (" or enum (finite support)" if DISTRIBUTIONS[name].discrete_support else ""))
        k = _samples(spec)
        return EstimatorChoice(binder.name, binder.kind, spec, True, f"{k} body evaluation{'s' * (k > 1)} per step",
                               "none", f"pathwise: mean over {k} of f(g(eps)), eps ~ base noise",
                               plan=ReparamEstimate(k, _eval_samples(spec)))


class Score(Transform):
    kind, names = "random", ("score",)

    def apply(self, binder, spec, sizes):
        check_args(spec, {"samples": "", "baseline": "", "eval_samples": ""}, "estimator")
        k = _samples(spec)
        b = spec.args.get("baseline", Spec("none", {}))
        # a Spec (`loo`, `ema(decay = 0.9)`) or a call with positional arguments (`ema(0.9)`)
        bname = b.name if isinstance(b, Spec) else (b.func if isinstance(b, ast.Call) else None)
        if bname in PLANNED_BASELINES:
            raise VrEstimatorError("E391", f"the baseline `{bname}` is not available yet in this version",
                                   spec.arg_spans.get("baseline") or spec.span, f"available: {', '.join(BASELINES)}")
        if bname in BASELINES and ((isinstance(b, Spec) and b.args) or isinstance(b, ast.Call)):
            raise VrEstimatorError("E306", f"baseline `{bname}` takes no arguments",
                                   spec.arg_spans.get("baseline") or spec.span, f"write baseline = {bname}")
        if bname not in BASELINES:
            raise VrEstimatorError("E306", f"unknown baseline `{bname or b}`",
                                   spec.arg_spans.get("baseline") or spec.span, f"baselines: {', '.join(BASELINES)}")
        if bname in ("loo", "mean", "group_norm") and k < 2:
            raise VrEstimatorError("E307", f"baseline `{bname}` needs samples >= 2 (it compares samples with each "
                                   "other)", spec.span, f"write score(samples = 4, baseline = {bname})")
        name = _dist_name(binder)
        if bname == "greedy" and name not in GREEDY_FAMILIES:
            raise VrEstimatorError("E308", f"baseline `greedy` needs the mode of {name}, which vrlang does not know",
                                   spec.span, "use baseline = loo")
        unbiased = bname in ("none", "loo", "greedy")
        note = {
            "none": "REINFORCE surrogate f(z) + sg(f(z)) * (log q(z) - sg(log q(z)))",
            "loo": "REINFORCE with the leave-one-out baseline (RLOO): b_k = mean of the other samples",
            "greedy": "REINFORCE with b = f(mode of q) (ReMax)",
            "mean": f"BIASED: baseline = group mean including the sample; the expected gradient is "
                    f"(k-1)/k = {(k - 1) / k:.3g} of the true gradient",
            "group_norm": "BIASED: GRPO advantage (f - mean)/std; the gradient is rescaled by 1/std of the group",
        }[bname]
        return EstimatorChoice(binder.name, binder.kind, spec, unbiased, f"{k} body evaluation{'s' * (k > 1)} per step"
                               + (" + 1 at the mode" if bname == "greedy" else ""), "none", note,
                               plan=ScoreEstimate(k, bname, _eval_samples(spec)))


class Enum(Transform):
    kind, names = "random", ("enum",)

    def apply(self, binder, spec, sizes):
        check_args(spec, {}, "estimator")
        node = binder.nodes[0]
        name = node.dist.name
        if name not in ("Bernoulli", "Categorical"):
            raise VrEstimatorError("E309", f"`enum` needs a finite support; {name} has none that vrlang enumerates",
                                   spec.span, "enum applies to Bernoulli and Categorical choices")
        if node.dist.type.shape:
            raise VrEstimatorError("E309", f"`enum` sums over one scalar choice; `{binder.name}` is "
                                   f"{node.dist.type} (a product support)", spec.span,
                                   "bind each scalar choice in its own E(...)")
        return EstimatorChoice(binder.name, binder.kind, spec, True, "one body evaluation per support point", "none",
                               "exact sum over the support, vectorised", plan=EnumEstimate())


def _const_value(e, consts: dict):
    if isinstance(e, ast.Number):
        return np.asarray(float(e.value))
    if isinstance(e, ast.Unary) and e.op == "-":
        return -_const_value(e.operand, consts)
    if isinstance(e, ast.Name) and e.id in consts:
        return np.asarray(consts[e.id], dtype=float)
    if isinstance(e, ast.Vector):
        return np.stack([_const_value(i, consts) for i in e.items])
    raise VrEstimatorError("E313", "the parameters of a proposal must be constants (numbers, consts, vectors)",
                           getattr(e, "span", None))


class Importance(Transform):
    kind, names = "random", ("importance",)

    def __init__(self, consts: dict | None = None):
        self.consts = consts or {}

    def apply(self, binder, spec, sizes):
        check_args(spec, {"proposal": "", "samples": "", "self_normalized": "", "eval_samples": ""}, "estimator")
        prop = spec.args.get("proposal")
        if not isinstance(prop, ast.Call) or prop.func not in DISTRIBUTIONS:
            raise VrEstimatorError("E313", "`importance` needs `proposal = D(...)`, a distribution with constant "
                                   "parameters", spec.span, "e.g. importance(proposal = Normal(0, 2), samples = 16)")
        name = _dist_name(binder)
        if DISTRIBUTIONS[prop.func].base != DISTRIBUTIONS[name].base:
            raise VrEstimatorError("E313", f"the proposal {prop.func} and the target {name} have different supports",
                                   prop.span)
        import jax.numpy as jnp
        import numpyro.distributions as nd
        args = [jnp.asarray(_const_value(a, self.consts)) for a in prop.args]
        kwargs = {k.name: jnp.asarray(_const_value(k.value, self.consts)) for k in prop.kwargs}
        try:
            proposal = getattr(nd, prop.func)(*args, **kwargs)
        except Exception as e:  # invalid constant parameters
            raise VrEstimatorError("E313", f"invalid proposal {prop.func}: {e}", prop.span) from None
        k = _samples(spec)
        sn = spec.args.get("self_normalized", False)
        if not isinstance(sn, bool):
            raise VrEstimatorError("E302", "`self_normalized` must be true or false", spec.span)
        note = (f"BIASED (self-normalised weights, consistent as samples grow): sum w f / sum w, z ~ {prop.func}"
                if sn else f"mean of q(z)/p(z) f(z), z ~ proposal {prop.func}")
        return EstimatorChoice(binder.name, binder.kind, spec, not sn, f"{k} body evaluations per step", "none",
                               note, plan=ImportanceEstimate(k, sn, proposal, _eval_samples(spec)))


def default_spec(binder: BinderInfo) -> Spec:
    name = _dist_name(binder)
    return Spec("reparam", {}) if DISTRIBUTIONS[name].reparam else Spec("score", {})
