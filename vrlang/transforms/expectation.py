"""Random-choice binders (``E(z ~ D: body)``): ``reparam``, ``score``, ``enum``, ``importance``
(``cv``, which wraps them, is :mod:`vrlang.transforms.control_variate`).

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
from vrlang.estimators.expectation import (EVAL_SAMPLES, GREEDY_FAMILIES, EMAScoreEstimate, EnumEstimate,
                                           ImportanceEstimate, ReparamEstimate, ScoreEstimate)
from vrlang.estimators.spec import Spec, check_args, number
from vrlang.syntax import ast
from vrlang.transforms.base import EstimatorChoice, Transform

BASELINES = ("none", "loo", "mean", "group_norm", "greedy", "optimal")
PLANNED_BASELINES = ()
DEFAULT_EMA_DECAY = 0.9


def _dist_name(binder: BinderInfo) -> str:
    return binder.nodes[0].dist.name


def _samples(spec: Spec) -> int:
    return number(spec, "samples", 1, integer=True)


def _eval_samples(spec: Spec) -> int:
    """Samples of the fixed-key evaluation (logged objective, reports, Program.objective): max(k, this)."""
    return number(spec, "eval_samples", EVAL_SAMPLES, integer=True)


def require_scalar_body(binder: BinderInfo, what: str, span) -> None:
    """E314: ``what`` (a per-sample coefficient or baseline) needs ``E(z ~ D: f)`` with ``f`` a real scalar."""
    for node in binder.nodes:
        if node.body.type.rank != 0:
            raise VrEstimatorError("E314", f"{what} needs a scalar body, but the body of `{binder.name}` is "
                                   f"{node.body.type}", span,
                                   f"write one expectation per component, e.g. E({binder.name} ~ ...: f[0])")


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
        if bname == "ema":
            return _ema(binder, spec, b, k)
        if bname in PLANNED_BASELINES:
            raise VrEstimatorError("E391", f"the baseline `{bname}` is not available yet in this version",
                                   spec.arg_spans.get("baseline") or spec.span, f"available: {', '.join(BASELINES + ('ema',))}")
        if bname in BASELINES and ((isinstance(b, Spec) and b.args) or isinstance(b, ast.Call)):
            raise VrEstimatorError("E306", f"baseline `{bname}` takes no arguments",
                                   spec.arg_spans.get("baseline") or spec.span, f"write baseline = {bname}")
        if bname not in BASELINES:
            raise VrEstimatorError("E306", f"unknown baseline `{bname or b}`",
                                   spec.arg_spans.get("baseline") or spec.span, f"baselines: {', '.join(BASELINES + ('ema',))}")
        if bname in ("loo", "mean", "group_norm", "optimal") and k < 2:
            why = ("it is estimated leave-one-out, from the other samples, so that it stays unbiased"
                   if bname == "optimal" else "it compares samples with each other")
            raise VrEstimatorError("E307", f"baseline `{bname}` needs samples >= 2 ({why})", spec.span,
                                   f"write score(samples = 4, baseline = {bname})")
        name = _dist_name(binder)
        if bname == "greedy" and name not in GREEDY_FAMILIES:
            raise VrEstimatorError("E308", f"baseline `greedy` needs the mode of {name}, which vrlang does not know",
                                   spec.span, "use baseline = loo")
        if bname == "optimal":
            require_scalar_body(binder, "baseline `optimal`", spec.arg_spans.get("baseline") or spec.span)
        unbiased = bname in ("none", "loo", "greedy", "optimal")
        note = {
            "none": "REINFORCE surrogate f(z) + sg(f(z)) * (log q(z) - sg(log q(z)))",
            "loo": "REINFORCE with the leave-one-out baseline (RLOO): b_k = mean of the other samples",
            "greedy": "REINFORCE with b = f(mode of q) (ReMax)",
            "optimal": "REINFORCE with the per-coordinate optimal baseline b_i = E[f s_i^2]/E[s_i^2], s = grad of "
                       "log q in the distribution's parameter arrays, estimated leave-one-out (b_k from the other "
                       "samples: unbiased); surrogate mean f(z) + sum_i phi_i sg(G_i) - sg(phi_i G_i), "
                       "G = mean_k (f_k - b_k) * s_k (per-sample scores by vmap(grad))",
            "mean": f"BIASED: baseline = group mean including the sample; the expected gradient is "
                    f"(k-1)/k = {(k - 1) / k:.3g} of the true gradient",
            "group_norm": "BIASED: GRPO advantage (f - mean)/std; the gradient is rescaled by 1/std of the group",
        }[bname]
        return EstimatorChoice(binder.name, binder.kind, spec, unbiased, f"{k} body evaluation{'s' * (k > 1)} per step"
                               + (" + 1 at the mode" if bname == "greedy" else "")
                               + (" + k per-sample scores (vmap(grad log q))" if bname == "optimal" else ""),
                               "k copies of the distribution's parameters (per-sample scores)" if bname == "optimal"
                               else "none", note,
                               plan=ScoreEstimate(k, bname, _eval_samples(spec)))


def _ema(binder, spec: Spec, b, k: int) -> EstimatorChoice:
    """``baseline = ema``, ``ema(0.9)`` or ``ema(decay = 0.9)``: a running mean of f as the baseline."""
    span = spec.arg_spans.get("baseline") or spec.span
    if isinstance(b, ast.Call):
        if len(b.args) > 1 or any(kw.name != "decay" for kw in b.kwargs) or (b.args and b.kwargs):
            raise VrEstimatorError("E306", "baseline `ema` takes one argument, the decay: ema(0.9) or ema(decay = 0.9)",
                                   span)
        arg = b.args[0] if b.args else b.kwargs[0].value
        val = arg.value if isinstance(arg, ast.Number) else None
        if isinstance(arg, ast.Unary) and arg.op == "-" and isinstance(arg.operand, ast.Number):
            val = -arg.operand.value
        decay = val
    else:
        decay = b.args.get("decay", DEFAULT_EMA_DECAY) if isinstance(b, Spec) else DEFAULT_EMA_DECAY
        if isinstance(b, Spec) and set(b.args) - {"decay"}:
            raise VrEstimatorError("E306", "baseline `ema` takes one argument, the decay: ema(decay = 0.9)", span)
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
        raise VrEstimatorError("E306", f"the decay of `ema` must be a number in [0, 1), got {decay}", span,
                               "e.g. baseline = ema(0.9)")
    note = (f"REINFORCE with an exponential-moving-average baseline b (decay {decay:g}), kept in estimator state: "
            f"b <- {decay:g} b + {1 - decay:g} mean_k f(z_k) after each step; unbiased (b depends on earlier steps "
            "only); needs a first-order solve with the full or sgd family on the sums around it")
    return EstimatorChoice(binder.name, binder.kind, spec, True, f"{k} body evaluation{'s' * (k > 1)} per step",
                           "one running mean per element of the body (per item inside a sum)", note,
                           plan=EMAScoreEstimate(k, float(decay), _eval_samples(spec)))


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
