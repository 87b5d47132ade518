"""Decision binders (``argmin``/``argmax``/``min``/``max``): ``implicit``, ``unroll``, ``penalty``, ``borep``.

``implicit(linsolve = cg | neumann | direct, iters = k, inner = SOLVER, warm = true)`` (the default),
``unroll(steps = k, lr = c | auto)`` (runtime pieces in :mod:`vrlang.estimators.bilevel`),
``penalty(sigma = s, growth = r, lr = c | auto, steps = k, inner = SOLVER, decay = c | true)`` (F2SA,
:mod:`vrlang.estimators.penalty`) and ``borep(period = I, steps = N, lr = c | auto, iters = Q,
alpha = a, inner = SOLVER)`` (BO-REP, :mod:`vrlang.estimators.borep`; with the outer solver
``normalized``).  Inner solvers: ``sgd(lr = c | auto, steps = k, tol = t)`` (gradient descent with
a fixed step: the inner objective is evaluated exactly), ``adam(lr = c, steps = k, tol = t)`` (constant
step, defaults 0.01 and 1000) and ``lbfgs(steps = k, memory = m, tol = t)`` (the default,
``steps = 100``); with ``implicit`` only, ``svrg(steps = k, batch = b, lr = c | auto,
epoch = m)``, ``lsvrg(steps = k, batch = b, lr = c | auto, p = q)`` and ``saga(steps = k, batch = b,
lr = c | auto)`` (variance-reduced solvers on minibatches of the inner sums,
:mod:`vrlang.estimators.inner_finite_sum`).

The inner problem is deterministic except with ``penalty`` and, for minibatched sums, with ``borep`` (SGD
lower updates, minibatch HVPs: :class:`vrlang.estimators.borep.StochasticBoRep`) and
``implicit(linsolve = neumann)``, whose choice is then replaced by stocBiO (minibatch inner steps on the
tracked y, ``steps = k, lr = c | auto``; stochastic Neumann series with independent minibatch HVPs:
:mod:`vrlang.estimators.stochastic_implicit`): any other sampled estimator (a minibatched sum, a sampled
expectation) inside the body of a decision binder is refused with E391 by :func:`refuse_stochastic_inner`.
:func:`check_decisions` runs every compile-time check of this module.
"""

from __future__ import annotations

from dataclasses import replace

from vrlang.check.program import BinderInfo
from vrlang.errors import VrEstimatorError
from vrlang.estimators.bilevel import (AUTO_DRAWS, CG, LBFGS, POWER_ITERS, Adam, Direct, GradientDescent, Implicit,
                                      Neumann, Unroll)
from vrlang.estimators.borep import BoRep, StochasticBoRep
from vrlang.estimators.inner_finite_sum import (DEFAULT_EPOCH, DEFAULT_P, MINIBATCH_SOLVERS, InnerLSVRG, InnerSAGA,
                                               InnerSVRG)
from vrlang.estimators.penalty import F2SA_DECAY, F2SA_GROWTH, Penalty
from vrlang.estimators.stochastic_implicit import StochasticImplicit
from vrlang.estimators.spec import Spec, check_args, number
from vrlang.ir import homes
from vrlang.ir import nodes as N
from vrlang.transforms.base import EstimatorChoice, Transform

LINSOLVES = ("cg", "neumann", "direct")
INNER_SOLVERS = ("sgd", "lbfgs", "adam", "svrg", "lsvrg", "saga")
MINIBATCH_INNER = ("svrg", "lsvrg", "saga")  # with implicit only
DEFAULT_INNER = Spec("lbfgs", {"steps": 100})
DEFAULT_ITERS = 100
NO_WARM_START = "each outer step solves the inner problem afresh from its `= init` value (default 0; no warm start)"
WARM_START = ("warm start: each step of an sgd/adam solve starts the inner solver at the previous step's solution "
              "(one per block inside a sum; exact evaluations and lbfgs start at `= init`)")


def _ops(binder: BinderInfo) -> set[str]:
    return {n.op for n in binder.nodes if isinstance(n, N.Decision)} or {binder.op}


def _tol(spec: Spec):
    return number(spec, "tol", 1.0) if "tol" in spec.args else None


def inner_solver(spec: Spec, outer: Spec):
    """``sgd(lr, steps, tol)``, ``lbfgs(steps, memory, tol)``, ``adam(lr, steps, tol)`` or, for ``implicit``,
    ``svrg(steps, batch, lr, epoch)``, ``lsvrg(steps, batch, lr, p)``, ``saga(steps, batch, lr)`` -> (runtime
    solver, description)."""
    span = outer.arg_spans.get("inner") or outer.span
    if not isinstance(spec, Spec):
        raise VrEstimatorError("E302", f"`inner` of `{outer.name}` must be a solver such as lbfgs(steps = 100)",
                               span, f"inner solvers: {', '.join(INNER_SOLVERS)}")
    if spec.name not in INNER_SOLVERS:
        raise VrEstimatorError("E302", f"unknown inner solver `{spec.name}` for `{outer.name}`", spec.span or span,
                               f"inner solvers: {', '.join(INNER_SOLVERS)}")
    steps = number(spec, "steps", 100, integer=True)
    if spec.name in MINIBATCH_INNER:
        return _minibatch_inner(spec, outer, steps, span)
    if spec.name == "sgd":
        check_args(spec, {"lr": "", "steps": "", "tol": ""}, "inner solver")
        lr = number(spec, "lr", Spec("auto", {}), allow_auto=True)
        tol = _tol(spec)
        text = (f"gradient descent, lr = {'1/L (L: power iteration at the init)' if lr == 'auto' else f'{lr:g}'}, "
                f"at most {steps} steps")
        return GradientDescent(steps, None if lr == "auto" else lr, tol), text
    if spec.name == "adam":
        check_args(spec, {"lr": "", "steps": "", "tol": ""}, "inner solver")
        steps = number(spec, "steps", 1000, integer=True)
        lr = number(spec, "lr", 0.01)
        text = (f"Adam (optax) with a constant step lr = {lr:g}, at most {steps} steps, stopped at the gradient "
                "tolerance (a constant-step Adam need not converge: it can pass the solution and drift away)")
        return Adam(steps, lr, _tol(spec)), text
    check_args(spec, {"steps": "", "memory": "", "tol": ""}, "inner solver")
    memory = number(spec, "memory", 10, integer=True)
    tol = _tol(spec)
    return LBFGS(steps, memory, tol), f"L-BFGS (memory {memory}, zoom line search), at most {steps} steps"


def _minibatch_inner(spec: Spec, outer: Spec, steps: int, span):
    """``svrg(steps, batch, lr, epoch)``, ``lsvrg(steps, batch, lr, p)``, ``saga(steps, batch, lr)``."""
    name = spec.name
    if outer.name != "implicit":
        raise VrEstimatorError("E391", f"the inner solver `{name}` is available with `implicit` only in this "
                               f"version, not with `{outer.name}`", spec.span or span,
                               "use inner = lbfgs(steps = 100) or sgd(steps = k)")
    extra = {"svrg": {"epoch": ""}, "lsvrg": {"p": ""}, "saga": {}}[name]
    check_args(spec, {"steps": "", "batch": "", "lr": "", **extra}, "inner solver")
    batch = number(spec, "batch", 8, integer=True)
    lr = number(spec, "lr", Spec("auto", {}), allow_auto=True)
    denom = "3" if name == "saga" else "2"
    lr_text = (f"1/({denom} L), L the largest top eigenvalue of the minibatch inner Hessian over {AUTO_DRAWS} "
               "draws at the start (power iteration)" if lr == "auto" else f"{lr:g}")
    lr = None if lr == "auto" else lr
    draws = ("the minibatches are drawn with the step's key, or a fixed key in exact evaluations (Program.grad "
             "stays deterministic); approximate: the hypergradient error is O(|v - v*|)")
    if name == "svrg":
        epoch = number(spec, "epoch", DEFAULT_EPOCH, integer=True)
        text = (f"SVRG (Johnson & Zhang 2013) on the inner sums: {steps} steps on minibatches of {batch} "
                f"(uniform, with replacement, per sum of the body), a snapshot with its full gradient every "
                f"{epoch} steps, lr = {lr_text}, from the (warm-started) inner state; {draws}")
        return InnerSVRG(steps, batch, lr, epoch), text
    if name == "lsvrg":
        p = number(spec, "p", DEFAULT_P, upper=1)
        text = (f"loopless SVRG (Kovalev, Horvath & Richtarik 2020) on the inner sums: {steps} steps on minibatches "
                f"of {batch} (uniform, with replacement, per sum of the body), the snapshot and its full gradient "
                f"refreshed with probability p = {p:g} after each step, lr = {lr_text}, from the (warm-started) "
                f"inner state; {draws}")
        return InnerLSVRG(steps, batch, lr, p), text
    text = (f"SAGA (Defazio, Bach & Lacoste-Julien 2014) on the items of the inner problem's sum: {steps} steps "
            f"on minibatches of {batch} items (uniform, with replacement) with a table of the last gradient "
            f"w.r.t. v of each item (built at the (warm-started) inner state at the start of each inner solve), "
            f"lr = {lr_text}; {draws}")
    return InnerSAGA(steps, batch, lr), text


class ImplicitDecision(Transform):
    kind, names = "decision", ("implicit",)

    def apply(self, binder, spec, sizes):
        check_args(spec, {"linsolve": "", "iters": "", "inner": "", "tol": "", "alpha": "", "warm": "", "steps": "",
                          "lr": ""}, "estimator")
        warm = spec.args.get("warm", True)
        if not isinstance(warm, bool):
            raise VrEstimatorError("E302", f"`warm` of `implicit` must be true or false, got `{warm}`",
                                   spec.arg_spans.get("warm") or spec.span)
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
        start = WARM_START if warm else NO_WARM_START
        ops = _ops(binder)
        values_only = ops <= {"min", "max"}
        if values_only:
            note = (f"value function by Danskin's theorem: grad = d/dx g(v*, x) at v* = stop_gradient(inner "
                    f"solution), no linear solve; inner: {inner_text}; {start}")
            cost = f"per outer step: {inner_cost} of the inner objective"
        else:
            note = (f"implicit differentiation (custom_root): grad = d_x f - d2_xv g [d2_vv g]^-1 d_v f at the inner "
                    f"solution, exact up to the inner and linear-solve tolerances; inner: {inner_text}; "
                    f"linear solve: {lin_text}; {start}")
            if ops & {"min", "max"}:
                note += "; min/max instances: Danskin's theorem (no linear solve)"
            cost = (f"per outer step: {inner_cost} of the inner objective + {lin_cost} (1 HVP ~ 2 gradients) in "
                    "the backward pass")
        memory = ("the inner solution" + (f" + L-BFGS history (2 x {inner.memory} copies of v)"
                                          if isinstance(inner, LBFGS) else "")
                  + (" + Adam's two moment estimates (2 copies of v)" if isinstance(inner, Adam) else "")
                  + (" + the dense (dim v)^2 Hessian" if ls.name == "direct" and not values_only else "")
                  + "; no tape of the inner iterations")
        # `steps`/`lr`: the minibatch inner steps of a stochastic inner problem (used by check_decisions)
        steps = 0 if spec.args.get("steps") == 0 else number(spec, "steps", 10, integer=True)
        lr = number(spec, "lr", Spec("auto", {}), allow_auto=True)
        sto = {"steps": steps, "lr": None if lr == "auto" else lr, "iters": iters, "linsolve": ls.name,
               "alpha": spec_alpha(spec, ls.name), "inner": inner, "inner_text": inner_text, "lin": lin,
               "values_only": values_only}
        sampled = isinstance(inner, MINIBATCH_SOLVERS)  # a random, approximate inner solution: flagged
        if sampled:
            note = (f"BIASED by the inexact inner solution ({_NAMES[type(inner)]}, a fixed number of minibatch "
                    "steps): " + note)
        if isinstance(inner, InnerSAGA):
            memory = memory.replace("; no tape", " + SAGA's table: n x dim v numbers (n the items of the inner "
                                    "sum), built at the start of each inner solve; no tape")
        return EstimatorChoice(binder.name, binder.kind, spec, not sampled, cost, memory, note,
                               family="full", options={"stochastic": sto}, plan=Implicit(inner, lin, warm))


def spec_alpha(spec: Spec, linsolve: str):
    return number(spec, "alpha", 1.0) if linsolve == "neumann" and "alpha" in spec.args else None


def _stochastic_implicit(choice: EstimatorChoice, inner_binder: str) -> EstimatorChoice:
    """The choice of an ``implicit`` binder whose inner problem has the minibatched sum ``inner_binder``:
    stocBiO (:mod:`vrlang.estimators.stochastic_implicit`)."""
    o, spec = choice.options["stochastic"], choice.spec
    if isinstance(o["inner"], MINIBATCH_SOLVERS):
        name = _NAMES[type(o["inner"])].lower().replace("-", "")
        raise VrEstimatorError("E391", f"`{choice.binder}` has inner = {name} and a minibatched sum "
                               f"`{inner_binder}` inside its inner problem (stocBiO): {name} as the inner solver "
                               "needs the inner sums estimated by full in this version",
                               spec.arg_spans.get("inner") or spec.span,
                               f"estimate {inner_binder} by full ({name} draws its own minibatches), or use "
                               "inner = lbfgs(steps = 100)")
    steps, lr, Q, alpha = o["steps"], o["lr"], o["iters"], o["alpha"]
    lr_text = ("1/L, L the largest top eigenvalue of the inner minibatch Hessian over "
               f"{AUTO_DRAWS} draws at the initial solution (power iteration, once)" if lr is None else f"{lr:g}")
    a_text = "the inner step" if alpha is None else f"{alpha:g}"
    track = (f"the inner variable y is binder state (warm-started; one per block inside a sum over blocks): each "
             f"outer step takes {steps} minibatch gradient step(s) on it (lr = {lr_text}; a fresh minibatch of "
             f"`{inner_binder}` per step)")
    exact = (f"exact evaluations (the initial state, the logged objective, Program.grad, lbfgs): exact inner "
             f"solve by {o['inner_text']} and the deterministic series")
    if o["values_only"]:
        note = (f"BIASED by the inexact inner solution: value function by Danskin's theorem, grad = d_x g_B(x, y) "
                f"at the tracked y on a minibatch B (unbiased given y*); {track}; {exact}")
        cost = f"per outer step: {steps} minibatch gradients of g + 1 minibatch gradient of g"
    else:
        note = (f"BIASED by the Neumann truncation (1 - a mu)^{Q} and the inexact inner solution; unbiased for the "
                f"truncated hypergradient given y*: stocBiO (Ji, Yang & Liang, ICML 2021): grad = d_x f - "
                f"d2_xy g_B0 v, v = a sum_(q<{Q}) prod_(j<=q) (I - a H_Bj) d_y f with independent minibatches "
                f"B0..B{Q - 1} of `{inner_binder}` (a = {a_text}); {track}; {exact}")
        cost = (f"per outer step: {steps} minibatch gradients of g (inner steps) + {Q - 1} minibatch HVPs (Neumann, "
                f"1 HVP ~ 2 gradients; run twice: once on a zero vector in the forward pass) + 1 minibatch "
                f"mixed second derivative (d2_xy g_B0 v, ~2 gradients) + the gradient of f")
        if lr is None:
            cost += f"; once: {AUTO_DRAWS * POWER_ITERS} minibatch HVPs for lr = auto"
    memory = "1 copy of v + 2 step sizes, per block inside a sum over blocks; no tape of the inner iterations"
    plan = StochasticImplicit(o["inner"], o["lin"], True, steps, lr, Q, alpha)
    return replace(choice, unbiased=False, cost=cost, memory=memory, note=note, plan=plan)


_NAMES = {InnerSVRG: "SVRG", InnerLSVRG: "L-SVRG", InnerSAGA: "SAGA"}


def _stochastic_borep(choice: EstimatorChoice, inner_binder: str) -> EstimatorChoice:
    """The choice of a ``borep`` binder whose inner problem has the minibatched sum ``inner_binder``:
    SGD lower updates and stocBiO's estimate at the tracked y (:class:`vrlang.estimators.borep.StochasticBoRep`)."""
    p = choice.plan
    exact = ("differences from the paper: exact lower-level gradients and Hessian-vector products (the sums inside "
             "the argmin are full; minibatch one for stochastic updates and HVPs), the refinement is the inner solver")
    stoch = (f"the lower level is the minibatched sum `{inner_binder}`: each update is {p.steps} SGD steps (a fresh "
             f"minibatch of `{inner_binder}` each) and the Neumann series takes independent minibatch HVPs with a "
             f"minibatch cross term (stocBiO's summed series: unbiased for the {p.iters}-term truncated "
             f"hypergradient given y); differences from the paper: the refinement is the inner solver (exact sums)")
    note = choice.note.replace(exact, stoch)  # the note of BoRepDecision.apply
    note = note.replace(f"by {p.steps} gradient steps", f"by {p.steps} SGD steps").replace(
        "1/L (power iteration at the refined start)",
        f"1/L, L the largest top eigenvalue of the minibatch Hessian over {AUTO_DRAWS} draws at the refined start")
    cost = (f"per outer step: {p.iters - 1} minibatch HVPs (Neumann, run twice: once on a zero vector in the forward "
            f"pass) + 1 minibatch mixed second derivative + the gradient of f; every {p.period}th step also "
            f"{p.steps} minibatch gradients of g; once: the refinement"
            + (f" + {AUTO_DRAWS * POWER_ITERS} minibatch HVPs for lr = auto" if p.lr is None else ""))
    plan = StochasticBoRep(p.inner, p.period, p.steps, p.lr, p.iters, p.alpha)
    return replace(choice, cost=cost, note=note, plan=plan)


def _inner_cost(inner) -> str:
    if isinstance(inner, LBFGS):
        return f"<= {inner.steps} L-BFGS steps (1 gradient each + line-search evaluations)"
    if isinstance(inner, MINIBATCH_SOLVERS):
        auto = "" if inner.lr is not None else f" + {AUTO_DRAWS * POWER_ITERS} minibatch HVPs for lr = auto"
        if isinstance(inner, InnerSVRG):
            snaps = -(-inner.steps // max(1, inner.epoch))
            return (f"{2 * inner.steps} minibatch gradients (batch {inner.batch}) + {snaps} full gradients "
                    f"(snapshots){auto}")
        if isinstance(inner, InnerLSVRG):
            return (f"{2 * inner.steps} minibatch gradients (batch {inner.batch}) + {inner.steps * inner.p:g} full "
                    f"gradients in expectation (snapshots, probability p = {inner.p:g} per step) + 1 at the "
                    f"start{auto}")
        return (f"{inner.steps * inner.batch} item gradients ({inner.steps} steps x batch {inner.batch}) + n item "
                f"gradients (the table, ~1 full gradient){auto}")
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


def _const_or_number(spec: Spec, key: str, default, *, allow_auto=False, zero_ok=False):
    """A number, ``auto``, or the name of a scalar const (checked by :func:`check_decisions`; traced)."""
    v = spec.args.get(key, default)
    if isinstance(v, Spec) and not v.args and v.name != "auto":
        return v.name
    if zero_ok and not isinstance(v, bool) and v == 0:
        return 0.0
    return number(spec, key, default, allow_auto=allow_auto)


def _value_function_refused(binder, spec):
    ops = _ops(binder)
    if ops & {"min", "max"}:
        op = sorted(ops & {"min", "max"})[0]
        raise VrEstimatorError("E303", f"`{spec.name}` does not apply to `{op}(...)` (`{binder.name}`): it "
                               "estimates the hypergradient through an argmin/argmax; the gradient of a value "
                               "function is already first order (Danskin's theorem)", spec.span,
                               f"estimate {binder.name} by implicit (a value function needs no linear solve)")


class PenaltyDecision(Transform):
    kind, names = "decision", ("penalty",)

    def apply(self, binder, spec, sizes):
        check_args(spec, {"sigma": "", "growth": "", "lr": "", "steps": "", "inner": "", "decay": ""}, "estimator")
        _value_function_refused(binder, spec)
        sigma = _const_or_number(spec, "sigma", 100.0)
        decay = _decay(spec)
        growth = _const_or_number(spec, "growth", F2SA_GROWTH if spec.args.get("decay") is True else 0.0,
                                  zero_ok=True)
        lr = _const_or_number(spec, "lr", Spec("auto", {}), allow_auto=True)
        steps = 0 if spec.args.get("steps") == 0 else number(spec, "steps", 1, integer=True)
        inner, inner_text = inner_solver(spec.args.get("inner", DEFAULT_INNER), spec)
        show = (lambda v: f"the const `{v}`" if isinstance(v, str) else f"{v:g}")
        sched = (f"sigma_t = {show(sigma)}" + ("" if growth == 0 else f" * (1 + t)^{show(growth)}")
                 + " (t: the block's step count)")
        lr_text = ("1/L of the inner objective (z) and of f/sigma + g (y), by power iteration at the initial "
                   f"solutions, the largest over {AUTO_DRAWS} minibatch draws" if lr == "auto" else show(lr))
        note = (f"BIASED: O(1/sigma) (Kwon et al. 2023, Lemma 3.1, mu-strongly convex inner problem): fully "
                f"first-order value-function penalty (F2SA): grad = d_x f(x, y) + sigma (d_x g(x, y) - d_x g(x, z)) "
                f"with y tracking argmin f/sigma + g and z tracking argmin g (binder state, one pair per block "
                f"inside a sum); f is the body of the argmin's home (the innermost enclosing binder it uses, or "
                f"the objective); {sched}; per step {steps} gradient step(s) on z and y with lr = {lr_text}"
                + ("" if not decay else f", decreasing as (1 + t)^-{show(decay) if isinstance(decay, str) else f'{decay:.4g}'} (F2SA's step-size design"
                   + (": tracking steps ~ t^-4/7, sigma ~ t^1/7; the paper's x step ~ t^-5/7 is the outer "
                      "solver's: solve by sgd(lr, decay = 0.714)" if spec.args.get("decay") is True else "")
                   + "; same cost and same O(1/sigma_t) bias per step, no noise floor of the tracked y, z)")
                + f"; "
                f"minibatched sums inside the inner and outer objectives give unbiased estimates of the penalty "
                f"gradient; initial state and exact evaluations (the logged objective, Program.grad): y and z "
                f"solved by {inner_text}, the true objective's value with the penalty gradient at sigma_0")
        cost = (f"per outer step: {steps} x (1 gradient of g at z + 1 gradient of f/sigma + g at y) for the tracking "
                "+ 1 gradient of f and 2 of g for the x-gradient; no Hessian-vector products"
                + (f"; lr = auto: {2 * AUTO_DRAWS * POWER_ITERS} HVPs once" if lr == "auto" else "")
                + "; exact evaluations: 2 inner solves")
        memory = "2 copies of v (y, z) + a step counter and 2 step sizes, per block inside a sum over blocks"
        plan = Penalty(inner, sigma, growth, None if lr == "auto" else lr, steps, decay)
        return EstimatorChoice(binder.name, binder.kind, spec, False, cost, memory, note, family="full", plan=plan)


def _decay(spec: Spec) -> float | str:
    """``decay`` of ``penalty``: ``true`` (F2SA's 4/7), ``false``/absent (0: constant steps), a number in
    [0, 1] or the name of a real scalar const (traced; checked by :func:`check_decisions`)."""
    v = spec.args.get("decay", False)
    if v is True:
        return F2SA_DECAY
    if v is False or (not isinstance(v, Spec) and v == 0):
        return 0.0
    if isinstance(v, Spec) and not v.args and v.name != "auto":
        return v.name
    return number(spec, "decay", 0.0, upper=1.0)


class BoRepDecision(Transform):
    kind, names = "decision", ("borep",)

    def apply(self, binder, spec, sizes):
        check_args(spec, {"period": "", "steps": "", "lr": "", "iters": "", "alpha": "", "inner": ""}, "estimator")
        _value_function_refused(binder, spec)
        period = number(spec, "period", 5, integer=True)
        steps = number(spec, "steps", 10, integer=True)
        iters = number(spec, "iters", 20, integer=True)
        lr = number(spec, "lr", Spec("auto", {}), allow_auto=True)
        alpha = number(spec, "alpha", 1.0) if "alpha" in spec.args else None
        inner, inner_text = inner_solver(spec.args.get("inner", DEFAULT_INNER), spec)
        lr_text = "1/L (power iteration at the refined start)" if lr == "auto" else f"{lr:g}"
        note = (f"BIASED: BO-REP (Hao, Gong & Liu, ICLR 2024): the lower variable y is refined once at the start "
                f"({inner_text}), then updated only every {period} outer steps by {steps} gradient steps "
                f"(lr = {lr_text}, warm-started; per block inside a sum over blocks); the hypergradient is implicit "
                f"differentiation at the tracked y with a {iters}-term Neumann series (alpha = "
                f"{'the lower step' if alpha is None else f'{alpha:g}'}): biased by the stale, inexact y and the "
                f"truncation ((1 - alpha mu)^{iters} relative); the upper variable moves by normalised momentum: "
                f"solve by normalized(lr, beta); differences from the paper: exact lower-level gradients and "
                f"Hessian-vector products (the sums inside the argmin are full; minibatch one for stochastic "
                f"updates and HVPs), the refinement is the inner "
                f"solver; exact evaluations solve the inner problem from `= init`")
        cost = (f"per outer step: {iters - 1} HVPs (Neumann) + gradients of f and g at y; every {period}th step "
                f"also {steps} gradients of g (amortised {steps / period:g} per step); once: the refinement"
                + (f" + {POWER_ITERS} HVPs for lr = auto" if lr == "auto" else ""))
        memory = "1 copy of v + a step counter and the lower step size, per block inside a sum over blocks"
        plan = BoRep(inner, period, steps, None if lr == "auto" else lr, iters, alpha)
        return EstimatorChoice(binder.name, binder.kind, spec, False, cost, memory, note, family="full", plan=plan)


def refuse_stochastic_inner(cp, choices: dict) -> None:
    """E391 for a sampled estimator (minibatched sum, sampled expectation) inside a decision binder's body,
    unless the binder is estimated by ``penalty`` (first order: sampled inner sums are unbiased there) or
    the sampled estimator is a minibatched sum and the binder is estimated by ``implicit(linsolve = neumann)``
    or ``borep``: that binder's choice is then replaced in ``choices`` by stocBiO (:func:`_stochastic_implicit`)
    or stochastic BO-REP (:func:`_stochastic_borep`).  E302 for
    ``steps``/``lr`` of ``implicit`` without a minibatched inner sum (they apply only there)."""
    from vrlang.estimators.expectation import EnumEstimate

    def sampled(c) -> bool:
        if c.kind == "index":
            return c.sampler is not None
        if c.kind == "random":
            return c.plan is not None and not isinstance(c.plan, EnumEstimate)
        return False

    stochastic = {}
    for node in N.walk(cp.objective):
        if not isinstance(node, N.Decision):
            continue
        choice = choices.get(node.binder)
        if isinstance(getattr(choice, "plan", None), Penalty):
            continue
        for inner in N.walk(node.body):
            if isinstance(inner, (N.Sum, N.Expect)) and inner.binder in choices and sampled(choices[inner.binder]):
                c = choices[inner.binder]
                implicit = isinstance(getattr(choice, "plan", None), Implicit)
                if implicit and c.kind == "index" and choice.options["stochastic"]["linsolve"] == "neumann":
                    stochastic.setdefault(node.binder, inner.binder)
                    continue
                if isinstance(getattr(choice, "plan", None), BoRep) and c.kind == "index":
                    stochastic.setdefault(node.binder, inner.binder)  # SGD lower updates, minibatch HVPs
                    continue
                what = "minibatched sum" if c.kind == "index" else "sampled expectation"
                span = c.spec.span or inner.span
                fix = (f"estimate {node.binder} by implicit(linsolve = neumann, iters = 50) (stocBiO: minibatch "
                       f"Hessian-vector products), or estimate {node.binder} by penalty (first order), or estimate "
                       f"{inner.binder} by full (the inner problem is then solved exactly)"
                       if c.kind == "index" else
                       f"estimate {inner.binder} by enum if its support is finite, or move the expectation out of "
                       f"the {node.op}, or estimate {node.binder} by penalty")
                avail = ("`penalty`, `borep` and `implicit(linsolve = neumann)`" if c.kind == "index" else
                         "`penalty`")
                raise VrEstimatorError("E391", f"the {what} `{inner.binder}` ({c.spec}) is inside the inner problem "
                                       f"of {node.op}(`{node.binder}` ...): stochastic inner problems of this kind "
                                       f"are available with {avail} only in this version", span, fix)
    for b, c in choices.items():
        if isinstance(c.plan, Implicit) and b not in stochastic:
            for arg in ("steps", "lr"):
                if arg in c.spec.args:
                    raise VrEstimatorError("E302", f"`{arg}` of `implicit` applies only when the inner problem of "
                                           f"`{b}` has a minibatched sum (the minibatch inner steps of stocBiO)",
                                           c.spec.arg_spans.get(arg) or c.spec.span,
                                           "the exact inner solve is set by `inner = sgd(steps = k)` or lbfgs")
    for b, inner_binder in stochastic.items():
        stoch = _stochastic_borep if isinstance(choices[b].plan, BoRep) else _stochastic_implicit
        choices[b] = stoch(choices[b], inner_binder)


_STATEFUL_ONLY = (Penalty, BoRep, StochasticImplicit)


def check_inner_saga(cp, choices: dict) -> None:
    """E391 unless the inner problem of an ``implicit(inner = saga(...))`` binder has exactly one outermost
    finite sum (SAGA's items; its table is per item); names that sum's size in the choice's memory text."""
    for node in (n for r in (cp.objective, *cp.reports.values()) for n in N.walk(r)):
        c = choices.get(node.binder) if isinstance(node, N.Decision) else None
        if c is None or not isinstance(getattr(c.plan, "inner", None), InnerSAGA):
            continue
        sums = N.outermost_sums(node.body)
        if len(sums) != 1:
            found = (f"{len(sums)} sums ({', '.join(f'`{s.binder}`' for s in sums)})" if sums else "no finite sum")
            raise VrEstimatorError("E391", f"inner = saga samples the items of one finite sum, but the inner problem "
                                   f"of `{node.binder}` has {found} outside any other sum",
                                   c.spec.arg_spans.get("inner") or c.spec.span,
                                   "use inner = svrg(steps = k) or lsvrg(steps = k) (each sum drawn on its own "
                                   "minibatch), or write the inner problem as one sum")
        n = f"{sums[0].hi}" if sums[0].lo == 0 else f"({sums[0].hi} - {sums[0].lo})"
        table = f"{n} x dim v numbers (the items of `{sums[0].binder}`)"
        choices[node.binder] = replace(c, memory=c.memory.replace("n x dim v numbers (n the items of the inner sum)",
                                                                  table))


def check_decisions(cp, choices: dict) -> None:
    """Every compile-time check of the decision binders' estimators (E391, E393, E302)."""
    refuse_stochastic_inner(cp, choices)
    check_inner_saga(cp, choices)
    methods = {b: c for b, c in choices.items() if isinstance(c.plan, _STATEFUL_ONLY)}
    if not methods:
        return
    roots = [cp.objective, *cp.reports.values()]
    for b, c in methods.items():
        name = c.spec.name
        for node in (n for r in roots for n in N.walk(r)):
            if isinstance(node, N.Decision) and node.binder != b and any(
                    isinstance(m, N.Decision) and m.binder == b for m in N.walk(node.body)):
                raise VrEstimatorError("E391", f"`{b}` is estimated by {name} inside the inner problem of "
                                       f"`{node.binder}`: nested {name} is not available in this version",
                                       c.spec.span, f"estimate {b} by implicit")
        for arg in ("sigma", "growth", "lr", "decay"):
            v = getattr(c.plan, arg, None)
            if isinstance(v, str):
                const = cp.consts.get(v)
                if const is None or const.type.base != "real" or const.type.rank != 0:
                    raise VrEstimatorError("E302", f"`{arg}` of `{name}` must be a number or the name of a real "
                                           f"scalar const, got `{v}`", c.spec.arg_spans.get(arg) or c.spec.span,
                                           f"declare `const {v}: real = ...`" if const is None else None)
    for root in roots:  # one penalty per home: its term changes the home's body
        seen = {}
        for d, home in homes.homes(root).items():
            if isinstance(getattr(choices.get(d), "plan", None), Penalty):
                key = id(home)
                if key in seen:
                    where = "the objective" if home is None else f"the body of `{home.binder}`"
                    raise VrEstimatorError("E391", f"`{seen[key]}` and `{d}` are both estimated by penalty and live "
                                           f"in {where}: one penalty argmin per body in this version",
                                           choices[d].spec.span, f"estimate {d} by implicit")
                seen[key] = d
    others = sorted({c.spec.name for c in choices.values() if c.kind == "index" and c.family not in ("full", "sgd")})
    if others:
        b = next(iter(methods))
        raise VrEstimatorError("E393", f"`{b}` ({methods[b].spec.name}) keeps binder state, which is threaded through "
                               f"the full and sgd estimators of sums only; combining it with {', '.join(others)} is "
                               "not supported yet", methods[b].spec.span,
                               "estimate the sums by full or sgd(batch = b)")


def check_solver(choices: dict, solver) -> None:
    """E503: ``borep`` moves the upper variable by normalised momentum, i.e. the solver ``normalized``."""
    for b, c in choices.items():
        if isinstance(c.plan, BoRep) and solver.name != "normalized":
            raise VrEstimatorError("E503", f"`{b}` is estimated by borep, whose upper-level step is normalised "
                                   f"momentum, but the solver is `{solver.spec}`", solver.spec.span or c.spec.span,
                                   "solve by normalized(lr = 0.01, beta = 0.9, steps = 500)")


__all__ = ["BoRepDecision", "ImplicitDecision", "PenaltyDecision", "UnrollDecision", "check_decisions",
           "check_solver", "inner_solver", "refuse_stochastic_inner"]
