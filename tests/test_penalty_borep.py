"""Fully first-order penalty hypergradients (F2SA) and BO-REP on the ridge hyper-parameter problem.

Ridge: g(v, lam) = |Xtr v - ytr|^2 / 2n + lam/2 |v|^2, f(v) = |Xva v - yva|^2 / 2m, so that the
inner solution z* = (A + lam I)^-1 b and the penalty point y_s = argmin f/s + g,
(C/s + A + lam I) y_s = c/s + b, have closed forms; the penalty surrogate
L(lam) = f(y) + s (g(y, lam) - g(z, lam)) at fixed (y, z) is differentiated by ``jax.grad`` in
float64 (the hand-written reference), and the true hypergradient is ``jax.grad`` of the
closed-form validation loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vrlang
from vrlang.solvers import loop

from test_bilevel import D, HEADER, M, N, data  # noqa: F401  (the ridge problem and its data)
from test_binder_state import SRC as MULTITASK, multitask_data

RIDGE = HEADER + """const s: real = 100
param lam: real in positive = 1.0
let w = argmin(v in real[d]: mean(i in 0..n: (dot(Xtr[i], v) - ytr[i])^2) / 2 + lam / 2 * sumsq(v))
minimize mean(j in 0..m: (dot(Xva[j], w) - yva[j])^2) / 2
"""


def _moments(d):
    A = d["Xtr"].T @ d["Xtr"] / N
    b = d["Xtr"].T @ d["ytr"] / N
    C = d["Xva"].T @ d["Xva"] / M
    c = d["Xva"].T @ d["yva"] / M
    return A, b, C, c


def inner_g(d, v, lam, weights=None):
    r = d["Xtr"] @ v - d["ytr"]
    wr = r * r if weights is None else weights * r * r
    return jnp.mean(wr) / 2 + lam / 2 * jnp.sum(v * v)


def outer_f(d, v):
    return jnp.mean((d["Xva"] @ v - d["yva"]) ** 2) / 2


def validation_loss(d, lam):
    A, b, _, _ = _moments(d)
    return outer_f(d, jnp.linalg.solve(A + lam * jnp.eye(D), b))


def best_lam(d):
    with jax.enable_x64(True):
        lams = np.geomspace(0.05, 5.0, 4000)
        losses = jax.vmap(lambda l: validation_loss(d, l))(jnp.asarray(lams))
        return float(lams[int(jnp.argmin(losses))])


def test_penalty_hypergradient_is_the_surrogate_gradient_and_its_bias_shrinks_like_one_over_sigma(data):
    """Program.grad = the penalty gradient at the exact (y_s, z*) (closed form, to 1e-7); its error
    against the true hypergradient is O(1/s): s * error stays put while s goes 10 -> 100 -> 1000; the
    logged objective is the true validation loss.  sigma is a const: new values do not re-trace."""
    prog = vrlang.compile(RIDGE + "estimate v by penalty(sigma = s, inner = sgd(steps = 3000))\n", x64=True)
    with jax.enable_x64(True):
        d = {k: jnp.asarray(v) for k, v in data.items()}
        A, b, C, c = _moments(d)
        lam = 1.0
        true = float(jax.grad(lambda l: validation_loss(d, l))(lam))
        z = jnp.linalg.solve(A + lam * jnp.eye(D), b)
    scaled, traced = [], None
    for s in (10.0, 100.0, 1000.0):
        g = float(prog.grad({"lam": lam}, data, consts={"s": s})["lam"])
        if traced is None:
            traced = prog.trace_counter[0]
        with jax.enable_x64(True):
            y = jnp.linalg.solve(C / s + A + lam * jnp.eye(D), c / s + b)
            surrogate = float(jax.grad(lambda l: outer_f(d, y) + s * (inner_g(d, y, l) - inner_g(d, z, l)))(lam))
        assert abs(g - surrogate) <= 1e-7 * abs(surrogate), (s, g, surrogate)
        scaled.append(s * abs(g - true) / abs(true))
    assert prog.trace_counter[0] == traced, "a new sigma re-traced the program"
    # O(1/s): the relative error times s is the same constant (to 20%) across three decades of s
    assert max(scaled) / min(scaled) < 1.2, scaled
    assert 0.01 < scaled[0] / 10 < 0.5  # the bias is visible at s = 10 and small at s = 1000
    assert scaled[2] / 1000 < 2e-3
    # the value is the true objective (the exact inner solution), not the penalised surrogate
    with jax.enable_x64(True):
        want = float(validation_loss(d, lam))
    assert prog.objective({"lam": lam}, data) == pytest.approx(want, rel=1e-9)


WEIGHTED = HEADER + """param lam: real in positive = 1.0
param u: real[n] = 0
let w = argmin(v in real[d]: mean(i in 0..n: sigmoid(u[i]) * (dot(Xtr[i], v) - ytr[i])^2) / 2 + lam / 2 * sumsq(v))
minimize mean(j in 0..m: (dot(Xva[j], w) - yva[j])^2) / 2
estimate v by penalty(sigma = 50, steps = 0, lr = 0.1, inner = sgd(steps = 2000))
estimate i by sgd(batch = 10)
estimate j by sgd(batch = 10)
"""


def test_stochastic_penalty_estimate_is_unbiased_for_the_surrogate_gradient(data):
    """Minibatched sums at both levels (per-example weights sigmoid(u_i) in the inner sum): at fixed
    (x, y, z) (``steps = 0``: the state stays at the exact y_s, z*) the mean of many estimates matches
    the exact surrogate gradient grad_x [f(y) + s (g(y, x) - g(z, x))], per coordinate (z-test);
    enough draws that a bias of 1% of the gradient's norm would fail."""
    prog = vrlang.compile(WEIGHTED, x64=True)
    assert not prog.choices["v"].unbiased
    est = prog.gradient_estimator(data)
    params = {"lam": 0.8, "u": np.linspace(-1.0, 1.0, N)}
    state = est.init(params)
    with jax.enable_x64(True):
        d = {k: jnp.asarray(v) for k, v in data.items()}
        y, z = state["v"]["y"], state["v"]["z"]
        assert float(jnp.linalg.norm(y - z)) > 1e-3  # the penalty point differs from the inner solution

        def surrogate(p):
            wts = jax.nn.sigmoid(p["u"])
            return outer_f(d, y) + 50.0 * (inner_g(d, y, p["lam"], wts) - inner_g(d, z, p["lam"], wts))

        p = {k: jnp.asarray(v) for k, v in params.items()}
        exact = jax.grad(surrogate)(p)
        keys = jax.random.split(jax.random.PRNGKey(11), 4000)
        grads, states = jax.jit(jax.vmap(lambda k: est.module.estimate(p, state, k)))(keys)
    # the state does not move with steps = 0 (only the step count does)
    np.testing.assert_array_equal(np.asarray(states["v"]["y"][0]), np.asarray(y))
    g = np.concatenate([np.asarray(grads["lam"])[:, None], np.asarray(grads["u"])], axis=1)
    e = np.concatenate([[float(exact["lam"])], np.asarray(exact["u"])])
    # (the lam coordinate does not depend on the draw: lam multiplies no sampled sum; a rounding floor)
    se = np.hypot(g.std(axis=0, ddof=1) / np.sqrt(len(g)), 1e-12 * np.abs(e).max())
    zs = (g.mean(axis=0) - e) / se
    assert np.all(np.abs(zs) < 4.5), zs  # 51 coordinates
    # power: along the exact gradient, 4 standard errors are below 1% of its norm
    unit = e / np.linalg.norm(e)
    proj = g @ unit
    assert 4 * proj.std(ddof=1) / np.sqrt(len(g)) < 0.01 * np.linalg.norm(e)
    assert abs(proj.mean() - np.linalg.norm(e)) / (proj.std(ddof=1) / np.sqrt(len(g))) < 4
    # and a deliberately biased variant (no n/b reweighting of the inner minibatch) fails
    zb = (g[:, 1:].mean(axis=0) * 10 / N - e[1:]) / (se[1:] * 10 / N)
    assert np.max(np.abs(zb)) > 10


def test_penalty_solve_reaches_the_bilevel_optimum(data):
    """Single-loop F2SA (one tracking step per outer step) with adam reaches the optimum lam of the
    validation loss (the O(1/s) bias moves it by well under the tolerance at s = 300); a second solve
    with another sigma (a const) does not recompile."""
    best = best_lam(data)
    prog = vrlang.compile(RIDGE + "estimate v by penalty(sigma = s, steps = 1, inner = sgd(steps = 300))\n"
                          "solve by adam(lr = 0.05, steps = 300)\n", x64=True)
    r = prog.solve(data, key=1, consts={"s": 300.0})
    assert abs(float(r.params["lam"]) - best) < 0.03 * best, (r.params["lam"], best)
    traced = loop.TRACE_COUNT[0]
    r2 = prog.solve(data, key=1, consts={"s": 30.0})
    assert loop.TRACE_COUNT[0] == traced
    assert abs(float(r2.params["lam"]) - best) > abs(float(r.params["lam"]) - best)  # more bias at small sigma


def test_borep_solve_reaches_the_bilevel_optimum(data):
    """BO-REP: lower variable refined once, updated every 4 outer steps, Neumann hypergradient at the
    tracked y, normalised momentum on the upper variable (solver `normalized`)."""
    best = best_lam(data)
    prog = vrlang.compile(RIDGE + "estimate v by borep(period = 4, steps = 5, iters = 30, inner = sgd(steps = 300))\n"
                          "solve by normalized(lr = 0.005, beta = 0.9, steps = 300)\n", x64=True)
    r = prog.solve(data, key=1)
    assert abs(float(r.params["lam"]) - best) < 0.02 * best, (r.params["lam"], best)
    # the lower variable moves only every `period` steps (the state after init, then 5 estimates)
    est = prog.gradient_estimator(data)
    st = est.init({"lam": 0.8})
    ys = [np.asarray(st["v"]["y"])]
    for k in range(5):
        _, st = est.estimate({"lam": 0.8}, st, k)
        ys.append(np.asarray(st["v"]["y"]))
    moved = [not np.array_equal(a, b) for a, b in zip(ys, ys[1:])]
    assert moved == [False, False, False, False, True], moved  # t = 0 (refined), 1, 2, 3, then 4 % 4 == 0


MULTI = MULTITASK + "estimate v by penalty(sigma = 20, inner = sgd(steps = 500))\n"


def test_multiblock_penalty_keeps_one_pair_per_block(data):
    """An argmin inside a sum over tasks: the penalty term is added per task (the argmin's home is the
    task body), y and z are kept per task, and a step that samples 2 tasks moves only their rows.
    Program.grad = the mean over tasks of the closed-form per-task surrogate gradients."""
    T, m, k = 6, 30, 20
    d = multitask_data()
    prog = vrlang.compile(MULTI, x64=True)
    lam, s = 0.7, 20.0
    with jax.enable_x64(True):
        j = {key: jnp.asarray(v) for key, v in d.items()}
        A = jnp.einsum("tmi,tmj->tij", j["Xtr"], j["Xtr"]) / m
        b = jnp.einsum("tmi,tm->ti", j["Xtr"], j["ytr"]) / m
        C = jnp.einsum("tki,tkj->tij", j["Xva"], j["Xva"]) / k
        c = jnp.einsum("tki,tk->ti", j["Xva"], j["yva"]) / k
        eye = jnp.eye(D)
        z = jnp.linalg.solve(A + lam * eye, b[..., None])[..., 0]
        y = jnp.linalg.solve(C / s + A + lam * eye, (c / s + b)[..., None])[..., 0]

        def surrogate(l):
            f = jnp.mean((jnp.einsum("tki,ti->tk", j["Xva"], y) - j["yva"]) ** 2, axis=1) / 2

            def g(v):
                return jnp.mean((jnp.einsum("tmi,ti->tm", j["Xtr"], v) - j["ytr"]) ** 2, axis=1) / 2 \
                    + l / 2 * jnp.sum(v * v, axis=1)

            return jnp.mean(f + s * (g(y) - g(z)))

        want = float(jax.grad(surrogate)(lam))
    g = float(prog.grad({"lam": lam}, d)["lam"])
    assert abs(g - want) <= 1e-7 * abs(want), (g, want)
    est = prog.gradient_estimator(d)
    st = est.init({"lam": lam})
    assert st["v"]["y"].shape == (T, D) and st["v"]["z"].shape == (T, D)
    np.testing.assert_allclose(np.asarray(st["v"]["z"]), np.asarray(z), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(np.asarray(st["v"]["y"]), np.asarray(y), rtol=1e-6, atol=1e-8)
    _, st2 = est.estimate({"lam": lam}, st, 3)
    moved = np.any(np.asarray(st2["v"]["z"]) != np.asarray(st["v"]["z"]), axis=1)
    counted = np.asarray(st2["v"]["t"]) - np.asarray(st["v"]["t"])
    assert 1 <= moved.sum() <= 2 and np.array_equal(moved, counted == 1), (moved, counted)


def test_explain_and_refusals(data):
    pen = vrlang.compile(RIDGE + "estimate v by penalty(sigma = 300, growth = 0.5, steps = 2)\n")
    text = pen.explain()
    assert "unbiased  : NO" in text and "O(1/sigma)" in text and "F2SA" in text
    assert "sigma_t = 300 * (1 + t)^0.5" in text and "no Hessian-vector products" in text
    assert "2 copies of v" in text
    bo = vrlang.compile(RIDGE + "estimate v by borep(period = 3, steps = 7)\nsolve by normalized(lr = 0.01)\n")
    text = bo.explain()
    assert "unbiased  : NO" in text and "every 3 outer steps by 7 gradient steps" in text
    assert "normalised momentum" in text and "Neumann" in text

    def refused(src, code, words, **kw):
        with pytest.raises(vrlang.VrError) as info:
            vrlang.compile(src, **kw)
        assert info.value.code == code and words in info.value.render(), info.value.render()

    refused(RIDGE, "E302", "positive", estimators={"v": "penalty(sigma = -1)"})
    refused(RIDGE, "E301", "lr", estimators={"v": "penalty(linsolve = cg)"})
    refused(RIDGE, "E302", "real scalar const", estimators={"v": "penalty(sigma = nope)"})
    refused(RIDGE, "E302", "integer", estimators={"v": "borep(period = 2.5)"})
    refused(HEADER + "param lam: real in positive = 1.0\nminimize min(v in real[d]: mean(i in 0..n: "
            "(dot(Xtr[i], v) - ytr[i])^2) + lam * sumsq(v))\n", "E303", "Danskin", estimators={"v": "penalty"})
    # borep needs the normalised-momentum solver, at compile time and when another solver is given to solve()
    refused(RIDGE, "E503", "normalized(lr", estimators={"v": "borep"}, solver="adam(lr = 0.1)")
    with pytest.raises(vrlang.VrError) as info:
        bo.solve(data, solver="sgd(lr = 0.1, steps = 3)")
    assert info.value.code == "E503"
    # stochastic inner problems: fine with penalty (implicit with neumann: tests/test_implicit_stochastic.py;
    # borep: tests/test_borep_stochastic.py), still refused with implicit(linsolve = cg)
    vrlang.compile(RIDGE, estimators={"v": "penalty", "i": "sgd(batch = 5)"})
    refused(RIDGE, "E391", "estimate v by penalty", estimators={"i": "sgd(batch = 5)"})
    refused(RIDGE, "E391", "with `penalty`, `borep` and `implicit(linsolve = neumann)` only",
            estimators={"v": "implicit(linsolve = cg)", "i": "sgd(batch = 5)"})
    # binder state is threaded through full/sgd sums only
    refused(RIDGE, "E393", "full or sgd", estimators={"v": "penalty", "j": "svrg(batch = 5)"})
    # two penalty argmins in one body: one term per home
    two = HEADER + """param lam: real in positive = 1.0
minimize sumsq(argmin(v in real[d]: mean(i in 0..n: (dot(Xtr[i], v) - ytr[i])^2) + lam * sumsq(v)))
       + sumsq(argmin(q in real[d]: mean(i2 in 0..n: (dot(Xtr[i2], q) - ytr[i2])^2) + 2 * lam * sumsq(q)))
estimate v by penalty
estimate q by penalty
"""
    refused(two, "E391", "one penalty argmin per body")
    # ... but a penalty and an implicit argmin side by side are fine
    vrlang.compile(two.replace("estimate q by penalty", "estimate q by implicit"))


def test_decision_binders_are_solved_once_at_their_home(data):
    """The argmin inside the validation mean over j does not use j: it is solved once (one warm
    start of shape [d], not one per validation item), and its home is the objective."""
    from vrlang.ir import homes

    prog = vrlang.compile(RIDGE, x64=True)
    (home,) = homes.homes(prog.checked.objective).values()
    assert home is None
    st = prog.gradient_estimator(data).init({"lam": 1.0})
    assert st["v"].shape == (D,)


def test_normalized_solver_takes_steps_of_length_lr():
    """normalized(lr, beta = 0): u -= lr g/|g|; on |w - (3, 4)|^2 every step has length lr along (0.6, 0.8)."""
    prog = vrlang.compile("param w: real[2] = 0\nminimize sumsq(w - [3, 4])\n"
                          "solve by normalized(lr = 0.1, beta = 0, steps = 5)\n", x64=True)
    r = prog.solve()
    np.testing.assert_allclose(r.params["w"], [0.3, 0.4], rtol=1e-12)
    with pytest.raises(vrlang.VrError) as info:
        vrlang.compile("param w: real = 0\nminimize w^2\nsolve by normalized(lr = 0.1, beta = 1.5)\n")
    assert info.value.code == "E302"
