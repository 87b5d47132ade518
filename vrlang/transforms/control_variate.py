r"""The ``cv`` estimator of a random-choice binder: a control variate with a known mean.

``estimate z by cv(g, mean = m, coef = c | optimal | optimal(loo = false), inner = E)``
estimates :math:`E_q[f] = E_q[f - c (g - m)]` with the inner estimator ``E`` (``reparam``,
``score(...)`` or ``importance(...)``; default: the binder's default estimator), see
:mod:`vrlang.estimators.control_variate`.  ``g`` may also be written ``g = expr``.

:class:`ControlVariate` checks the spec (the inner estimator, the coefficient rule, the
number of samples it needs); :func:`resolve` runs after the transforms, on the whole
program, and type-checks the expressions ``g``, ``mean`` and a fixed ``coef`` in the
binder's scope (the binder variable, params, data, consts, lets), as
:func:`vrlang.transforms.finite_sum.resolve` does for ``weights(expr)``:

* each must be a real (or int) scalar, without binders of its own (E315);
* ``mean`` and ``coef`` must not depend on the binder (E315, pointing at them): ``mean``
  is the *known* mean :math:`E_q[g]`, a function of the params, data and consts;
* ``coef = optimal(loo = false)`` (the coefficient from the same samples) is flagged
  biased: ``explain`` says so and :func:`resolve` returns warning W303.

An array-valued body gets one coefficient per component (``g`` stays a scalar: one
control variate shared by the components -- several expectations from one sample).
The mean is not checked numerically: the estimate is unbiased when ``mean`` is the exact
mean of ``g`` under the binder's distribution (for every value of the params).
"""

from __future__ import annotations

from vrlang.check.program import BinderInfo
from vrlang.check.structure import free
from vrlang.errors import VrEstimatorError, VrWarning
from vrlang.estimators.control_variate import CVEstimate
from vrlang.estimators.spec import Spec, check_args, unparse
from vrlang.ir import nodes as N
from vrlang.syntax import ast
from vrlang.transforms.base import EstimatorChoice, Transform
from vrlang.transforms.expectation import Importance, Reparam, Score, default_spec

INNER = ("reparam", "score", "importance")
HELP = "e.g. cv(z, mean = m, coef = optimal, inner = score(samples = 8, baseline = loo))"


def _coef_rule(spec: Spec):
    """``(rule, expr)``: ``("loo", None)``, ``("same", None)`` or ``("fixed", expression)``."""
    c = spec.args.get("coef")
    span = spec.arg_spans.get("coef") or spec.span
    if c is None or (isinstance(c, ast.Name) and c.id == "optimal"):
        return "loo", None
    if isinstance(c, ast.Call) and c.func == "optimal":
        if c.args or any(k.name != "loo" for k in c.kwargs):
            raise VrEstimatorError("E314", "`optimal` takes one argument, `loo = true | false`", c.span,
                                   "coef = optimal (leave-one-out, unbiased) or coef = optimal(loo = false) "
                                   "(same samples, biased)")
        loo = c.kwargs[0].value if c.kwargs else ast.Name("true")
        if not (isinstance(loo, ast.Name) and loo.id in ("true", "false")):
            raise VrEstimatorError("E314", "`loo` of `optimal` must be true or false", getattr(loo, "span", span))
        return ("loo" if loo.id == "true" else "same"), None
    return "fixed", c


class ControlVariate(Transform):
    kind, names = "random", ("cv",)

    def __init__(self, consts: dict | None = None):
        self.consts = consts or {}

    def apply(self, binder, spec, sizes):
        check_args(spec, {"g": "", "mean": "", "coef": "", "inner": ""}, "estimator")
        b = binder.name
        if "g" not in spec.args:
            raise VrEstimatorError("E314", f"`cv` needs the control variate `g`: an expression of `{b}` whose mean "
                                   f"under the distribution of `{b}` is known", spec.span, HELP)
        if "mean" not in spec.args:
            raise VrEstimatorError("E314", f"`cv` needs `mean = m`, the exact mean of g under the distribution of "
                                   f"`{b}` (a function of the params, data and consts)", spec.span, HELP)
        inner_spec = spec.args.get("inner", default_spec(binder))
        ispan = spec.arg_spans.get("inner") or spec.span
        if not isinstance(inner_spec, Spec) or inner_spec.name not in INNER:
            name = inner_spec.name if isinstance(inner_spec, Spec) else (
                inner_spec.func if isinstance(inner_spec, ast.Call) else unparse(inner_spec)
                if isinstance(inner_spec, ast.Expr) else str(inner_spec))
            why = {"enum": "`enum` is exact already (no variance to reduce)",
                   "cv": "control variates do not nest; give one g"}.get(name, f"`{name}` is not one of them")
            raise VrEstimatorError("E314", f"`cv` wraps reparam, score or importance: {why}", ispan,
                                   "inner = reparam(samples = k), score(samples = k, baseline = ...) or "
                                   "importance(proposal = D, samples = k)")
        transform = {"reparam": Reparam(), "score": Score(), "importance": Importance(self.consts)}[inner_spec.name]
        inner = transform.apply(binder, inner_spec, sizes)
        k = inner.plan.samples
        rule, coef_expr = _coef_rule(spec)
        cspan = spec.arg_spans.get("coef") or spec.span
        if rule == "loo" and k < 3:
            raise VrEstimatorError("E314", f"`coef = optimal` needs samples >= 3: the coefficient of sample k is "
                                   f"Cov(f, g)/Var(g) over the *other* samples (leave-one-out, so that it stays "
                                   f"unbiased), at least two of them; the inner estimator `{inner_spec}` draws {k}",
                                   cspan, f"give the inner estimator more samples, e.g. inner = "
                                   f"{inner_spec.name}(samples = 4{_rest(inner_spec)}), or a fixed coef = c")
        if rule == "same" and k < 2:
            raise VrEstimatorError("E314", f"`coef = optimal(loo = false)` needs samples >= 2 (a covariance); "
                                   f"`{inner_spec}` draws {k}", cspan, "give the inner estimator more samples")
        ratio = "Cov(w f, w (g - m))/Var(w (g - m))" if inner_spec.name == "importance" else "Cov(f, g)/Var(g)"
        coef_text = {"loo": f"c_k = {ratio} over the other k-1 samples (leave-one-out: unbiased; the variance about "
                            "the known mean)",
                     "same": f"BIASED: c = {ratio} over the same {k} samples (c is correlated with each g(z_k), "
                             f"so E[c (g - m)] != 0: a bias that vanishes as the samples grow; use coef = optimal)",
                     "fixed": f"fixed c = {unparse(coef_expr) if coef_expr is not None else ''} (not differentiated)"
                     }[rule]
        weighted = "w_k " if inner_spec.name == "importance" else ""
        note = (f"control variate: mean_k {weighted}[f(z_k) - c_k (g(z_k) - m)] with g = {unparse(spec.args['g'])}, "
                f"m = {unparse(spec.args['mean'])}; {coef_text}; inner estimator {inner_spec}: {inner.note}")
        unbiased = inner.unbiased and rule != "same"
        opts = {"cv": {"g": spec.args["g"], "mean": spec.args["mean"], "coef": coef_expr, "rule": rule,
                       "spans": {n: _expr_span(spec, n) for n in ("g", "mean", "coef")}}}
        return EstimatorChoice(b, binder.kind, spec, unbiased, f"{inner.cost} + {k} evaluations of g",
                               inner.memory, note, options=opts, plan=CVEstimate(inner.plan, rule))


def _rest(inner: Spec) -> str:
    rest = ", ".join(f"{a} = {v if not isinstance(v, ast.Expr) else unparse(v)}"
                     for a, v in inner.args.items() if a != "samples")
    return f", {rest}" if rest else ""


def _expr_span(spec: Spec, name: str):
    v = spec.args.get(name)
    return getattr(v, "span", None) or spec.arg_spans.get(name) or spec.span


# ------------------------------------------------------------------ program-level pass


def resolve(cp, program_ast, choices: dict) -> list[VrWarning]:
    """Type-check ``g``, ``mean`` and a fixed ``coef`` of every ``cv``; build its plan. Returns W303 warnings."""
    warnings: list[VrWarning] = []
    checker = None
    for b, c in choices.items():
        opts = c.options.get("cv") if c.kind == "random" else None
        if opts is None:
            continue
        if checker is None:
            from vrlang.transforms.finite_sum import _declarations
            checker = _declarations(program_ast)
        info = cp.binders[b]
        spans = opts["spans"]
        g = _check_expr(cp, checker, info, "g", opts["g"], spans["g"], may_use_binder=True)
        m = _check_expr(cp, checker, info, "mean", opts["mean"], spans["mean"], may_use_binder=False)
        coef = None
        if opts["rule"] == "fixed":
            coef = _check_expr(cp, checker, info, "coef", opts["coef"], spans["coef"], may_use_binder=False)
        c.plan = CVEstimate(c.plan.inner, opts["rule"], g, m, coef)
        if opts["rule"] == "same":
            warnings.append(VrWarning(
                "W303", f"the control-variate coefficient of `{b}` is estimated on the same samples it corrects "
                f"(coef = optimal(loo = false)), so the estimate of `{b}` is biased (by O(1/samples))",
                spans["coef"], "use coef = optimal (leave-one-out: unbiased) or a fixed coef = c"))
    return warnings


def _check_expr(cp, checker, info: BinderInfo, what: str, expr: ast.Expr, span, may_use_binder: bool) -> N.Node:
    b = info.name
    var_type = info.nodes[0].dist.type
    before = len(checker.bound_checks)
    ir = checker._with_var(b, N.Ref(var_type, "var", b, span=info.span), expr)
    cp.bound_checks.extend(checker.bound_checks[before:])  # r[z] past an axis: checked at data time
    text = unparse(expr)
    if ir.type.rank != 0 or ir.type.base == "bool":
        raise VrEstimatorError("E315", f"`{what}` of the control variate of `{b}` must be a real scalar, but "
                               f"`{text}` is {ir.type}", span,
                               f"e.g. cv({b}, mean = ...) for a scalar `{b}`, or sum({b}) for an array")
    for n in N.walk(ir):
        if isinstance(n, N.BINDER_NODES):
            raise VrEstimatorError("E315", f"`{what}` of the control variate of `{b}` must be a plain expression, but "
                                   f"`{text}` contains the binder `{n.binder}`", span,
                                   "write it without sum/mean/E/argmin binders (sum(v) and mean(v) of an array are "
                                   "fine)")
    _, variables = free(ir)
    if not may_use_binder and b in variables:
        known = "its known mean E[g] is a function of the params, data and consts only" if what == "mean" else \
            "a fixed coefficient is a constant of the estimator"
        raise VrEstimatorError("E315", f"`{what}` of the control variate of `{b}` must not depend on `{b}`: "
                               f"{known}, but `{text}` uses `{b}`", span,
                               f"put the terms in `{b}` into g, e.g. cv(g = {b}, mean = m) with m = E[{b}]"
                               if what == "mean" else "use coef = optimal to estimate it from the samples")
    return ir
