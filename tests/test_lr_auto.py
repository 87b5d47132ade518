"""``lr = auto`` for saga/svrg/lsvrg on a GLM: the minibatch (expected-smoothness) step.

* the expected smoothness of ``b`` items drawn with replacement, L(b) = (1 - 1/b) L + L_max/b
  with L_max = max_i L_i/(n p_i), against a brute-force computation on quadratics: every
  ordered minibatch of ``n = 6`` items enumerated for b = 1, 2, 3 (uniform and importance
  sampling); the exact constant, sup_e E||H_B e||^2 / e^T H e, never exceeds the formula, equals
  it where the bound is attained (orthogonal items of equal norm), and the b-nice formula
  of the papers (sampling without replacement; also checked by enumerating subsets) would be
  too small for this sampler -- the test tells the two samplings apart;
* the step chosen for each family equals the rule computed by hand from the data (L from
  numpy's eigenvalues, L_i from the row norms), with uniform and importance sampling, for
  a mean and for a sum, and with the power-iteration path (more than 64 params);
* ``explain`` and the note name the rule and the constants.  (``solve`` with ``lr = auto``
  on breast cancer, its ``Result.info`` and the epochs it needs: ``test_vr_estimators.py``.)
"""

from __future__ import annotations

import itertools
import math

import jax
import numpy as np
import pytest

import vrlang
from vrlang.backend.structured import DENSE_MAX, expected_smoothness, glm_auto_lr, minibatch_step
from vrlang.estimators.sampling import BOUND

# ------------------------------------------------------------------ L(b) by enumeration


def _exact(H_items, probs, b, replace=True):
    """(L*, rho*) of the minibatch Hessian H_B = (1/b) sum_k H_{j_k}/(n p_{j_k}) of a sum of quadratics.

    E||grad f_B(x) - grad f_B(y)||^2 = e^T E[H_B^2] e with e = x - y, and D_f(x, y) = e^T H e / 2, so the
    tightest expected smoothness is the top generalised eigenvalue of (E[H_B^2], H), and the tightest
    expected residual that of (E[H_B^2] - H^2, H).  Every ordered minibatch is enumerated (with
    replacement), or every subset (``replace = False``, uniform: b-nice sampling).
    """
    n = len(H_items)
    H = np.mean(H_items, axis=0)
    M = np.zeros_like(H)
    if replace:
        for t in itertools.product(range(n), repeat=b):
            HB = sum(H_items[j] / (n * probs[j]) for j in t) / b
            M += np.prod([probs[j] for j in t]) * HB @ HB
    else:
        subsets = list(itertools.combinations(range(n), b))
        for t in subsets:
            HB = sum(H_items[j] for j in t) / b
            M += HB @ HB / len(subsets)
    w, V = np.linalg.eigh(H)
    Hmh = V @ np.diag(w ** -0.5) @ V.T
    top = lambda A: np.linalg.eigvalsh(Hmh @ A @ Hmh)[-1]  # noqa: E731
    return top(M), top(M - H @ H), M


def _nice(L, L_max, n, b):
    """The b-nice (without replacement) expected smoothness of Gazagnadou, Gower & Salmon 2019."""
    return n * (b - 1) / (b * (n - 1)) * L + (n - b) / (b * (n - 1)) * L_max


def _random_items(seed, n=6, d=3):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, d)) * np.logspace(0, 1, n)[:, None]
    return np.stack([np.outer(a, a) + 0.1 * np.eye(d) for a in A])


@pytest.mark.parametrize("b", [1, 2, 3])
def test_expected_smoothness_against_enumeration(b):
    n = 6
    for seed in range(3):
        H_items = _random_items(seed)
        L = np.linalg.eigvalsh(H_items.mean(0))[-1]
        Li = np.array([np.linalg.eigvalsh(h)[-1] for h in H_items])
        for probs in (np.full(n, 1 / n), 0.9 * Li / Li.sum() + 0.1 / n):
            L_star, rho_star, M = _exact(H_items, probs, b)
            L_max = (Li / (n * probs)).max()
            # the variance identity behind the formula: E[H_B^2] = (1/b) E[(H_j/(n p_j))^2] + (1 - 1/b) H^2
            H = H_items.mean(0)
            one = sum(p * (h / (n * p)) @ (h / (n * p)) for p, h in zip(probs, H_items))
            np.testing.assert_allclose(M, one / b + (1 - 1 / b) * H @ H, rtol=1e-12, atol=1e-12)
            assert L_star <= expected_smoothness(L, L_max, b) * (1 + 1e-12)
            assert rho_star <= L_max / b * (1 + 1e-12)
            assert L_star >= L * (1 - 1e-12)  # no sampler beats the full gradient
    # orthogonal items of equal norm (H_i = n s e_i e_i^T, so L = s, L_max = n s): the bound is attained
    s = 0.7
    H_items = np.stack([n * s * np.outer(e, e) for e in np.eye(n)])
    uniform = np.full(n, 1 / n)
    L_star, rho_star, _ = _exact(H_items, uniform, b)
    assert L_star == pytest.approx(expected_smoothness(s, n * s, b), rel=1e-12)
    assert rho_star <= n * s / b * (1 + 1e-12)  # (here (L_max - L)/b: the bound L_max/b drops -||grad f||^2)
    # the papers' b-nice constant is exact for b-nice sampling (subsets) ...
    assert _exact(H_items, uniform, b, replace=False)[0] == pytest.approx(_nice(s, n * s, n, b), rel=1e-12)
    # ... and too small for sampling with replacement as soon as b > 1: a rule built on it would overstep
    if b > 1:
        assert _nice(s, n * s, n, b) < L_star * (1 - 0.05)


def test_expected_smoothness_endpoints_and_steps():
    assert expected_smoothness(2.0, 50.0, 1) == 50.0
    assert expected_smoothness(2.0, 50.0, 10 ** 9) == pytest.approx(2.0, rel=1e-6)
    # b = 1: 1/(4 L_max + mu / pi_min) (SAGA), 1/(6 L_max) (Free-SVRG and L-SVRG)
    assert minibatch_step("saga", 2.0, 50.0, 1, mu=0.1, pi_min=0.01)["lr"] == pytest.approx(1 / (200 + 10))
    assert minibatch_step("svrg", 2.0, 50.0, 1)["lr"] == pytest.approx(1 / 300)
    assert minibatch_step("lsvrg", 2.0, 50.0, 1)["lr"] == pytest.approx(1 / 300)
    # b = 10: L(b) = 0.9 * 2 + 5 = 6.8, rho(b) = 5
    st = minibatch_step("saga", 2.0, 50.0, 10, mu=0.1, pi_min=0.5)
    assert (st["L_b"], st["rho_b"]) == (pytest.approx(6.8), pytest.approx(5.0))
    assert st["lr"] == pytest.approx(1 / (4 * 6.8))
    assert minibatch_step("saga", 2.0, 50.0, 10, mu=10.0, pi_min=0.5)["lr"] == pytest.approx(1 / (4 * (5 + 5)))
    assert minibatch_step("svrg", 2.0, 50.0, 10)["lr"] == pytest.approx(1 / (2 * (6.8 + 10)))
    assert minibatch_step("lsvrg", 2.0, 50.0, 10)["lr"] == pytest.approx(1 / (6 * 6.8))


# ------------------------------------------------------------------ the step chosen by solve

LAM = 0.05
HEAD = "data X: real[n, d]\ndata y: real[n]\nparam w: real[d] = 0\n"
LOGISTIC = HEAD + f"minimize mean(i in 0..n: softplus(-y[i] * dot(X[i], w))) + {LAM} / 2 * sumsq(w)\n"
LSQ_SUM = HEAD + "minimize sum(i in 0..n: (dot(X[i], w) - y[i])^2 / 2)\n"


def _data(n, d, seed=0, spike=0.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * np.logspace(0, 1, n)[:, None]
    if spike:  # one clear top eigenvalue: the power iteration converges fast
        X = X + spike * np.outer(rng.normal(size=n), rng.normal(size=d))
    y = np.where(X @ rng.normal(size=d) + rng.normal(size=n) > 0, 1.0, -1.0)
    return {"X": X, "y": y}


def _by_hand(fam, b, L_i, L, probs, mu):
    n = len(L_i)
    L_max = (L_i / (n * probs)).max()
    Lb = (1 - 1 / b) * L + L_max / b
    rho = L_max / b
    pi_min = 1 - (1 - probs.min()) ** b
    return {"saga": 1 / (4 * max(Lb, rho + mu / (4 * pi_min))), "svrg": 1 / (2 * (Lb + 2 * rho)),
            "lsvrg": 1 / (6 * Lb)}[fam]


def _auto(prog, data):
    with jax.enable_x64(True):
        _, fns, jdata, jconsts = prog._bind(data)
        obj = prog._objective_module(fns, jdata, jconsts)
        p0 = {"w": np.zeros(data["X"].shape[1])}
        lr, note, detail = glm_auto_lr(prog, prog.solver, fns, obj, p0)
        bound = obj.data.get(BOUND, {}).get("i")
    n = data["X"].shape[0]
    return lr, note, detail, (np.full(n, 1 / n) if bound is None else np.asarray(bound.probs))


RULE = {"saga": "1/(4 max(L(b), rho(b) + mu/(4 pi_min)))", "svrg": "1/(2 (L(b) + 2 rho(b)))", "lsvrg": "1/(6 L(b))"}


def _logistic_constants(X):
    n = len(X)
    L_i = 0.25 * (X ** 2).sum(1) + LAM  # logistic: sup softplus'' = 1/4, y = +-1; + lam
    return L_i, 0.25 * np.linalg.eigvalsh(X.T @ X / n)[-1] + LAM


def test_step_matches_the_rule_by_hand():
    data = _data(40, 3)
    L_i, L = _logistic_constants(data["X"])
    n = len(L_i)
    prog = vrlang.compile(LOGISTIC, x64=True, estimators={"i": "saga(batch = 4)"})
    assert RULE["saga"] in prog.explain() and "b = 4" in prog.explain()
    lr, note, det, _ = _auto(prog, data)
    assert lr == pytest.approx(_by_hand("saga", 4, L_i, L, np.full(n, 1 / n), LAM), rel=1e-9)
    assert (det["family"], det["batch"], det["importance_sampling"]) == ("saga", 4, False)
    assert det["L"] == pytest.approx(L, rel=1e-9) and det["L_max"] == pytest.approx(L_i.max(), rel=1e-9)
    assert det["mu"] == pytest.approx(LAM, rel=1e-9) and det["L_reg"] == pytest.approx(LAM, rel=1e-9)
    assert det["L_b"] == pytest.approx(0.75 * L + L_i.max() / 4, rel=1e-9)
    assert det["pi_min"] == pytest.approx(1 - (1 - 1 / n) ** 4, rel=1e-12)
    assert note.startswith(RULE["saga"]) and "L(b) = (1 - 1/b) L + L_max/b" in note and "sup|phi''| = 0.25" in note
    # new data of the same shape: the constants are recomputed by the same compiled functions
    data = _data(40, 3, seed=5)
    L_i, L = _logistic_constants(data["X"])
    assert _auto(prog, data)[0] == pytest.approx(_by_hand("saga", 4, L_i, L, np.full(n, 1 / n), LAM), rel=1e-9)
    cache = prog._bind(data)[1]["structured"]["cache"]
    assert cache[("smoothness", "i")]._cache_size() == 1 and cache[("whole", "i")]._cache_size() == 1
    # (Result.info["lr"], "lr_auto" and "lr_auto_detail" from solve: test_vr_estimators.py, convergence)


@pytest.mark.parametrize("fam", ["svrg", "lsvrg"])
def test_step_with_importance_sampling(fam):
    # L_max = max_i L_i/(n p_i) with the probabilities actually sampled
    data = _data(40, 3)
    L_i, L = _logistic_constants(data["X"])
    prog = vrlang.compile(LOGISTIC, x64=True, estimators={"i": f"{fam}(batch = 4, sampling = lipschitz)"})
    assert RULE[fam] in prog.explain() and "(importance sampling)" in prog.explain()
    lr, note, det, probs = _auto(prog, data)
    assert det["importance_sampling"] and det["family"] == fam and note.startswith(RULE[fam])
    assert "max_i L_i/(n p_i)" in note
    assert lr == pytest.approx(_by_hand(fam, 4, L_i, L, probs, LAM), rel=1e-9)
    # lipschitz sampling makes max_i L_i/(n p_i) smaller than max_i L_i here: a larger step than uniform's
    assert lr > _by_hand(fam, 4, L_i, L, np.full(len(L_i), 1 / len(L_i)), LAM)


def test_step_for_a_sum_with_weights_and_the_power_iteration_path():
    # least squares summed (c = n): L_i = n ||x_i||^2, L = lambda_max(X^T X), no regulariser (mu = 0)
    data = _data(40, 3, seed=1)
    X = data["X"]
    prog = vrlang.compile(LSQ_SUM, x64=True, estimators={"i": "svrg(batch = 8, sampling = weights(norm(X[i])))"})
    lr, _, det, probs = _auto(prog, data)
    L_i = 40 * (X ** 2).sum(1)
    assert lr == pytest.approx(_by_hand("svrg", 8, L_i, np.linalg.eigvalsh(X.T @ X)[-1], probs, 0.0), rel=1e-9)
    assert det["mu"] == 0.0
    # more than DENSE_MAX params: L and mu by power iteration
    d = DENSE_MAX + 16
    data = _data(120, d, seed=2, spike=3.0)
    X = data["X"]
    prog = vrlang.compile(LOGISTIC, x64=True, estimators={"i": "saga(batch = 16)"})
    lr, _, det, _ = _auto(prog, data)
    L = 0.25 * np.linalg.eigvalsh(X.T @ X / 120)[-1] + LAM
    assert det["L"] == pytest.approx(L, rel=1e-6) and det["mu"] == pytest.approx(LAM, rel=1e-6)
    assert lr == pytest.approx(_by_hand("saga", 16, 0.25 * (X ** 2).sum(1) + LAM, L, np.full(120, 1 / 120), LAM),
                               rel=1e-6)
    assert math.isfinite(lr) and lr > 0
