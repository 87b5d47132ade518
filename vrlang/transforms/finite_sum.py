r"""Finite-index binders (``sum``/``mean``): ``full``, ``sgd``, ``svrg``, ``lsvrg``, ``saga``,
``sarah``, ``spider``, ``page``, ``storm``.

Each transform checks the spec's arguments and records, for ``explain``, the bias status,
the cost per step in component gradients and the memory; ``options`` carries the numeric
hyperparameters to :meth:`vrlang.program.Program._estimator`, which resolves the defaults
that depend on the data size (``None`` here) and builds the runtime estimator.

Every sampled estimator takes ``sampling = uniform | lipschitz | weights(expr)``
(optionally ``lipschitz(mix = θ)``, ``weights(expr, mix = θ)``): the index sampler of
:mod:`vrlang.estimators.sampling` -- uniform, or importance sampling with
:math:`p_i = (1-θ) w_i / \sum_l w_l + θ / n` (θ = 0.1 by default) and weights
:math:`1/(b p_i)`, unbiased for every :math:`p` with :math:`p_i > 0`.

:func:`resolve` runs after the transforms, on the whole program: it type-checks each
``weights(expr)`` in the binder's scope (the binder variable an int index; data and
consts visible; params refused, since the weights are computed once per solve from the
data), detects the generalised-linear-model structure of each sum
(:mod:`vrlang.check.structure`) -- required by ``sampling = lipschitz``, whose weights are
the per-item smoothness constants -- and switches SAGA on a GLM body to its scalar table and
SVRG/L-SVRG to their scalar-derivative form.
"""

from __future__ import annotations

from vrlang.check.program import BinderInfo
from vrlang.check.structure import GLM, free, glm_structure
from vrlang.errors import VrEstimatorError
from vrlang.estimators.sampling import DEFAULT_MIX, ImportanceSampler, UniformSampler
from vrlang.estimators.spec import Spec, _value, check_args, number, unparse
from vrlang.ir import nodes as N
from vrlang.ir.types import INT
from vrlang.syntax import ast
from vrlang.transforms.base import EstimatorChoice, Transform

SAMPLING_HELP = "sampling = uniform, lipschitz or weights(expr), e.g. weights(norm(X[i]))"


def _mix(spec: Spec) -> float:
    theta = number(spec, "mix", DEFAULT_MIX, positive=False, upper=1)
    if theta < 0:
        raise VrEstimatorError("E302", f"`mix` of `{spec.name}` must be in [0, 1], got {theta:g}",
                               spec.arg_spans.get("mix") or spec.span)
    return theta


def _sampling(spec: Spec, b: int = 1):
    """``(sampler, description, options)`` for the ``sampling`` argument of a finite-sum estimator."""
    s = spec.args.get("sampling")
    span = spec.arg_spans.get("sampling") or spec.span
    if s is None or (isinstance(s, Spec) and s.name == "uniform" and not s.args):
        return UniformSampler(b), f"uniform minibatch of {b}, reweighted n/b", {"kind": "uniform"}
    if isinstance(s, Spec) and s.name == "lipschitz":
        check_args(s, {"mix": ""}, "sampling")
        theta = _mix(s)
        return (ImportanceSampler(b, source="L_i", mix=theta),
                f"importance sampling, minibatch of {b} drawn with p_i = {1 - theta:g} L_i/sum(L) + {theta:g}/n, "
                "L_i the per-item smoothness constant (GLM), reweighted 1/(b p_i)",
                {"kind": "lipschitz", "mix": theta, "span": span})
    if isinstance(s, ast.Call) and s.func == "weights":
        if len(s.args) != 1:
            raise VrEstimatorError("E395", f"`weights` takes one expression of the binder variable, got {len(s.args)}",
                                   s.span, "e.g. sampling = weights(norm(X[i]))")
        kw = Spec("weights", {k.name: _value(k.value) for k in s.kwargs}, s.span, {k.name: k.span for k in s.kwargs})
        check_args(kw, {"mix": ""}, "sampling")
        theta = _mix(kw)
        src = unparse(s.args[0])
        return (ImportanceSampler(b, source=src, mix=theta),
                f"importance sampling, minibatch of {b} drawn with p_i = {1 - theta:g} w_i/sum(w) + {theta:g}/n, "
                f"w_i = {src}, reweighted 1/(b p_i)",
                {"kind": "weights", "mix": theta, "expr": s.args[0], "span": s.args[0].span or span})
    if isinstance(s, Spec) and s.name == "weights":
        raise VrEstimatorError("E395", "`weights` needs an expression of the binder variable", span,
                               "e.g. sampling = weights(norm(X[i]))")
    name = s.name if isinstance(s, Spec) else (s.func if isinstance(s, ast.Call) else unparse(s))
    raise VrEstimatorError("E395", f"unknown sampling `{name}`", span, f"use {SAMPLING_HELP}")


def _with_sampling(note: str, sampling_text: str, opts: dict) -> str:
    return note if opts["kind"] == "uniform" else f"{note}; {sampling_text}"


def _annotate(sampling_text: str, opts: dict, choice: EstimatorChoice) -> EstimatorChoice:
    choice.note = _with_sampling(choice.note, sampling_text, opts)
    return choice


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
        sampler, text, opts = _sampling(spec, b)
        return EstimatorChoice(binder.name, binder.kind, spec, True, f"{b} per step", "none",
                               text, sampler, "sgd", {"sampling": opts})


class SVRGSum(Transform):
    kind, names = "index", ("svrg",)

    def apply(self, binder, spec, sizes):
        check_args(spec, {"batch": "", "sampling": "", "epoch": "", "glm": ""}, "estimator")
        b = number(spec, "batch", 1, integer=True)
        sampler, text, opts = _sampling(spec, b)
        n = sizes[binder.name]
        m = spec.args.get("epoch")
        m = number(spec, "epoch", 1, integer=True) if m is not None else None
        return EstimatorChoice(binder.name, binder.kind, spec, True,
                               f"2*{b} per step + {n} per snapshot (every {m if m else 'n/b'} steps)",
                               "one copy of the params and of the full gradient",
                               _with_sampling("snapshot + full-gradient control variate (Johnson & Zhang 2013)",
                                              text, opts),
                               sampler, "svrg", {"epoch": m, "sampling": opts, "glm": _glm_flag(spec)})


RECURSIVE_NOTE = "variance-reduced, biased (recursive)"


def _batch(spec, binder):
    """``(b, sampler, sampling description, sampling options)``."""
    b = number(spec, "batch", 1, integer=True)
    return (b,) + _sampling(spec, b)


def _paren(size: str) -> str:
    return f"({size})" if " " in size else size


def _optional(spec, key, **kw):
    return number(spec, key, None, **kw) if spec.args.get(key) is not None else None


class LSVRGSum(Transform):
    kind, names = "index", ("lsvrg",)

    def apply(self, binder, spec, sizes):
        check_args(spec, {"batch": "", "sampling": "", "p": "", "glm": ""}, "estimator")
        b, sampler, stext, sopts = _batch(spec, binder)
        n = sizes[binder.name]
        p = _optional(spec, "p", upper=1)
        ptxt = f"{p:g}" if p is not None else f"{b}/{_paren(n)} (default)"
        return _annotate(stext, sopts, EstimatorChoice(binder.name, binder.kind, spec, True,
                               f"2*{b} per step + {n} with probability p = {ptxt}",
                               "one copy of the params and of the full gradient",
                               "loopless SVRG: snapshot refreshed with probability p each step "
                               "(Kovalev, Horvath & Richtarik 2020)",
                               sampler, "lsvrg", {"sampling": sopts, "p": p, "glm": _glm_flag(spec)}))


def _glm_flag(spec: Spec) -> bool:
    """``glm = true | false`` (default true): use the GLM form of the estimator when the body is a GLM."""
    glm = spec.args.get("glm", True)
    if not isinstance(glm, bool):
        what = ("keeps the table of gradients even for a GLM body" if spec.name == "saga" else
                "keeps the generic estimate (two minibatch gradients) even for a GLM body")
        raise VrEstimatorError("E302", f"`glm` of `{spec.name}` must be true or false, got `{glm}`",
                               spec.arg_spans.get("glm") or spec.span, f"glm = false {what}")
    return glm


class SAGASum(Transform):
    kind, names = "index", ("saga",)

    def apply(self, binder, spec, sizes):
        check_args(spec, {"batch": "", "sampling": "", "glm": ""}, "estimator")
        b, sampler, stext, sopts = _batch(spec, binder)
        n = sizes[binder.name]
        glm = _glm_flag(spec)
        return _annotate(stext, sopts, EstimatorChoice(binder.name, binder.kind, spec, True,
                               f"{b} per step (+ {n} once, to fill the table)",
                               f"a table of {n} per-item gradients ({n} copies of the params) and their mean",
                               "table of the last per-item gradients as control variate "
                               "(Defazio, Bach & Lacoste-Julien 2014)",
                               sampler, "saga", {"sampling": sopts, "glm": glm}))


class SARAHSum(Transform):
    kind, names = "index", ("sarah",)

    def apply(self, binder, spec, sizes):
        check_args(spec, {"batch": "", "sampling": "", "epoch": ""}, "estimator")
        b, sampler, stext, sopts = _batch(spec, binder)
        n = sizes[binder.name]
        m = _optional(spec, "epoch", integer=True)
        return _annotate(stext, sopts, EstimatorChoice(binder.name, binder.kind, spec, False,
                               f"2*{b} per step + {n} per restart (every {m if m else 'n/b'} steps)",
                               "one copy of the params and of the last estimate",
                               f"{RECURSIVE_NOTE}: SARAH, v_t = grad F(w_t) - grad F(w_t-1) + v_t-1 on one "
                               "minibatch, restarted from the full gradient (Nguyen et al. 2017)",
                               sampler, "sarah", {"sampling": sopts, "epoch": m}))


class SPIDERSum(Transform):
    kind, names = "index", ("spider",)

    def apply(self, binder, spec, sizes):
        check_args(spec, {"batch": "", "sampling": "", "large_batch": "", "period": ""}, "estimator")
        b, sampler, stext, sopts = _batch(spec, binder)
        n = sizes[binder.name]
        big = _optional(spec, "large_batch", integer=True)
        q = _optional(spec, "period", integer=True)
        restart = f"a minibatch of {big}" if big else "the full gradient"
        return _annotate(stext, sopts, EstimatorChoice(binder.name, binder.kind, spec, False,
                               f"2*{b} per step + {big if big else n} per restart "
                               f"(every {q if q else 'n/b' if not big else 'large_batch/b'} steps)",
                               "one copy of the params and of the last estimate",
                               f"{RECURSIVE_NOTE}: SPIDER, recursive differences restarted from {restart} "
                               "(Fang et al. 2018)",
                               sampler, "spider", {"sampling": sopts, "large_batch": big, "period": q}))


class PAGESum(Transform):
    kind, names = "index", ("page",)

    def apply(self, binder, spec, sizes):
        check_args(spec, {"batch": "", "sampling": "", "p": ""}, "estimator")
        b, sampler, stext, sopts = _batch(spec, binder)
        n = sizes[binder.name]
        p = _optional(spec, "p", upper=1)
        ptxt = f"{p:g}" if p is not None else f"{b}/({b} + {n}) (default)"
        return _annotate(stext, sopts, EstimatorChoice(binder.name, binder.kind, spec, False,
                               f"{n} with probability p = {ptxt}, else 2*{b}",
                               "one copy of the params and of the last estimate",
                               f"{RECURSIVE_NOTE}: PAGE, full gradient with probability p, else the "
                               "SARAH-type recursive correction (Li et al. 2021)",
                               sampler, "page", {"sampling": sopts, "p": p}))


class STORMSum(Transform):
    kind, names = "index", ("storm",)
    DEFAULT_A = 0.1

    def apply(self, binder, spec, sizes):
        check_args(spec, {"batch": "", "sampling": "", "a": ""}, "estimator")
        b, sampler, stext, sopts = _batch(spec, binder)
        a = number(spec, "a", self.DEFAULT_A, upper=1)
        return _annotate(stext, sopts, EstimatorChoice(binder.name, binder.kind, spec, False,
                               f"2*{b} per step", "one copy of the params and of the last estimate",
                               f"{RECURSIVE_NOTE}: STORM momentum, d_t = grad F(w_t) + (1 - a)(d_t-1 - grad "
                               f"F(w_t-1)) with a = {a:g} (Cutkosky & Orabona 2019)",
                               sampler, "storm", {"sampling": sopts, "a": a}))


# ------------------------------------------------------------------ program-level pass


def resolve(cp, program_ast, choices: dict, sizes: dict) -> None:
    """Type-check ``weights(expr)``, detect GLM bodies, check ``lipschitz``, pick SAGA's GLM table.

    ``cp`` is the :class:`CheckedProgram`, ``program_ast`` its :class:`ast.Program` (the
    weights are checked by a checker that has seen the program's declarations).  Each
    finite-index choice gets ``options["structure"]`` (a :class:`GLM` or a ``NotGLM``
    with the reason); ``weights(expr)`` gets ``options["weights_ir"]`` (typed IR, a
    scalar per item); SAGA on a GLM body gets ``options["glm_table"] = True``, SVRG and
    L-SVRG ``options["glm_svrg"] = True`` (unless ``glm = false``).
    """
    checker = None
    for b, c in choices.items():
        if c.kind != "index":
            continue
        info = cp.binders[b]
        glm = glm_structure(cp.objective, info)
        c.options["structure"] = glm
        samp = c.options.get("sampling") or {"kind": "uniform"}
        if samp["kind"] != "uniform":
            ranges = {(nd.lo, nd.hi) for nd in info.nodes}
            if len(ranges) > 1:
                raise VrEstimatorError("E395", f"importance sampling of `{b}`: its sums have different ranges "
                                       f"({', '.join(f'{lo}..{hi}' for lo, hi in sorted(ranges, key=str))})",
                                       samp.get("span"), "use sampling = uniform for this binder")
        if samp["kind"] == "weights":
            if checker is None:
                checker = _declarations(program_ast)
            c.options["weights_ir"] = _check_weights(cp, checker, info, samp["expr"], samp.get("span"))
        elif samp["kind"] == "lipschitz" and not glm:
            raise VrEstimatorError(
                "E396", f"`sampling = lipschitz` needs the per-item smoothness constants L_i of `{b}`, which the "
                f"compiler derives for a generalised linear model body only (the params entering through one "
                f"margin dot(X[{b}], w)); here {glm.reason}", samp.get("span"),
                f"give the weights yourself: sampling = weights(expr), e.g. weights(sumsq(X[{b}])) for a "
                f"linear model in X[{b}], or sampling = uniform")
        if c.family == "saga" and isinstance(glm, GLM) and c.options.get("glm", True):
            c.options["glm_table"] = True
            c.memory = (f"{sizes[b]} scalars (GLM): the loss derivative at each item's margin, plus the mean "
                        "gradient (one copy of the params)")
            c.note += ("; GLM body: the table stores one scalar per item, phi'(margin), and the gradient is "
                       "rebuilt as phi'(x_i.w) x_i (Schmidt et al. 2017; Defazio et al. 2014)")
        if c.family in ("svrg", "lsvrg") and isinstance(glm, GLM) and c.options.get("glm", True):
            c.options["glm_svrg"] = True
            c.note += ("; GLM body: one minibatch draw, the control variate from the scalar loss derivatives, "
                       "X_B^T (phi'(X_B w) - phi'(X_B w~)) (Johnson & Zhang 2013; Schmidt et al. 2017)")


def _declarations(program_ast):
    """A checker that has run over the program: its global scope holds every declaration."""
    from vrlang.check.checker import Checker

    checker = Checker(program_ast.source, program_ast.file)
    checker.run(program_ast)
    return checker


def _check_weights(cp, checker, info: BinderInfo, expr: ast.Expr, span) -> N.Node:
    b = info.name
    node = info.nodes[0]
    before = len(checker.bound_checks)
    ir = checker._with_var(b, N.Ref(INT, "var", b, span=info.span), expr, (node.lo, node.hi))
    cp.bound_checks.extend(checker.bound_checks[before:])  # X[i] with i past an axis: checked at data time
    text = unparse(expr)
    if ir.type.rank != 0 or ir.type.base == "bool":
        raise VrEstimatorError("E395", f"the sampling weights of `{b}` must be one number per item, but "
                               f"`{text}` is {ir.type}", span,
                               f"e.g. weights(norm(X[{b}])) or weights(abs(y[{b}]) + 1)")
    params, _ = free(ir)
    if params:
        raise VrEstimatorError("E395", f"the sampling weights of `{b}` must not depend on the params: `{text}` uses "
                               f"{', '.join(f'`{p}`' for p in sorted(params))}; the weights are computed once per "
                               "solve, from the data", span, f"use data and consts only, e.g. weights(norm(X[{b}]))")
    for n in N.walk(ir):
        if isinstance(n, (N.Expect, N.Decision)):
            raise VrEstimatorError("E395", f"the sampling weights of `{b}` must be a deterministic function of the "
                                   f"data, but `{text}` contains the binder `{n.binder}`", span)
    return ir
