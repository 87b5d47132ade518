"""Exact sums mapped over the rows of the arrays they index (vrlang.backend.lower).

An exact ``sum/mean(i in lo..hi: body)`` passes ``A[lo:hi]`` to its ``vmap`` for every
array the body indexes as ``A[i, ...]`` instead of gathering ``A[arange(lo, hi)]``.  The
values and gradients must be those of the gathering evaluation (``map_rows=False``) and
of ``jax.grad`` of a plain reference, on bodies that stress the substitution: nested sums,
offsets, 2-D indexing, an index used in several arrays (data and params), a neighbour
``A[i - 1]`` that must *not* be mapped, a `def` whose sum reuses the binder name inside
another sum, and an array too short for the range (left to the gather).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vrlang

N, D, M = 9, 4, 5

CASES = {
    # nested sums: the inner one over the columns of the outer row
    "nested": ("data X: real[n, d]\ndata y: real[n]\nparam w: real[d] = 0\n"
               "minimize mean(i in 0..n: softplus(-y[i] * sum(j in 0..d: X[i, j] * w[j]))) + sumsq(w) / 10\n",
               lambda p, X, y, R: jnp.mean(jax.nn.softplus(-y * (X @ p["w"]))) + jnp.sum(p["w"] ** 2) / 10),
    # offset range and a shifted neighbour y[i - 1] (gathered) next to mapped rows X[i], y[i]
    "offset": ("data X: real[n, d]\ndata y: real[n]\nparam w: real[d] = 0\n"
               "minimize mean(i in 1..n: (dot(X[i], w) - y[i] + 0.5 * y[i - 1])^2)\n",
               lambda p, X, y, R: jnp.mean((X[1:] @ p["w"] - y[1:] + 0.5 * y[:-1]) ** 2)),
    # 2-D indexing X[i, j] with j a const column and a whole row slice X[i, :]
    "two_d": ("data X: real[n, d]\ndata y: real[n]\nparam w: real[d] = 0\nconst k: int = 2\n"
              "minimize sum(i in 0..n: (X[i, k] * w[0] + dot(X[i, :], w) - y[i])^2) / 2\n",
              lambda p, X, y, R: jnp.sum((X[:, 2] * p["w"][0] + X @ p["w"] - y) ** 2) / 2),
    # the binders index two params and a 2-D data array (matrix factorisation)
    "params": ("data R: real[n, m]\nparam U: real[n, 2] = 0.5\nparam V: real[m, 2] = 0.3\n"
               "minimize mean(i in 0..n: sum(j in 0..m: (dot(U[i], V[j]) - R[i, j])^2)) + sumsq(U) / 100\n",
               lambda p, X, y, R: jnp.mean(jnp.sum((p["U"] @ p["V"].T - R) ** 2, axis=1))
               + jnp.sum(p["U"] ** 2) / 100),
    # a def with a sum over `i` applied to itself: the inner sum (same binder name) is nested in the outer body
    "rebind": ("data X: real[n, d]\ndata y: real[n]\nparam w: real[d] = 0\n"
               "def scaled(t: real) = mean(i in 0..n: X[i, 0] * t + y[i])\n"
               "minimize scaled(scaled(w[0]) * w[1])^2\n",
               lambda p, X, y, R: (jnp.mean(X[:, 0]) * (jnp.mean(X[:, 0]) * p["w"][0] + jnp.mean(y)) * p["w"][1]
                                   + jnp.mean(y)) ** 2),
    # the sum runs over n - 1 items of arrays with n rows, and over the first `h` rows only
    "short": ("data X: real[n, d]\ndata y: real[n]\nparam w: real[d] = 0\nconst h: int = 6\n"
              "minimize mean(i in 0..h: softplus(dot(X[i], w)) * y[i]) + mean(i2 in 2..n: X[i2, 0] * w[1])\n",
              lambda p, X, y, R: jnp.mean(jax.nn.softplus(X[:6] @ p["w"]) * y[:6]) + jnp.mean(X[2:, 0] * p["w"][1])),
}


def _data(rng):
    return {"X": rng.normal(size=(N, D)), "y": rng.normal(size=N), "R": rng.normal(size=(N, M))}


def _params(name, rng):
    if name == "params":
        return {"U": rng.normal(size=(N, 2)), "V": rng.normal(size=(M, 2))}
    return {"w": rng.normal(size=D)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_row_mapping_matches_gather_and_reference(name):
    src, ref = CASES[name]
    rng = np.random.default_rng(3)
    data = _data(rng)
    prog = vrlang.compile(src, x64=True)
    data = {k: v for k, v in data.items() if k in prog.checked.data}
    p = _params(name, rng)
    got = {}
    for rows in (True, False):
        prog._interp.map_rows = rows
        for fn in ("value_jit", "grad_jit"):  # the jitted functions are cached per data shape: start afresh
            for lowered in prog._lowered.values():
                lowered.pop(fn, None)
        got[rows] = (prog.objective(p, data), prog.grad(p, data))
    with jax.enable_x64(True):
        jp = {k: jnp.asarray(v) for k, v in p.items()}
        args = (jnp.asarray(data.get("X", 0.0)), jnp.asarray(data.get("y", 0.0)), jnp.asarray(data.get("R", 0.0)))
        want_v = float(ref(jp, *args))
        want_g = jax.grad(lambda q: ref(q, *args))(jp)
    for rows in (True, False):
        v, g = got[rows]
        assert v == pytest.approx(want_v, rel=1e-12, abs=1e-13), (name, rows)
        for k in p:
            np.testing.assert_allclose(g[k], np.asarray(want_g[k]), rtol=1e-10, atol=1e-12, err_msg=f"{name} {k}")
    assert got[True][0] == pytest.approx(got[False][0], rel=1e-13, abs=1e-14)
    for k in p:
        np.testing.assert_allclose(got[True][1][k], got[False][1][k], rtol=1e-11, atol=1e-13)


def _jaxpr(prog, data, p, text=True):
    _, fns, jdata, jconsts = prog._bind(data)
    f = jax.grad(lambda q: fns["objective"](q, jdata, jconsts, None))
    out = jax.make_jaxpr(f)({k: jnp.asarray(v, jnp.float32) for k, v in p.items()})
    return str(out) if text else out


def test_rows_are_mapped_not_gathered():
    """The design matrix is not gathered (no n x d copy) and the binder's arrays are sliced instead."""
    src, _ = CASES["nested"]
    prog = vrlang.compile(src)
    rng = np.random.default_rng(0)
    data = {k: v for k, v in _data(rng).items() if k in ("X", "y")}
    p = {"w": rng.normal(size=D)}
    mapped = _jaxpr(prog, data, p)
    prog._interp.map_rows = False
    gathered = _jaxpr(prog, data, p)
    assert "gather" in gathered  # the reference path gathers X[arange(n)] (the test can tell the two apart)
    assert f"f32[{N},{D}]" in gathered and "gather" not in mapped


def test_compile_size_does_not_grow_with_n():
    src, _ = CASES["offset"]
    prog = vrlang.compile(src)
    lens = []
    for n in (10, 1000):
        rng = np.random.default_rng(0)
        data = {"X": rng.normal(size=(n, D)), "y": rng.normal(size=n)}
        lens.append(len(_jaxpr(prog, data, {"w": np.ones(D)}, text=False).eqns))  # equations of the traced program
    assert lens[0] == lens[1]
