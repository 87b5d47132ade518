"""Decision binders (``argmin``/``argmax``/``min``/``max``): ``implicit`` and ``unroll``.

``implicit(linsolve = cg | neumann | direct, iters = k, inner = SOLVER)`` (the default) and
``unroll(steps = k, lr = c | auto)``; the runtime pieces are in
:mod:`vrlang.estimators.bilevel`.  Inner solvers: ``sgd(lr = c | auto, steps = k, tol = t)``
(gradient descent with a fixed step: the inner objective is evaluated exactly) and
``lbfgs(steps = k, memory = m, tol = t)`` (the default, ``steps = 100``).  ``penalty`` and
``borep`` are reserved (E391).

The inner problem is deterministic in this version: a sampled estimator (a minibatched
sum, a sampled expectation) inside the body of a decision binder is refused with E391 by
:func:`refuse_stochastic_inner`.
"""

from __future__ import annotations

from vrlang.check.program import BinderInfo
from vrlang.errors import VrEstimatorError
from vrlang.estimators.bilevel import CG, LBFGS, POWER_ITERS, Direct, GradientDescent, Implicit, Neumann, Unroll
from vrlang.estimators.spec import Spec, check_args, number
from vrlang.ir import nodes as N
from vrlang.transforms.base import EstimatorChoice, Transform

LINSOLVES = ("cg", "neumann", "direct")
INNER_SOLVERS = ("sgd", "lbfgs")
INNER_PLANNED = ("svrg", "saga", "lsvrg", "adam")  # stochastic / other inner solvers: later work
DEFAULT_INNER = Spec("lbfgs", {"steps": 100})
DEFAULT_ITERS = 100
NO_WARM_START = "each outer step solves the inner problem afresh from its `= init` value (default 0; no warm start)"


def _ops(binder: BinderInfo) -> set[str]:
    return {n.op for n in binder.nodes if isinstance(n, N.Decision)} or {binder.op}


def _tol(spec: Spec):
    return number(spec, "tol", 1.0) if "tol" in spec.args else None


def inner_solver(spec: Spec, outer: Spec):
    """``sgd(lr, steps, tol)`` or ``lbfgs(steps, memory, tol)`` -> (runtime solver, description)."""
    span = outer.arg_spans.get("inner") or outer.span
    if not isinstance(spec, Spec):
        raise VrEstimatorError("E302", f"`inner` of `{outer.name}` must be a solver such as lbfgs(steps = 100)",
                               span, f"inner solvers: {', '.join(INNER_SOLVERS)}")
    if spec.name in INNER_PLANNED:
        raise VrEstimatorError("E391", f"the inner solver `{spec.name}` is not available yet in this version",
                               spec.span or span, f"available inner solvers: {', '.join(INNER_SOLVERS)}")
    if spec.name not in INNER_SOLVERS:
        raise VrEstimatorError("E302", f"unknown inner solver `{spec.name}` for `{outer.name}`", spec.span or span,
                               f"inner solvers: {', '.join(INNER_SOLVERS)}")
    steps = number(spec, "steps", 100, integer=True)
    if spec.name == "sgd":
        check_args(spec, {"lr": "", "steps": "", "tol": ""}, "inner solver")
        lr = number(spec, "lr", Spec("auto", {}), allow_auto=True)
        tol = _tol(spec)
        text = (f"gradient descent, lr = {'1/L (L: power iteration at the init)' if lr == 'auto' else f'{lr:g}'}, "
                f"at most {steps} steps")
        return GradientDescent(steps, None if lr == "auto" else lr, tol), text
    check_args(spec, {"steps": "", "memory": "", "tol": ""}, "inner solver")
    memory = number(spec, "memory", 10, integer=True)
    tol = _tol(spec)
    return LBFGS(steps, memory, tol), f"L-BFGS (memory {memory}, zoom line search), at most {steps} steps"


class ImplicitDecision(Transform):
    kind, names = "decision", ("implicit",)

    def apply(self, binder, spec, sizes):
        check_args(spec, {"linsolve": "", "iters": "", "inner": "", "tol": "", "alpha": ""}, "estimator")
        ls = spec.args.get("linsolve", Spec("cg", {}))
        ls_span = spec.arg_spans.get("linsolve") or spec.span
        if not isinstance(ls, Spec) or ls.args or ls.name not in LINSOLVES:
            shown = ls.name if isinstance(ls, Spec) else ls
            raise VrEstimatorError("E302", f"`linsolve` of `implicit` must be one of {', '.join(LINSOLVES)}, "
                                   f"got `{shown}`", ls_span,
                                   "cg: conjugate gradients (HVPs only); neumann: truncated Neumann series (HVPs "
                                   "only); direct: dense solve of the materialised Hessian (small inner problems)")
        for arg, allowed in (("iters", ("cg", "neumann")), ("tol", ("cg",)), ("alpha", ("neumann",))):
            if arg in spec.args and ls.name not in allowed:
                raise VrEstimatorError("E302", f"`{arg}` of `implicit` does not apply to linsolve = {ls.name}",
                                       spec.arg_spans.get(arg) or spec.span,
                                       f"`{arg}` applies to linsolve = {' or '.join(allowed)}")
        iters = number(spec, "iters", DEFAULT_ITERS, integer=True)
        inner, inner_text = inner_solver(spec.args.get("inner", DEFAULT_INNER), spec)
        if ls.name == "cg":
            lin = CG(iters, _tol(spec))
            lin_text = f"conjugate gradients, at most {iters} HVPs"
            lin_cost = f"<= {iters} HVPs"
        elif ls.name == "neumann":
            alpha = number(spec, "alpha", 1.0) if "alpha" in spec.args else None
            lin = Neumann(iters, alpha)
            lin_text = (f"Neumann series, {iters} terms, step alpha = "
                        + (f"{alpha:g}" if alpha is not None else "1/L (power iteration at the solution)"))
            lin_cost = f"{iters - 1} HVPs" + ("" if alpha is not None else f" + {POWER_ITERS} for alpha")
        else:
            lin = Direct()
            lin_text = "dense solve of the materialised inner Hessian (jacfwd: dim v HVPs)"
            lin_cost = "dim v HVPs + an O((dim v)^3) dense solve"
        inner_cost = _inner_cost(inner)
        ops = _ops(binder)
        values_only = ops <= {"min", "max"}
        if values_only:
            note = (f"value function by Danskin's theorem: grad = d/dx g(v*, x) at v* = stop_gradient(inner "
                    f"solution), no linear solve; inner: {inner_text}; {NO_WARM_START}")
            cost = f"per outer step: {inner_cost} of the inner objective"
        else:
            note = (f"implicit differentiation (custom_root): grad = d_x f - d2_xv g [d2_vv g]^-1 d_v f at the inner "
                    f"solution, exact up to the inner and linear-solve tolerances; inner: {inner_text}; "
                    f"linear solve: {lin_text}; {NO_WARM_START}")
            if ops & {"min", "max"}:
                note += "; min/max instances: Danskin's theorem (no linear solve)"
            cost = (f"per outer step: {inner_cost} of the inner objective + {lin_cost} (1 HVP ~ 2 gradients) in "
                    "the backward pass")
        memory = ("the inner solution" + (f" + L-BFGS history (2 x {inner.memory} copies of v)"
                                          if isinstance(inner, LBFGS) else "")
                  + (" + the dense (dim v)^2 Hessian" if ls.name == "direct" and not values_only else "")
                  + "; no tape of the inner iterations")
        return EstimatorChoice(binder.name, binder.kind, spec, True, cost, memory, note,
                               family="full", plan=Implicit(inner, lin))


def _inner_cost(inner) -> str:
    if isinstance(inner, LBFGS):
        return f"<= {inner.steps} L-BFGS steps (1 gradient each + line-search evaluations)"
    auto = "" if inner.lr is not None else f" + {POWER_ITERS} HVPs for lr = auto"
    return f"<= {inner.steps} gradients{auto}"


class UnrollDecision(Transform):
    kind, names = "decision", ("unroll",)

    def apply(self, binder, spec, sizes):
        check_args(spec, {"steps": "", "lr": ""}, "estimator")
        steps = number(spec, "steps", 100, integer=True)
        lr = number(spec, "lr", Spec("auto", {}), allow_auto=True)
        lr_text = "1/L (power iteration at the init, not differentiated)" if lr == "auto" else f"{lr:g}"
        note = (f"BIASED (truncated): reverse-mode through {steps} gradient-descent steps with lr = {lr_text}; "
                f"for a mu-strongly convex, L-smooth inner problem the hypergradient error decays like "
                f"O(k (1 - lr mu)^k) as steps k grow (Shaban et al. 2019); {NO_WARM_START}")
        cost = (f"per outer step: {steps} gradients of the inner objective forward + {steps} vector-Jacobian "
                f"products through them backward (each step recomputed once, jax.checkpoint)"
                + ("" if lr != "auto" else f" + {POWER_ITERS} HVPs for lr = auto"))
        memory = f"{steps} copies of v (the scan's iterates); per-step intermediates are recomputed, not stored"
        gd = GradientDescent(steps, None if lr == "auto" else lr, None)
        return EstimatorChoice(binder.name, binder.kind, spec, False, cost, memory, note, family="full",
                               plan=Unroll(gd))


def refuse_stochastic_inner(cp, choices: dict) -> None:
    """E391 for a sampled estimator (minibatched sum, sampled expectation) inside a decision binder's body."""
    from vrlang.estimators.expectation import EnumEstimate

    def sampled(c) -> bool:
        if c.kind == "index":
            return c.sampler is not None
        if c.kind == "random":
            return c.plan is not None and not isinstance(c.plan, EnumEstimate)
        return False

    for node in N.walk(cp.objective):
        if not isinstance(node, N.Decision):
            continue
        for inner in N.walk(node.body):
            if isinstance(inner, (N.Sum, N.Expect)) and inner.binder in choices and sampled(choices[inner.binder]):
                c = choices[inner.binder]
                what = "minibatched sum" if c.kind == "index" else "sampled expectation"
                span = c.spec.span or inner.span
                fix = (f"estimate {inner.binder} by full (the inner problem is then solved exactly)"
                       if c.kind == "index" else
                       f"estimate {inner.binder} by enum if its support is finite, or move the expectation out of "
                       f"the {node.op}")
                raise VrEstimatorError("E391", f"the {what} `{inner.binder}` ({c.spec}) is inside the inner problem "
                                       f"of {node.op}(`{node.binder}` ...): stochastic inner problems are not "
                                       "available yet in this version", span, fix)


__all__ = ["ImplicitDecision", "UnrollDecision", "refuse_stochastic_inner", "inner_solver"]
