"""Compiled vrlang objectives and gradients against hand-written JAX references.

Each case is a small program, a data generator, a point at which to evaluate it and a
plain ``jax.numpy`` transcription of the same objective.  ``prog.objective`` and
``prog.grad`` (gradients in the user's, i.e. constrained, coordinates) must agree with
the reference and ``jax.grad`` of it to float64 round-off.  Together the cases cover
every builtin and operator of LANGUAGE.md §3 (a test below checks that), indexing,
vector literals, nested binders, ``def``/``let``/``const``/``extern``/``use``,
``maximize`` and every param constraint; the last tests solve tiny constrained
problems and check feasibility and the known optimum.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp as jlogsumexp

import vrlang
from vrlang.backend import builtins as JB
from vrlang.check import builtins as CB
from vrlang.resources import stdlib_dir

RTOL, ATOL = 1e-9, 1e-10


@dataclass
class Case:
    id: str
    src: str
    data: Callable[[np.random.Generator], dict]
    params: Callable[[np.random.Generator, dict], dict]
    ref: Callable[[dict, dict], jax.Array]
    compile_kw: dict = field(default_factory=dict)


def _pos(rng, *shape, lo=0.5, hi=1.5):
    return rng.uniform(lo, hi, size=shape)


# --------------------------------------------------------------------- the cases

CASES: list[Case] = []


def case(id, src, data, params, compile_kw=None):
    def deco(ref):
        CASES.append(Case(id, src, data, params, ref, compile_kw or {}))
        return ref
    return deco


# 1. elementwise builtins on a positive domain (log, sqrt need w > 0), abs away from 0
@case("elementwise_exp_log",
      """
      data x: real[n]
      param w: real[n]
      minimize sum(exp(w * x)) + sum(log(w)) + sum(log1p(w)) + sum(expm1(w / 2))
             + sum(sqrt(w)) + sum(abs(x - 3 * w))
      """,
      lambda r: {"x": r.normal(size=5)},
      lambda r, d: {"w": _pos(r, 5)})
def _ref(p, d):
    w, x = p["w"], d["x"]
    return (jnp.sum(jnp.exp(w * x)) + jnp.sum(jnp.log(w)) + jnp.sum(jnp.log1p(w)) + jnp.sum(jnp.expm1(w / 2))
            + jnp.sum(jnp.sqrt(w)) + jnp.sum(jnp.abs(x - 3 * w)))


# 2. trigonometric and sigmoid-type builtins; relu arguments kept away from the kink
@case("elementwise_trig_sigmoid",
      """
      data x: real[n]
      param w: real[n]
      minimize sum(sin(w) * cos(x)) + sum(tan(w / 2)) + sum(tanh(w * x)) + sum(sigmoid(x - w))
             + sum(softplus(w)) + sum(log1pexp(-w * x)) + sum(log_sigmoid(x + w))
             + sum(square(w - x)) + sum(relu(x - w))
      """,
      lambda r: {"x": np.array([-1.3, 2.1, 0.4, 1.7, 2.5])},
      lambda r, d: {"w": np.array([0.3, 0.9, -0.6, 1.1, 0.8])})
def _ref(p, d):
    w, x = p["w"], d["x"]
    return (jnp.sum(jnp.sin(w) * jnp.cos(x)) + jnp.sum(jnp.tan(w / 2)) + jnp.sum(jnp.tanh(w * x))
            + jnp.sum(jax.nn.sigmoid(x - w)) + jnp.sum(jax.nn.softplus(w)) + jnp.sum(jnp.log1p(jnp.exp(-w * x)))
            + jnp.sum(jnp.log(jax.nn.sigmoid(x + w))) + jnp.sum((w - x) ** 2) + jnp.sum(jnp.maximum(x - w, 0.0)))


# 3. reductions to a scalar and along the last axis
@case("reductions",
      """
      data A: real[n, d]
      param w: real[d]
      minimize logsumexp(A @ w) + dot(softmax(w), log_softmax(A[0])) + sumsq(w) + norm(A @ w)
             + mean(A @ w) + max(A @ w) + min(w * w) + prod(w) + sum(A)
      """,
      lambda r: {"A": r.normal(size=(5, 3))},
      lambda r, d: {"w": np.array([0.7, -1.2, 0.4])})
def _ref(p, d):
    w, A = p["w"], d["A"]
    z = A @ w
    return (jlogsumexp(z) + jnp.dot(jax.nn.softmax(w), jax.nn.log_softmax(A[0])) + jnp.sum(w ** 2)
            + jnp.sqrt(jnp.sum(z ** 2)) + jnp.mean(z) + jnp.max(z) + jnp.min(w * w) + jnp.prod(w) + jnp.sum(A))


# 4. two-argument max/min, clip, where with every comparison and and/or/not
@case("pairwise_where_compare",
      """
      data x: real[n]
      data c: int[n]
      param w: real[n]
      minimize sum(max(w, x)) + sum(min(w, 0.5 * x)) + sum(clip(w, -0.5, 0.5))
             + sum(where(c == 0, w ^ 2, 0)) + sum(where(c != 1 and x > 0, 3 * w, -w))
             + sum(where(x < 0 or c >= 2, exp(w), 1)) + sum(where(not (x <= 0.1), w * x, 2 * w))
             + sum(where(c > 0, 1, 0)) * w[0] + max(c) * w[1] - min(c) + sum(c) * w[2]
      """,
      lambda r: {"x": np.array([-1.0, 0.3, 2.0, 0.05, 1.5]),
                 "c": np.array([0, 1, 2, 2, 0])},
      lambda r, d: {"w": np.array([0.2, -0.7, 1.1, 0.9, -1.3])})
def _ref(p, d):
    w, x, c = p["w"], d["x"], d["c"]
    return (jnp.sum(jnp.maximum(w, x)) + jnp.sum(jnp.minimum(w, 0.5 * x)) + jnp.sum(jnp.clip(w, -0.5, 0.5))
            + jnp.sum(jnp.where(c == 0, w ** 2, 0.0)) + jnp.sum(jnp.where((c != 1) & (x > 0), 3 * w, -w))
            + jnp.sum(jnp.where((x < 0) | (c >= 2), jnp.exp(w), 1.0))
            + jnp.sum(jnp.where(~(x <= 0.1), w * x, 2 * w))
            + jnp.sum(c > 0) * w[0] + jnp.max(c) * w[1] - jnp.min(c) + jnp.sum(c) * w[2])


# 5. one_hot with a literal size and with a shape symbol; multiclass logistic regression
@case("one_hot_softmax_regression",
      """
      data X: real[n, d]
      data y: int[n]
      data prior: real[k]
      param W: real[d, k]
      param V: real[d, 3]
      minimize mean(i in 0..n: logsumexp(X[i] @ W) - dot(one_hot(y[i], k), X[i] @ W))
             + sum(j in 0..n: dot(one_hot(y[j], 3), log_softmax(X[j] @ V)))
             + dot(prior, transpose(W) @ X[0])
      """,
      lambda r: {"X": r.normal(size=(5, 3)), "y": np.array([0, 2, 1, 2, 0]), "prior": r.uniform(size=3)},
      lambda r, d: {"W": r.normal(size=(3, 3)), "V": r.normal(size=(3, 3))})
def _ref(p, d):
    X, y, W, V = d["X"], d["y"], p["W"], p["V"]
    Z = X @ W
    t1 = jnp.mean(jlogsumexp(Z, axis=1) - jnp.take_along_axis(Z, y[:, None], axis=1)[:, 0])
    L = jax.nn.log_softmax(X @ V, axis=-1)
    t2 = jnp.sum(jnp.take_along_axis(L, y[:, None], axis=1))
    return t1 + t2 + jnp.dot(d["prior"], W.T @ X[0])


# 6. matmul in every combination, transpose, matrix params
@case("matmul_transpose",
      """
      data A: real[n, d]
      data b: real[d]
      param w: real[d]
      param M: real[d, 2]
      minimize sumsq(transpose(A) @ (A @ w) - b) + sumsq(A @ M) + sum(w @ transpose(A))
             + sum(transpose(M) @ w) + sum(transpose(A @ M) @ A) + dot(A, w)[1]
      """,
      lambda r: {"A": r.normal(size=(5, 3)), "b": r.normal(size=3)},
      lambda r, d: {"w": r.normal(size=3), "M": r.normal(size=(3, 2))})
def _ref(p, d):
    A, b, w, M = d["A"], d["b"], p["w"], p["M"]
    return (jnp.sum((A.T @ (A @ w) - b) ** 2) + jnp.sum((A @ M) ** 2) + jnp.sum(w @ A.T)
            + jnp.sum(M.T @ w) + jnp.sum((A @ M).T @ A) + (A @ w)[1])


# 7. arithmetic operators, unary minus, right-associative power, precedence
@case("operators",
      """
      data x: real[n]
      param w: real[n]
      param s: real
      minimize sum((w - x) ^ 2 / (1 + w * w)) - -sum(w) + s ^ 2 ^ 0.5 + -s ^ 2 + 2 * s - 3 / s
             + sum(-w * x) + sum(x / w ^ 2) - 1 - 2 - 3
      """,
      lambda r: {"x": r.normal(size=5)},
      lambda r, d: {"w": _pos(r, 5), "s": np.array(1.7)})
def _ref(p, d):
    w, x, s = p["w"], d["x"], p["s"]
    return (jnp.sum((w - x) ** 2 / (1 + w * w)) + jnp.sum(w) + s ** (2 ** 0.5) - s ** 2 + 2 * s - 3 / s
            + jnp.sum(-w * x) + jnp.sum(x / w ** 2) - 6)


# 8. indexing X[i], X[i, j], X[:, j]; nested binders; sum and mean
@case("indexing_nested_binders",
      """
      data X: real[n, d]
      param w: real[d]
      param v: real[n]
      minimize sum(i in 0..n, j in 0..d: (X[i, j] - w[j] * v[i]) ^ 2)
             + mean(a in 0..n, b in 0..d: X[a, b] * w[b])
             + sum(c in 0..d: dot(X[:, c], v) * w[c])
             + mean(e in 0..n: dot(X[e], w) ^ 2)
      """,
      lambda r: {"X": r.normal(size=(5, 3))},
      lambda r, d: {"w": r.normal(size=3), "v": r.normal(size=5)})
def _ref(p, d):
    X, w, v = d["X"], p["w"], p["v"]
    return (jnp.sum((X - jnp.outer(v, w)) ** 2) + jnp.mean(X * w[None, :]) + jnp.sum((X.T @ v) * w)
            + jnp.mean((X @ w) ** 2))


# 9. sum versus mean over the same items, ranges not starting at 0, int index arithmetic
@case("sum_vs_mean_ranges",
      """
      data x: real[n]
      param w: real[n]
      minimize sum(i in 0..n: w[i] * x[i]) + 10 * mean(j in 0..n: w[j] * x[j])
             + mean(k in 1..n: (w[k] - w[k - 1]) ^ 2) + sum(l in 2..5: w[l] ^ 3)
      """,
      lambda r: {"x": r.normal(size=5)},
      lambda r, d: {"w": r.normal(size=5)})
def _ref(p, d):
    w, x = p["w"], d["x"]
    return (jnp.sum(w * x) + 10 * jnp.mean(w * x) + jnp.mean((w[1:] - w[:-1]) ** 2) + jnp.sum(w[2:5] ** 3))


# 10. vector literals: of scalars, of params, of vectors (a matrix)
@case("vector_literals",
      """
      data x: real[3]
      param p: real[3]
      param s: real
      minimize sumsq(p - [0.2, 0.3, 0.5]) + dot([s, 2 * s, s ^ 2], x) + sum([p, x] @ p)
             + sumsq([p[0] * p[1], s])
      """,
      lambda r: {"x": r.normal(size=3)},
      lambda r, d: {"p": r.normal(size=3), "s": np.array(-0.8)})
def _ref(p, d):
    q, s, x = p["p"], p["s"], d["x"]
    return (jnp.sum((q - jnp.array([0.2, 0.3, 0.5])) ** 2) + jnp.dot(jnp.stack([s, 2 * s, s ** 2]), x)
            + jnp.sum(jnp.stack([q, x]) @ q) + (q[0] * q[1]) ** 2 + s ** 2)


# 11. def with and without annotations, a def calling another def, keyword arguments
@case("defs",
      """
      data X: real[n, d]
      data y: real[n]
      param w: real[d]
      def sq(r: real) = r ^ 2 / 2
      def lin(x: real[d], v: real[d]) -> real = dot(x, v)
      def loss(a, b) = sq(a - b) + softplus(a)
      def ridge(v, lam: real) = lam * sumsq(v)
      minimize mean(i in 0..n: loss(lin(X[i], w), y[i])) + ridge(lam = 0.3, v = w)
      """,
      lambda r: {"X": r.normal(size=(5, 3)), "y": r.normal(size=5)},
      lambda r, d: {"w": r.normal(size=3)})
def _ref(p, d):
    m = d["X"] @ p["w"]
    return jnp.mean((m - d["y"]) ** 2 / 2 + jax.nn.softplus(m)) + 0.3 * jnp.sum(p["w"] ** 2)


# 12. let: a named expression used twice, a let holding a finite sum
@case("lets",
      """
      data X: real[n, d]
      data y: real[n]
      param w: real[d]
      let r = X @ w - y
      let fit = mean(i in 0..n: (dot(X[i], w) - y[i]) ^ 2)
      minimize sumsq(r) + sum(abs(r)) + fit + log(1 + fit)
      """,
      lambda r: {"X": r.normal(size=(5, 3)), "y": r.normal(size=5)},
      lambda r, d: {"w": r.normal(size=3)})
def _ref(p, d):
    r = d["X"] @ p["w"] - d["y"]
    fit = jnp.mean(r ** 2)
    return jnp.sum(r ** 2) + jnp.sum(jnp.abs(r)) + fit + jnp.log(1 + fit)


CONST_SRC = """
data x: real[n]
const lam: real = 0.1
const c: real[3] = [1, 2, 3]
const K: int = 2
const half = 0.5
param w: real[3]
minimize lam * sumsq(w) + dot(c, w) + sum(k in 0..K: w[k] * x[k]) + half * sum(x)
"""


def _const_ref(lam, c, K, half):
    def f(p, d):
        w, x = p["w"], d["x"]
        return lam * jnp.sum(w ** 2) + jnp.dot(jnp.asarray(c, jnp.float64), w) + jnp.sum(w[:K] * x[:K]) \
            + half * jnp.sum(x)
    return f


# 13. const (declared values; overrides are tested separately below)
case("consts", CONST_SRC, lambda r: {"x": r.normal(size=5)},
     lambda r, d: {"w": r.normal(size=3)})(_const_ref(0.1, [1.0, 2.0, 3.0], 2, 0.5))


def _ext_f(z):
    return jnp.sum(jnp.cos(z) * jnp.arange(1, z.shape[0] + 1))


def _ext_g(x, w):
    return jnp.tanh(x * w)


# 14. extern: Python JAX functions with scalar and vector results
@case("externs",
      """
      data X: real[n, d]
      extern f(z: real[d]) -> real
      extern g(x: real[d], v: real[d]) -> real[d]
      param w: real[d]
      minimize f(w) + mean(i in 0..n: sum(g(X[i], w))) + sumsq(w)
      """,
      lambda r: {"X": r.normal(size=(5, 3))},
      lambda r, d: {"w": r.normal(size=3)},
      compile_kw={"externs": {"f": _ext_f, "g": _ext_g}})
def _ref(p, d):
    w = p["w"]
    return _ext_f(w) + jnp.mean(jnp.sum(jnp.tanh(d["X"] * w[None, :]), axis=1)) + jnp.sum(w ** 2)


# 15. maximize: objective and grad are those of the expression itself
@case("maximize",
      """
      data x: real[n]
      param w: real[n]
      maximize -sumsq(w - x) + sum(log_sigmoid(w))
      """,
      lambda r: {"x": r.normal(size=5)},
      lambda r, d: {"w": r.normal(size=5)})
def _ref(p, d):
    return -jnp.sum((p["w"] - d["x"]) ** 2) + jnp.sum(jax.nn.log_sigmoid(p["w"]))


# 16-19. every constraint: values and gradients are in the user's (constrained) coordinates
@case("constraint_positive",
      """
      data x: real[n]
      param s: real[n] in positive
      param t: real in positive = 2
      minimize sum(s * x) - sum(log(s)) + t * sumsq(x) - log(t) + sqrt(t)
      """,
      lambda r: {"x": r.normal(size=5)},
      lambda r, d: {"s": _pos(r, 5), "t": np.array(2.5)})
def _ref(p, d):
    s, t, x = p["s"], p["t"], d["x"]
    return jnp.sum(s * x) - jnp.sum(jnp.log(s)) + t * jnp.sum(x ** 2) - jnp.log(t) + jnp.sqrt(t)


@case("constraint_simplex",
      """
      data X: real[n, 3]
      param p: real[3] in simplex
      minimize -mean(i in 0..n: log(dot(X[i], p))) + sumsq(p - [0.2, 0.3, 0.5])
      """,
      lambda r: {"X": r.uniform(0.1, 1.0, size=(5, 3))},
      lambda r, d: {"p": np.array([0.1, 0.6, 0.3])})
def _ref(p, d):
    q = p["p"]
    return -jnp.mean(jnp.log(d["X"] @ q)) + jnp.sum((q - jnp.array([0.2, 0.3, 0.5])) ** 2)


@case("constraint_unit_interval",
      """
      data y: real[n]
      param q: real[n] in unit_interval
      minimize -sum(y * log(q) + (1 - y) * log(1 - q))
      """,
      lambda r: {"y": r.uniform(size=5)},
      lambda r, d: {"q": r.uniform(0.1, 0.9, size=5)})
def _ref(p, d):
    q, y = p["q"], d["y"]
    return -jnp.sum(y * jnp.log(q) + (1 - y) * jnp.log(1 - q))


@case("constraint_box",
      """
      data x: real[n]
      const lo: real = -1
      param b: real[n] in [lo, 2 * 1] = 0.5
      param a: real in [0.5, 4]
      minimize sumsq(b - x) + a * sum(b) + log(a)
      """,
      lambda r: {"x": r.normal(size=5)},
      lambda r, d: {"b": r.uniform(-0.9, 1.9, size=5), "a": np.array(3.2)})
def _ref(p, d):
    b, a = p["b"], p["a"]
    return jnp.sum((b - d["x"]) ** 2) + a * jnp.sum(b) + jnp.log(a)


# 20. the standard library (only if it ships)
_HAS_LOSSES = (stdlib_dir() / "std" / "losses.vr").is_file()
_HAS_REGULARIZERS = (stdlib_dir() / "std" / "regularizers.vr").is_file()
# skipped (in the test below) when the standard library does not ship
# cross_entropy is declared with logits: real[k]; here the data also have a symbol `k`
# (of another size): inside the def, `k` is the def's own dimension
@case("use_std_library",
      """
      use std.losses
      use std.regularizers
      data X: real[n, d]
      data y: real[n]
      data lab: int[n]
      data prior: real[k]
      param w: real[d]
      param V: real[d, 3]
      minimize mean(i in 0..n: logistic(y[i] * dot(X[i], w))) + mean(j in 0..n: hinge(y[j] * dot(X[j], w)))
             + mean(l in 0..n: huber(dot(X[l], w) - y[l], 0.5)) + sum(m in 0..n: squared(dot(X[m], w)))
             + mean(c in 0..n: cross_entropy(X[c] @ V, lab[c]))
             + l2(w) + elastic_net(w, 0.3) + sum(prior) * l1(w)
      """,
      lambda r: {"X": r.normal(size=(5, 3)), "y": np.array([1.0, -1, 1, -1, -1]),
                 "lab": np.array([2, 0, 1, 2, 2]), "prior": np.array([0.25, 0.75])},
      lambda r, d: {"w": np.array([0.3, -0.5, 0.8]), "V": r.normal(size=(3, 3))})
def _ref(p, d):
    w, m, yy = p["w"], d["X"] @ p["w"], d["y"]
    r = m - yy
    huber = jnp.where(jnp.abs(r) <= 0.5, r ** 2 / 2, 0.5 * (jnp.abs(r) - 0.25))
    Z = d["X"] @ p["V"]
    ce = jlogsumexp(Z, axis=1) - jnp.take_along_axis(Z, d["lab"][:, None], axis=1)[:, 0]
    l1, l2 = jnp.sum(jnp.abs(w)), jnp.sum(w ** 2) / 2
    return (jnp.mean(jax.nn.softplus(-yy * m)) + jnp.mean(jnp.maximum(1 - yy * m, 0.0)) + jnp.mean(huber)
            + jnp.sum(m ** 2 / 2) + jnp.mean(ce) + l2 + 0.3 * l1 + 0.7 * l2 + jnp.sum(d["prior"]) * l1)


# --------------------------------------------------------------------- helpers


def _setup(c: Case):
    rng = np.random.default_rng(1234)
    data = c.data(rng)
    params = {k: np.asarray(v, np.float64) for k, v in c.params(rng, data).items()}
    return data, params


def _reference(ref, params, data):
    with jax.enable_x64(True):
        jp = {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}
        jd = {k: jnp.asarray(v) for k, v in data.items()}
        value, grads = jax.value_and_grad(ref)(jp, jd)
        return float(value), {k: np.asarray(v) for k, v in grads.items()}


def _assert_matches(prog, params, data, ref, consts=None):
    got = prog.objective(params, data, consts=consts) if consts is not None else prog.objective(params, data)
    grads = prog.grad(params, data, consts=consts) if consts is not None else prog.grad(params, data)
    want, want_g = _reference(ref, params, data)
    assert np.isfinite(want)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert set(grads) == set(params)
    for k in params:
        assert np.shape(grads[k]) == np.shape(params[k]), k
        assert np.all(np.isfinite(want_g[k])), k
        np.testing.assert_allclose(grads[k], want_g[k], rtol=RTOL, atol=ATOL, err_msg=f"gradient of {k}")
    return got


# --------------------------------------------------------------------- the tests


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_objective_and_grad_match_jax(c: Case):
    if c.src.lstrip().startswith("use std.") and not (_HAS_LOSSES and _HAS_REGULARIZERS):
        pytest.skip("stdlib/std/losses.vr or regularizers.vr is missing")
    prog = vrlang.compile(c.src, x64=True, **c.compile_kw)
    data, params = _setup(c)
    _assert_matches(prog, params, data, c.ref)


def test_cases_cover_every_builtin_and_operator():
    """The sources above exercise each builtin of both tables and each operator."""
    srcs = "\n".join(c.src for c in CASES)
    called = set(re.findall(r"\b([a-z_][a-z_0-9]*)\s*\(", srcs))
    assert set(CB.BUILTINS) <= called, sorted(set(CB.BUILTINS) - called)
    # both forms of max/min: reductions (1 argument) and elementwise (2 arguments)
    assert re.search(r"\bmax\(\s*[\w\s@*]+\)", srcs) and re.search(r"\bmax\(\s*w,", srcs)
    assert re.search(r"\bmin\(\s*[\w\s@*]+\)", srcs) and re.search(r"\bmin\(\s*w,", srcs)
    for op in ["+", "-", "*", "/", "^", "@", "==", "!=", "<", "<=", ">", ">=", " and ", " or ", "not "]:
        assert op in srcs, op
    assert len(CASES) >= 18


def test_backend_implements_every_checked_builtin():
    """Every builtin the checker accepts has a JAX implementation."""
    assert set(CB.BUILTINS) <= JB.IMPLEMENTED


def test_const_overrides_at_compile_and_at_call():
    c = next(c for c in CASES if c.id == "consts")
    data, params = _setup(c)
    default = vrlang.compile(c.src, x64=True)
    base = _assert_matches(default, params, data, c.ref)

    over = {"lam": 2.5, "c": [-1.0, 0.5, 4.0], "half": -1.0}
    compiled = vrlang.compile(c.src, x64=True, consts=over)
    got = _assert_matches(compiled, params, data, _const_ref(2.5, [-1.0, 0.5, 4.0], 2, -1.0))
    assert abs(got - base) > 1e-3  # the overrides changed the value

    # a call-time override on the default program gives the same thing ...
    _assert_matches(default, params, data, _const_ref(2.5, [-1.0, 0.5, 4.0], 2, -1.0), consts=over)
    # ... a partial one keeps the other declared values, and does not stick
    _assert_matches(default, params, data, _const_ref(0.1, [1.0, 2.0, 3.0], 2, 7.0), consts={"half": 7.0})
    np.testing.assert_allclose(default.objective(params, data), base, rtol=RTOL, atol=ATOL)
    # a call-time override on a program compiled with overrides starts from those
    _assert_matches(compiled, params, data, _const_ref(0.0, [-1.0, 0.5, 4.0], 2, -1.0), consts={"lam": 0.0})


def test_const_override_errors():
    c = next(c for c in CASES if c.id == "consts")
    data, params = _setup(c)
    with pytest.raises(vrlang.VrTypeError) as ei:
        vrlang.compile(c.src, x64=True, consts={"nope": 1.0})
    assert ei.value.code == "E292"
    with pytest.raises(vrlang.VrTypeError) as ei:
        vrlang.compile(c.src, x64=True, consts={"c": [1.0, 2.0]})
    assert ei.value.code == "E293"
    with pytest.raises(vrlang.VrTypeError) as ei:
        vrlang.compile(c.src, x64=True, consts={"K": 1.5})
    assert ei.value.code == "E293"
    # K is a range end: it is fixed when the program is compiled, so a different value is
    # refused rather than silently ignored (both at compile time and at call time)
    with pytest.raises(vrlang.VrTypeError) as ei:
        vrlang.compile(c.src, x64=True, consts={"K": 3})
    assert ei.value.code == "E293" and "K" in ei.value.message
    prog = vrlang.compile(c.src, x64=True, consts={"K": 2})  # the declared value is fine
    with pytest.raises(vrlang.VrTypeError) as ei:
        prog.objective(params, data, consts={"K": 3})
    assert ei.value.code == "E293"
    # the same holds for a const used as a box bound
    box = vrlang.compile("const lo: real = -1\nparam b: real in [lo, 1]\nminimize (b - lo) ^ 2", x64=True)
    with pytest.raises(vrlang.VrTypeError) as ei:
        box.objective({"b": 0.0}, consts={"lo": -2.0})
    assert ei.value.code == "E293"


def test_init_params_defaults():
    src = """
    data x: real[n]
    param w: real[n]
    param s: real[n] in positive
    param p: real[3] in simplex
    param q: real in unit_interval
    param b: real[2] in [-1, 3]
    param z: real[n] = 0.25
    minimize sum(w) + sum(s) + sum(p) + q + sum(b) + sum(z)
    """
    prog = vrlang.compile(src, x64=True)
    p0 = prog.init_params({"x": np.zeros(4)})
    np.testing.assert_array_equal(p0["w"], np.zeros(4))
    np.testing.assert_array_equal(p0["s"], np.ones(4))
    np.testing.assert_allclose(p0["p"], np.full(3, 1 / 3))
    np.testing.assert_allclose(p0["q"], 0.5)
    np.testing.assert_allclose(p0["b"], [1.0, 1.0])
    np.testing.assert_allclose(p0["z"], np.full(4, 0.25))


# --------------------------------------------------------------- constrained solves

ADAM = "adam(lr = 0.05, steps = 200)"


def _solve(src, data=None, **kw):
    prog = vrlang.compile(src, x64=True)
    res = prog.solve(data=data, key=0, solver=ADAM, **kw)
    for k in ("objective", "grad_norm", "grad_evals", "time", "epoch"):
        assert k in res.history
        assert len(res.history[k]) == len(res.history["objective"]) > 0
    assert res.status in ("converged", "max_steps")
    assert np.all(np.isfinite(res.history["objective"]))
    return prog, res


def test_solve_simplex():
    src = """
    param p: real[3] in simplex
    minimize sumsq(p - [0.2, 0.3, 0.5])
    """
    prog, res = _solve(src)
    p = res.params["p"]
    assert p.shape == (3,)
    assert np.all(p > 0)
    np.testing.assert_allclose(p.sum(), 1.0, atol=1e-12)
    np.testing.assert_allclose(p, [0.2, 0.3, 0.5], atol=1e-2)
    assert res.history["objective"][-1] < res.history["objective"][0]


def test_solve_positive_and_unit_interval():
    src = """
    param s: real[3] in positive
    param q: real[2] in unit_interval
    minimize sumsq(s - [0.5, 2, -1]) + sumsq(q - [0.25, 1.5])
    """
    prog, res = _solve(src)
    s, q = res.params["s"], res.params["q"]
    assert np.all(s > 0)
    assert np.all((q > 0) & (q < 1))
    np.testing.assert_allclose(s[:2], [0.5, 2.0], atol=2e-2)
    assert s[2] < 0.1  # the unconstrained optimum -1 is infeasible; the solution hugs 0
    np.testing.assert_allclose(q[0], 0.25, atol=2e-2)
    assert q[1] > 0.9


def test_solve_box_and_maximize():
    src = """
    data x: real[n]
    param b: real[3] in [-1, 2]
    param w: real[n]
    maximize -sumsq(b - [-3, 0.5, 5]) - sumsq(w - x)
    """
    x = np.array([1.0, -2.0])
    prog, res = _solve(src, data={"x": x})
    b, w = res.params["b"], res.params["w"]
    assert np.all((b > -1) & (b < 2))
    np.testing.assert_allclose(b[1], 0.5, atol=1e-2)
    assert b[0] < -0.9 and b[2] > 1.9  # the targets -3 and 5 lie outside: the solution hugs the bounds
    np.testing.assert_allclose(w, x, atol=5e-2)
    # maximize: the recorded objective is the user's (increasing) objective
    assert res.history["objective"][-1] > res.history["objective"][0]
    np.testing.assert_allclose(res.history["objective"][-1], prog.objective(res.params, {"x": x}), rtol=1e-6)
