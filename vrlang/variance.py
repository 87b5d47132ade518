r"""Gradient variance of a program's estimators, per binder, with the alternatives a user could choose.

:func:`estimator_variance` (``Program.estimator_variance``, ``vrlang variance FILE``)
measures, at given params, the distribution of the program's gradient estimate
:math:`\hat g(w; \xi) = \nabla_w F(w; \xi)` over independent keys :math:`\xi`:

* for every **random-choice binder** (``E(z ~ D: ...)``): with its chosen estimator and
  with each alternative that applies -- ``reparam``, ``score`` with the unbiased baselines
  ``none``, ``loo`` and ``greedy``, ``enum`` -- plus any estimator the caller names
  (``extra``: e.g. an ``importance`` proposal).  An alternative is the same checked
  program with that binder's estimator swapped (what ``vrlang.compile(...,
  estimators={binder: spec})`` builds, without parsing and checking again); one that does
  not apply is *skipped* with the compiler's own refusal as the reason (``reparam`` on a
  discrete choice, ``enum`` on an infinite support, ...).  The other binders keep their
  estimators, so their noise is common to every row of a binder;
* for every **sampled finite-sum binder**: its minibatch gradient :math:`\nabla F(w;\xi)`
  at the chosen batch and sampling (for ``svrg``/``saga``/... the variance their control
  variate starts from: theirs depends on the snapshot/table state and is not measured),
  and, under importance sampling, the same batch drawn uniformly.

Per row: the mean gradient :math:`\bar g` (per param), the **total variance**
:math:`\operatorname{tr}\operatorname{Cov}(\hat g) = \sum_j \operatorname{Var}(\hat g_j)` over all
param coordinates and per param, its standard error, the cost per estimate (component
evaluations: body evaluations of the expectations times summands of the sums, as nested),
``variance x cost`` (the variance of an estimate averaged to a fixed budget of
evaluations: lower is more efficient), whether the estimator is unbiased (its own status,
and the bias analysis of the program with it: a sampled estimate passing through a
nonlinear operation is biased), the wall time per estimate, and -- when every random
binder of the program admits ``enum`` -- the largest :math:`|z|` of the mean against the
exact gradient, :math:`z_j = (\bar g_j - g_j)/\mathrm{SE}_j`.

Draws.  ``keys = jax.random.split(PRNGKey(key), C * m)`` (the same keys for every row),
estimate ``i`` uses ``keys[i]`` exactly as one solver step would (the program's key
scheme, docs/language.md *Randomness*).  They are evaluated in **one jitted call per
row**: ``lax.scan`` over ``C`` chunks of ``m`` keys, ``vmap`` inside a chunk, each chunk
reduced to its mean and centred sum of squares and merged (Chan, Golub & LeVeque 1979),
so memory is ``O(m P)`` for ``P`` param coordinates, never ``O(draws P)``.  ``draws`` is
rounded up to ``C * m`` (``C = 16`` chunks when ``draws >= 32``).  The standard error of
the total variance is the batch-means estimate :math:`\mathrm{sd}(T_c)/\sqrt C` over the
per-chunk unbiased variances :math:`T_c`.  Time per estimate = the wall time of the
compiled call (compilation excluded; the faster of two calls when one takes under a
second) / draws: vectorised, so amortised over the draws.  An estimate that does not
depend on the key (``enum``: zero variance) would be computed once for all the draws, so
its time is that of one jitted call instead (``time_single_call``).

Gradients are with respect to the params as declared (constrained values, as
``Program.grad`` and ``Program.gradient_estimator`` give them).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vrlang.check import bias
from vrlang.errors import VrDataError, VrError, VrEstimatorError
from vrlang.estimators.expectation import EnumEstimate, ImportanceEstimate, ReparamEstimate, ScoreEstimate
from vrlang.ir import nodes as N
from vrlang.transforms import choose

CHUNKS = 16
MAX_CHUNK_FLOATS = 1 << 24  # m * P bound on the per-chunk matrix of gradients
ARRAY_LIMIT = 1000  # to_dict() lists mean gradients of params with at most this many entries
RETIME_BELOW = 1.0  # seconds: a measuring call shorter than this is timed twice (the minimum is reported)
DEFAULT_SAMPLES = 4  # samples of the sampled alternatives when the chosen estimator has none (enum)


# ------------------------------------------------------------------------- results


@dataclass
class VarianceRow:
    """One estimator of one binder: measured, or skipped with the reason."""

    binder: str
    kind: str  # "random" | "index"
    estimator: str  # the spec, as the compiler prints it
    chosen: bool  # the program's own estimator for this binder
    status: str  # "measured" | "skipped"
    reason: str = ""  # why skipped
    note: str = ""
    unbiased: bool | None = None
    cost: int | None = None  # component evaluations per estimate
    variance: float | None = None  # trace of the covariance, all params
    variance_se: float | None = None
    param_variance: dict[str, float] = field(default_factory=dict)
    param_variance_se: dict[str, float] = field(default_factory=dict)
    mean: dict[str, np.ndarray] = field(default_factory=dict)
    time_per_estimate: float | None = None  # seconds (vectorised over the draws, amortised)
    time_single_call: bool = False  # time_per_estimate is one (non-vectorised) call: a key-independent estimate
    compile_time: float | None = None  # seconds
    bias_z: float | None = None  # max |mean - exact| / SE over coordinates (exact gradient known)
    mean_error: float | None = None  # || mean - exact ||

    @property
    def measured(self) -> bool:
        return self.status == "measured"

    @property
    def mean_norm(self) -> float | None:
        if not self.mean:
            return None
        return float(math.sqrt(sum(float(np.sum(np.square(v))) for v in self.mean.values())))

    @property
    def efficiency(self) -> float | None:
        """``variance * cost``: the variance at a fixed budget of component evaluations (lower is better)."""
        if self.variance is None or self.cost is None:
            return None
        return self.variance * self.cost

    def to_dict(self) -> dict:
        out = {"binder": self.binder, "kind": self.kind, "estimator": self.estimator, "chosen": self.chosen,
               "status": self.status}
        if not self.measured:
            out["reason"] = self.reason
            return out
        out.update({"unbiased": self.unbiased, "cost": self.cost, "variance": self.variance,
                    "variance_se": self.variance_se, "variance_x_cost": self.efficiency,
                    "param_variance": dict(self.param_variance),
                    "param_variance_se": dict(self.param_variance_se), "mean_grad_norm": self.mean_norm,
                    "mean_grad": {k: np.asarray(v).tolist() for k, v in self.mean.items() if np.size(v) <= ARRAY_LIMIT},
                    "time_per_estimate_s": self.time_per_estimate, "time_single_call": self.time_single_call,
                    "compile_time_s": self.compile_time,
                    "bias_z": self.bias_z, "mean_error": self.mean_error, "note": self.note})
        return out


@dataclass
class VarianceReport:
    """What :meth:`Program.estimator_variance` returns: one :class:`VarianceRow` per estimator."""

    program: str | None
    params: dict[str, np.ndarray]
    draws: int
    key: int
    rows: list[VarianceRow]
    exact: dict[str, np.ndarray] | None  # the exact gradient, when every random binder admits enum
    dtype: str

    def row(self, binder: str, estimator: str | None = None) -> VarianceRow:
        """The row of ``binder`` for ``estimator`` (a spec text, compared as the compiler prints it);
        without ``estimator``, the chosen one."""
        want = None if estimator is None else _canonical(estimator, binder)
        for r in self.rows:
            if r.binder == binder and (r.chosen if want is None else r.estimator == want):
                return r
        raise KeyError(f"no row for {binder} / {estimator}")

    def binder_rows(self, binder: str) -> list[VarianceRow]:
        return [r for r in self.rows if r.binder == binder]

    def to_dict(self) -> dict:
        from vrlang.report import _jsonable

        return _jsonable({
            "program": self.program, "draws": self.draws, "key": self.key, "dtype": self.dtype,
            "params": {k: np.asarray(v).tolist() for k, v in self.params.items() if np.size(v) <= ARRAY_LIMIT},
            "exact_grad": None if self.exact is None else
            {k: np.asarray(v).tolist() for k, v in self.exact.items() if np.size(v) <= ARRAY_LIMIT},
            "rows": [r.to_dict() for r in self.rows]})

    def tables(self) -> list:
        """``rich`` renderables: the main table, per-param variances (several params), skipped rows."""
        from rich import box
        from rich.table import Table
        from rich.text import Text

        measured = [r for r in self.rows if r.measured]
        title = (f"gradient variance over {self.draws} draws (key {self.key}, {self.dtype})"
                 + (f" -- {self.program}" if self.program else ""))
        t = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
        right = {"justify": "right", "no_wrap": True}
        for name, kw in (("binder", {"style": "bold", "no_wrap": True}), ("estimator", {"overflow": "fold"}),
                         ("unbiased", {"no_wrap": True}), ("cost", right), ("variance", right), ("± SE", right),
                         ("var × cost", right), ("|mean grad|", right),
                         ("max |z|" if self.exact is not None else "", right), ("µs/estimate", right)):
            if name:
                t.add_column(name, **kw)
        for r in measured:
            cells = [r.binder, r.estimator + (" *" if r.chosen else ""), "yes" if r.unbiased else "NO",
                     str(r.cost), _num(r.variance), _num(r.variance_se), _num(r.efficiency), _num(r.mean_norm)]
            if self.exact is not None:
                cells.append(_num(r.bias_z, ".2f"))
            cells.append(_num(None if r.time_per_estimate is None else 1e6 * r.time_per_estimate, ".3g")
                         + (" †" if r.time_single_call else ""))
            t.add_row(*[Text(c) for c in cells], style=None if r.unbiased else "yellow")
        out: list = [t]
        t.caption = ("* the program's estimator.  cost: component evaluations per estimate.  variance: trace of "
                     "the covariance of the gradient estimate (all params), ± its standard error.  var × cost: "
                     "the variance at a fixed budget of evaluations (lower is better)." +
                     ("  max |z|: max over coordinates of |mean - exact gradient| / SE (> 4 suggests bias)."
                      if self.exact is not None else "") +
                     "  µs/estimate: vectorised over the draws (amortised); † one jitted call (the estimate "
                     "does not depend on the key, e.g. enum, so vectorising it over keys would compute it once).")
        t.caption_justify = "left"
        if len(self.params) > 1 and measured:
            pt = Table(title="variance per param", box=box.SIMPLE_HEAD, title_justify="left")
            pt.add_column("binder", style="bold")
            pt.add_column("estimator", overflow="fold")
            for p in self.params:
                pt.add_column(p, justify="right")
            for r in measured:
                pt.add_row(Text(r.binder), Text(r.estimator + (" *" if r.chosen else "")),
                           *[Text(_num(r.param_variance.get(p))) for p in self.params])
            out.append(pt)
        notes = [r for r in measured if r.note]
        skipped = [r for r in self.rows if not r.measured]
        if notes or skipped:
            st = Table(title="notes and skipped alternatives", box=box.SIMPLE_HEAD, title_justify="left",
                       show_header=True)
            st.add_column("binder", style="bold")
            st.add_column("estimator", overflow="fold")
            st.add_column("", overflow="fold")
            for r in notes:
                st.add_row(Text(r.binder), Text(r.estimator), Text(r.note))
            for r in skipped:
                st.add_row(Text(r.binder), Text(r.estimator), Text("skipped: " + r.reason))
            out.append(st)
        return out

    def render(self, width: int = 140) -> str:
        """The tables as plain text."""
        import io

        from rich.console import Console

        buf = io.StringIO()
        con = Console(file=buf, width=width, highlight=False, color_system=None)
        for t in self.tables():
            con.print(t)
        return buf.getvalue()

    def __str__(self) -> str:
        return self.render()


def _num(x, fmt: str = ".4g") -> str:
    if x is None:
        return "-"
    if not math.isfinite(x):
        return str(x)
    return format(x, fmt)


def _canonical(text: str, binder: str) -> str:
    from vrlang.program import _spec

    return str(_spec(text, f"estimate {binder}"))


# ------------------------------------------------------------------------- variants


@dataclass
class _Candidate:
    binder: str
    kind: str
    spec: Any  # Spec
    chosen: bool
    program: Any = None  # the Program variant
    choice: Any = None
    reason: str = ""
    note: str = ""
    unbiased: bool | None = None


def _variant(prog, swaps: Mapping[str, Any]):
    """A Program identical to ``prog`` except for the estimators in ``swaps`` (binder -> Spec or EstimatorChoice).

    Raises the compiler's VrEstimatorError when an estimator does not apply."""
    from vrlang.program import Program, _refuse_unsupported, _stochastic, _symbolic_sizes

    cp = prog.checked
    choices = dict(prog.choices)
    consts = {k: c.value for k, c in cp.consts.items()}
    for b, s in swaps.items():
        choices[b] = s if not hasattr(s, "args") else choose(cp.binders[b], s, _symbolic_sizes(cp), consts)
    _refuse_unsupported(cp, choices)
    sampled = {b for b, c in choices.items() if c.sampler is not None or _stochastic(c)}
    warnings = bias.analyse(cp.objective, sampled, kinds={b: i.kind for b, i in cp.binders.items()})
    return Program(cp, choices, prog.solver, prog.externs, prog.consts, prog.x64, warnings, prog.ast)


def _flagged(variant, binder: str) -> str:
    """The bias warning (W301) of ``binder`` in ``variant``, or ''."""
    for w in variant.warnings:
        if w.code == "W301" and f"`{binder}`" in w.message:
            return w.message
    return ""


def _same_plan(a, b) -> bool:
    if type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:  # arrays in a field (an importance proposal): compare as distinct
        return False


def _default_alternatives(choice) -> list[str]:
    k = getattr(choice.plan, "samples", None) or DEFAULT_SAMPLES
    return [f"reparam(samples = {k})", f"score(samples = {k})", f"score(samples = {max(k, 2)}, baseline = loo)",
            f"score(samples = {k}, baseline = greedy)", "enum"]


def _candidates(prog, binders, alternatives: bool, extra: Mapping[str, Sequence[str]]) -> list[_Candidate]:
    from vrlang.program import _spec

    out: list[_Candidate] = []
    for b, choice in prog.choices.items():
        if binders is not None and b not in binders:
            continue
        if choice.kind == "random":
            chosen = _Candidate(b, "random", choice.spec, True, prog, choice,
                                unbiased=choice.unbiased and not _flagged(prog, b), note=_flagged(prog, b))
            rows = [chosen]
            texts = (_default_alternatives(choice) if alternatives else []) + list(extra.get(b, ()))
            for text in texts:
                try:
                    spec = _spec(text, f"estimate {b}")
                except VrError as e:
                    rows.append(_Candidate(b, "random", text, False, reason=e.message))
                    continue
                try:
                    v = _variant(prog, {b: spec})
                except VrEstimatorError as e:
                    rows.append(_Candidate(b, "random", spec, False, reason=e.message))
                    continue
                c = v.choices[b]
                if any(_same_plan(c.plan, r.choice.plan) for r in rows if r.choice is not None):
                    continue  # the chosen estimator again, or a duplicate
                flag = _flagged(v, b)
                rows.append(_Candidate(b, "random", spec, False, v, c, unbiased=c.unbiased and not flag,
                                       note=flag))
            out += rows
        elif choice.kind == "index":
            out += _index_candidates(prog, b, choice, alternatives, extra.get(b, ()))
    return out


def _index_candidates(prog, b, choice, alternatives: bool, extra_texts) -> list[_Candidate]:
    """A sampled sum: its minibatch gradient (+ uniform sampling under importance sampling); any sum: ``extra``."""
    from vrlang.estimators.spec import Spec
    from vrlang.program import _spec

    out: list[_Candidate] = []
    if choice.sampler is not None:
        samp = choice.spec.args.get("sampling")
        args = {"batch": choice.sampler.batch, **({"sampling": samp} if samp is not None else {})}
        measured = Spec("sgd", args)
        note = "" if choice.family == "sgd" else (
            f"the minibatch gradient of the chosen {choice.spec} (batch {choice.sampler.batch}): the variance "
            f"its control variate starts from; {choice.spec.name}'s own variance depends on its state "
            "(snapshot or table) and is not measured here")
        flag = _flagged(prog, b)
        out.append(_Candidate(b, "index", measured, True, prog, choice, unbiased=not flag,
                              note="; ".join(x for x in (note, flag) if x)))
        if samp is not None and alternatives:
            uni = Spec("sgd", {"batch": choice.sampler.batch})
            v = _variant(prog, {b: uni})
            out.append(_Candidate(b, "index", uni, False, v, v.choices[b], unbiased=not _flagged(v, b),
                                  note=_flagged(v, b)))
    for text in extra_texts:
        try:
            spec = _spec(text, f"estimate {b}")
            v = _variant(prog, {b: spec})
        except VrError as e:
            out.append(_Candidate(b, "index", text, False, reason=e.message))
            continue
        c = v.choices[b]
        note = "" if c.family in ("sgd", "full") else (
            f"measured as the minibatch gradient of {c.spec} (batch {c.sampler.batch}); its own variance depends on "
            "its state and is not measured here")
        flag = _flagged(v, b)
        out.append(_Candidate(b, "index", spec, False, v, c, unbiased=not flag,
                              note="; ".join(x for x in (note, flag) if x)))
    return out


# ------------------------------------------------------------------------- cost


def _plan_samples(plan, node: N.Expect, dims) -> int:
    if isinstance(plan, EnumEstimate):
        if node.dist.name == "Bernoulli":
            return 2
        (_, par), = [(k, v) for k, v in node.dist.kwargs if k in ("probs", "logits")] or [(None, None)]
        if par is None or not par.type.shape:
            return 1
        d = par.type.shape[-1]
        return d if isinstance(d, int) else int(dims[d])
    if isinstance(plan, ScoreEstimate):
        return plan.samples + (plan.baseline == "greedy")
    if isinstance(plan, (ReparamEstimate, ImportanceEstimate)):
        return plan.samples
    inner = getattr(plan, "inner", None)  # a wrapper (a control variate) around another estimator
    if inner is not None:
        return _plan_samples(inner, node, dims)
    return int(getattr(plan, "samples", 1) or 1)


def evaluations(prog, dims) -> int:
    """Component evaluations of one gradient estimate: sizes (batches when sampled) and samples, multiplied
    along nesting (a shared ``let`` counted once)."""
    sizes = {}
    for b, info in prog.checked.binders.items():
        if info.kind == "index":
            c = prog.choices.get(b)
            nd = info.nodes[0]
            n = _dim(nd.hi, dims) - _dim(nd.lo, dims)
            sizes[b] = c.sampler.batch if c is not None and c.sampler is not None else n
    memo: set[int] = set()

    def count(node) -> int:
        if id(node) in memo:
            return 0
        memo.add(id(node))
        if isinstance(node, N.Sum):
            return sizes.get(node.binder, 1) * max(1, count(node.body))
        if isinstance(node, N.Expect):
            plan = prog.choices[node.binder].plan
            return _plan_samples(plan, node, dims) * max(1, count(node.body)) + count(node.dist)
        return sum(count(c) for c in node.children())

    return max(1, count(prog.checked.objective))


def _dim(d, dims) -> int:
    return d if isinstance(d, int) else int(dims[d])


# ------------------------------------------------------------------------- measuring


def _layout(params: dict) -> tuple[list[str], list[tuple[int, int]], int]:
    names = sorted(params)
    offs, at = [], 0
    for k in names:
        n = int(np.size(params[k]))
        offs.append((at, at + n))
        at += n
    return names, offs, at


def _flat(tree: dict, names) -> jax.Array:
    return jnp.concatenate([jnp.ravel(tree[k]) for k in names])


def chunking(draws: int, P: int) -> tuple[int, int]:
    """``(C, m)``: C chunks of m keys, C * m >= draws, m >= 2."""
    C = CHUNKS if draws >= 2 * CHUNKS else max(2, draws // 2)
    m = max(2, math.ceil(draws / C))
    cap = max(2, MAX_CHUNK_FLOATS // max(P, 1))
    if m > cap:
        m = cap
        C = math.ceil(draws / m)
    return C, m


def _moments_fn(names, offs):
    """(objective, params, keys[C, m]) -> (mean[P], var[P] (n-1 denominator), chunk_param_var[C, nparams])."""
    seg = [(a, b) for a, b in offs]

    def run(obj, params, keys):
        def one(k):
            return _flat(jax.grad(obj.sample)(params, k), names)

        def chunk(carry, ks):
            n_a, mu_a, m2_a = carry
            g = jax.vmap(one)(ks)
            m = g.shape[0]
            mu_b = jnp.mean(g, axis=0)
            m2_b = jnp.sum(jnp.square(g - mu_b), axis=0)
            n = n_a + m
            delta = mu_b - mu_a
            mu = mu_a + delta * (m / n)
            m2 = m2_a + m2_b + jnp.square(delta) * (n_a * m / n)
            v_b = m2_b / (m - 1)
            per = jnp.stack([jnp.sum(v_b[a:b]) for a, b in seg])
            return (n, mu, m2), per

        P = seg[-1][1]
        dt = jnp.result_type(float)
        init = (jnp.zeros((), dt), jnp.zeros((P,), dt), jnp.zeros((P,), dt))
        (n, mu, m2), per = jax.lax.scan(chunk, init, keys)
        return mu, m2 / (n - 1), per

    return run


def _measure(cand: _Candidate, data, consts, params: Mapping, keys, names, offs):
    """Mean, per-coordinate variance, per-chunk per-param variance, compile and run times."""
    prog = cand.program
    with prog._precision():
        _, fns, jdata, jconsts = prog._bind(data, consts)
        obj = prog._objective_module(fns, jdata, jconsts)
        p = {k: jnp.asarray(v, prog.float_dtype) for k, v in params.items()}
        fn = jax.jit(_moments_fn(names, offs))
        t0 = time.perf_counter()
        compiled = fn.lower(obj, p, keys).compile()
        t1 = time.perf_counter()
        out = jax.block_until_ready(compiled(obj, p, keys))
        t_run = time.perf_counter() - t1
        if t_run < RETIME_BELOW:  # a short call: time it once more (the first call may pay one-time costs)
            t2 = time.perf_counter()
            jax.block_until_ready(compiled(obj, p, keys))
            t_run = min(t_run, time.perf_counter() - t2)
        mu, var, per = (np.asarray(x, np.float64) for x in out)
        single = None
        if not np.any(var > 0):
            # the estimate does not depend on the key (enum): XLA computes it once for all the draws, so the
            # vectorised time says nothing; time one jitted estimate instead (fastest of 3 calls)
            one = jax.jit(lambda o, q, k: _flat(jax.grad(o.sample)(q, k), names)).lower(obj, p, keys[0, 0]).compile()
            jax.block_until_ready(one(obj, p, keys[0, 0]))
            single = []
            for _ in range(3):
                t2 = time.perf_counter()
                jax.block_until_ready(one(obj, p, keys[0, 0]))
                single.append(time.perf_counter() - t2)
            single = min(single)
    return mu, var, per, t1 - t0, t_run, single, fns["dims"]


def _exact_gradient(prog, data, consts, params, names):
    """The exact gradient when every random binder admits enum (sums exact), else None."""
    from vrlang.estimators.spec import Spec

    swaps = {b: Spec("enum", {}) for b, c in prog.choices.items() if c.kind == "random"}
    try:
        v = _variant(prog, swaps) if swaps else prog
    except VrEstimatorError:
        return None
    with v._precision():
        _, fns, jdata, jconsts = v._bind(data, consts)
        p = {k: jnp.asarray(val, v.float_dtype) for k, val in params.items()}
        g = jax.jit(jax.grad(lambda q, d, c: fns["objective"](q, d, c, None)))(p, jdata, jconsts)
    return {k: np.asarray(g[k], np.float64) for k in names}


def estimator_variance(prog, data: Mapping | None = None, params: Mapping | None = None, draws: int = 1000,
                       key: int = 0, alternatives: bool = True, *, consts: Mapping | None = None,
                       extra: Mapping[str, Sequence[str]] | None = None,
                       binders: Sequence[str] | None = None) -> VarianceReport:
    """See the module docstring and :meth:`vrlang.Program.estimator_variance`."""
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 4:
        raise ValueError(f"draws must be an integer >= 4, got {draws!r}")
    if not isinstance(key, (int, np.integer)) or isinstance(key, bool):
        raise ValueError(f"key must be an integer, got {key!r}")
    extra = dict(extra or {})
    known = [b for b, c in prog.choices.items() if c.kind == "random" or (c.kind == "index" and c.sampler is not None)]
    for b in list(extra):  # extra estimators: for any random binder or finite sum (e.g. sgd for a `full` sum)
        if b not in prog.checked.binders:
            raise VrEstimatorError("E250", f"no binder named `{b}`", None,
                                   "binders: " + (", ".join(prog.checked.binders) or "none"))
        if prog.checked.binders[b].kind == "index" and b not in known:
            known.append(b)
    for b in list(binders or []) + list(extra):
        if b not in prog.checked.binders:
            raise VrEstimatorError("E250", f"no binder named `{b}`", None,
                                   "binders: " + (", ".join(prog.checked.binders) or "none"))
        if b not in known:
            raise VrEstimatorError("E397", f"`{b}` is not a random-choice binder or a sampled sum: its gradient has "
                                   "no estimator variance to measure", None,
                                   "random or sampled binders: " + (", ".join(known) or "none"))
    if not known:
        raise VrEstimatorError(
            "E397", "nothing to measure: the program has no random-choice binder (E(z ~ D: ...)) and no sampled "
            "finite sum, so its gradient is exact (variance 0)", None,
            "estimate a sum by a sampled estimator to measure its minibatch variance, e.g. "
            "--estimate i=sgd(batch = 16) / estimators={'i': 'sgd(batch = 16)'}")
    with prog._precision():
        _, fns, _, _ = prog._bind(data, consts)  # validates data and consts (VrDataError / VrTypeError)
        dims = fns["dims"]
        p0 = prog._init_params(dims)
        if params is not None:
            for k, v in params.items():
                if k in p0 and np.shape(v) != np.shape(p0[k]):
                    raise VrDataError("E420", f"param `{k}` has shape {np.shape(p0[k])}, the value given has shape "
                                      f"{np.shape(v)}")
            p0.update({k: np.asarray(v, np.float64) for k, v in prog._check_params({**p0, **params}).items()})
        p0 = {k: np.asarray(v, prog.float_dtype) for k, v in p0.items()}
    names, offs, P = _layout(p0)
    if P == 0:
        raise VrDataError("E420", "the program has no param coordinates: there is no gradient to measure")
    C, m = chunking(int(draws), P)
    with prog._precision():
        keys = jax.random.split(jax.random.PRNGKey(int(key)), C * m).reshape((C, m) + (-1,))
    cands = _candidates(prog, set(binders) if binders else None, alternatives, extra)
    exact = _exact_gradient(prog, data, consts, p0, names)
    exact_flat = None if exact is None else np.concatenate([np.ravel(exact[k]) for k in names])
    eps = float(np.finfo(prog.float_dtype).eps)
    rows: list[VarianceRow] = []
    for c in cands:
        est = str(c.spec)
        if c.program is None:
            rows.append(VarianceRow(c.binder, c.kind, est, c.chosen, "skipped", reason=c.reason))
            continue
        mu, var, per, t_compile, t_run, t_single, dims_c = _measure(c, data, consts, p0, keys, names, offs)
        n = C * m
        var = np.maximum(var, 0.0)
        tot_chunks = per.sum(axis=1)
        row = VarianceRow(
            c.binder, c.kind, est, c.chosen, "measured", note=c.note, unbiased=bool(c.unbiased),
            cost=evaluations(c.program, dims_c), variance=float(var.sum()),
            variance_se=float(np.std(tot_chunks, ddof=1) / math.sqrt(C)),
            param_variance={k: float(var[a:b].sum()) for k, (a, b) in zip(names, offs)},
            param_variance_se={k: float(np.std(per[:, j], ddof=1) / math.sqrt(C)) for j, k in enumerate(names)},
            mean={k: mu[a:b].reshape(np.shape(p0[k])) for k, (a, b) in zip(names, offs)},
            time_per_estimate=t_run / n if t_single is None else t_single, compile_time=t_compile,
            time_single_call=t_single is not None)
        if exact_flat is not None:
            diff = np.abs(mu - exact_flat)
            se = np.sqrt(var / n)
            atol = 64 * eps * (1.0 + np.abs(exact_flat))
            z = np.where(se > 0, diff / np.where(se > 0, se, 1.0), np.where(diff <= atol, 0.0, np.inf))
            row.bias_z = float(z.max()) if z.size else 0.0
            row.mean_error = float(np.linalg.norm(mu - exact_flat))
        rows.append(row)
    return VarianceReport(prog.checked.file, {k: np.asarray(v) for k, v in p0.items()}, C * m, int(key), rows,
                          exact, np.dtype(prog.float_dtype).name)
