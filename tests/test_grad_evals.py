"""``grad_evals`` of programs with decision binders (vrlang.estimators.inner_cost), counted by hand.

Ridge (tests/test_bilevel.py): n = 50 training rows inside the argmin, m = 40 validation rows outside.
A decision binder is solved once per item of its home (here: once per step, at the root), not once per
validation row; stocBiO's inner iterations are static and counted: per solve ``steps`` minibatch
gradients, the Neumann series twice (forward on a zero vector, backward) = 2 (Q - 1) HVPs = 4 (Q - 1)
gradients, and 2 for the mixed derivative of the cross term, on top of the cross-term gradient.
"""

from __future__ import annotations

import numpy as np

import vrlang

from test_bilevel import M, N, data  # noqa: F401  (the ridge problem and its data)
from test_implicit_stochastic import RIDGE

STOCBIO = "estimate v by implicit(linsolve = neumann, iters = 5, steps = 3, lr = 0.05)\nestimate i by sgd(batch = 10)\n"


def test_stocbio_grad_evals_count_the_inner_iterations(data):
    B, steps, Q = 10, 3, 5
    per_solve = B * (1 + steps + 4 * (Q - 1) + 2)  # 220
    prog = vrlang.compile(RIDGE + STOCBIO, x64=True)
    est = prog.gradient_estimator(data)
    assert est.evals_per_step == M + per_solve  # the whole validation sum + one stocBiO solve
    # with the validation sum minibatched too
    est4 = vrlang.compile(RIDGE + STOCBIO + "estimate j by sgd(batch = 4)\n", x64=True).gradient_estimator(data)
    assert est4.evals_per_step == 4 + per_solve
    # the solve history accumulates them per step taken (an epoch is 5 steps here; 6 steps in all)
    r = prog.solve(data, key=0, solver="sgd(lr = 0.01, steps = 6)")
    assert r.steps == 6
    np.testing.assert_array_equal(r.history["grad_evals"], [0, 5 * (M + per_solve), 6 * (M + per_solve)])


def test_multiblock_stocbio_counts_each_sampled_block():
    """An argmin inside the sum over tasks (home: the task), 2 tasks drawn per step, 30 rows per task
    minibatched by 10 inside: 2 validation evaluations + 2 solves of 10 (1 + 0 + 4 * 14 + 2)."""
    from test_binder_state import SRC as MULTITASK, multitask_data

    src = MULTITASK.replace("mean((Xtr[t] @ v - ytr[t])^2) / 2", "mean(i in 0..m: (dot(Xtr[t, i], v) - ytr[t, i])^2) / 2")
    src += "estimate v by implicit(linsolve = neumann, iters = 15, steps = 0)\nestimate i by sgd(batch = 10)\n"
    est = vrlang.compile(src, x64=True).gradient_estimator(multitask_data())
    assert est.evals_per_step == 2 + 2 * 10 * (1 + 0 + 4 * 14 + 2)


def test_exact_implicit_counts_the_argmin_once_not_per_validation_row(data):
    """The exact method (tolerance-stopped inner solver: iterations not counted, documented) is solved once
    per step at its home (the root): M validation rows + one gradient of the N-row inner objective, not
    M * N as the plain count of the nested sums gave."""
    est = vrlang.compile(RIDGE, x64=True).gradient_estimator(data)
    assert est.evals_per_step == M + N


def test_unroll_penalty_borep_count_their_static_inner_iterations(data):
    """Per step, with every sum exact (M = 40 validation rows, N = 50 training rows):
    unroll(steps = 7): 7 gradients forward + 7 x (recomputed step + its VJP, an HVP = 2) backward = 28 of g;
    penalty(steps = 2): 2 x (grad g at z + grad (f/s + g) at y) + f(y) + g(y) + g(z) = 6 of g and 3 of f;
    borep(period = 4, steps = 8, iters = 6): 8/4 amortised + 5 HVPs + the mixed derivative (2) + 1 = 15 of g."""
    def evals(spec, solver=None):
        return vrlang.compile(RIDGE, estimators={"v": spec}, solver=solver, x64=True).gradient_estimator(data).evals_per_step

    assert evals("unroll(steps = 7, lr = 0.1)") == M + 28 * N
    assert evals("unroll(steps = 7)") == M + (28 + 60) * N  # lr = auto: 30 power-iteration HVPs per solve
    assert evals("penalty(steps = 2, lr = 0.1)") == 3 * M + 6 * N
    assert evals("borep(period = 4, steps = 8, iters = 6, lr = 0.1)", "normalized(lr = 0.01)") == M + 15 * N
