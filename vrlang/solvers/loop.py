"""The solve loop: the whole solve is one jitted ``lax.while_loop`` over epochs.

Each epoch runs ``steps_per_epoch`` steps of ``estimate -> optax update`` (an inner
``while_loop``), then evaluates the exact objective, the full-gradient norm and the
reports, records them in preallocated history arrays, and checks the stopping rules.
Hyperparameters (step size, momentum, consts, data) are traced arguments, so changing
them does not recompile; only shapes and the program's structure are static.

Safety: a step that produces a NaN/inf parameter is not taken; an epoch whose
objective is not finite is rolled back to the last recorded parameters.  Both stop the
solve with ``Status.DIVERGED``.

Wall time and progress come from the host through ``io_callback`` once per epoch.

PRNG on the CPU: JAX lowers the threefry hash there as a rolled loop (5 iterations of a few
tiny kernels: a smaller program), and every step draws through it several times (the step's
key split, the minibatch's ``fold_in`` and ``randint``), so at small batches those loops were a
large part of a step.  The solve is lowered with JAX's unrolled lowering instead (its default on
every other platform): the same bits, straight-line code (:func:`_unrolled_threefry`).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import io_callback

from vrlang.backend.constraints import constrain
from vrlang.estimators.base import AbstractGradientEstimator, CompiledObjective
from vrlang.solvers.spec import make_optimizer
from vrlang.solvers.status import Status

# host-side progress handlers, keyed by a per-solve token (I/O only, never read by traced code)
_HANDLERS: dict[int, Callable] = {}
_TOKENS = itertools.count(1)


class _Clock:
    def __init__(self, on_epoch: Callable | None):
        self.start = time.perf_counter()
        self.on_epoch = on_epoch

    def __call__(self, epoch, obj, gnorm):
        if int(epoch) == 0:  # the clock starts at the initial point, after compilation
            self.start = time.perf_counter()
        t = time.perf_counter() - self.start
        if self.on_epoch is not None:
            self.on_epoch(int(epoch), float(obj), float(gnorm), t)
        return np.float32(t)


def _host_tick(token, epoch, obj, gnorm):
    return _HANDLERS[int(token)](epoch, obj, gnorm)


class SolveProblem(eqx.Module):
    """What the loop needs: an estimator, the exact objective, reports, constraints."""

    estimator: AbstractGradientEstimator
    exact: CompiledObjective
    reports: CompiledObjective | None
    constraints: tuple = eqx.field(static=True)  # ((name, kind, bounds), ...)
    sign: float = eqx.field(static=True, default=1.0)  # +1 minimize, -1 maximize

    def to_params(self, u):
        kinds = {n: (k, b) for n, k, b in self.constraints}
        return {n: constrain(*kinds.get(n, (None, None)), v) for n, v in u.items()}

    def solver_objective(self, u):
        return self.sign * self.exact.value(self.to_params(u))


def _finite(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.array(True)


def _select(pred, a, b):
    return jax.tree_util.tree_map(lambda x, y: jnp.where(pred, x, y), a, b)


@contextlib.contextmanager
def _unrolled_threefry():
    """Lower ``threefry2x32`` with JAX's generic (unrolled) rule instead of its CPU rule (a rolled
    ``fori_loop`` of 5 rounds) while the solve is traced and compiled.

    Both rules compute the same function (the same random bits, so the same minibatches and
    iterates); only the CPU program differs: a per-step PRNG call becomes straight-line fused code
    instead of a while loop of small kernels (measured on a 2-core CPU, n = 1e5, d = 50, batch 16:
    see benchmarks/RESULTS.md).  JAX private API: where it is not found (another JAX version) the
    CPU rule is kept.  Swapping the table entry is process-wide while the context is open, which
    is harmless for the same reason (the same bits).
    """
    try:
        from jax._src.interpreters import mlir
        from jax._src.random.threefry2x32 import threefry2x32_p
        cpu_rules = mlir._platform_specific_lowerings["cpu"]
        assert threefry2x32_p in mlir._lowerings
    except Exception:  # pragma: no cover - another JAX layout: keep its CPU lowering
        yield
        return
    saved = cpu_rules.pop(threefry2x32_p, None)
    try:
        yield
    finally:
        if saved is not None:
            cpu_rules[threefry2x32_p] = saved


def run(problem: SolveProblem, u0: dict, key, lr, hyper: dict, limits: dict, *, solver: str, memory: int,
        capacity: int, on_epoch: Callable | None = None) -> dict:
    """Run a solve; returns final unconstrained params, status and history (numpy)."""
    token = next(_TOKENS)
    _HANDLERS[token] = _Clock(on_epoch)
    try:
        with _unrolled_threefry():  # only the first call traces and compiles; later ones hit the cache
            out = _solve(problem, u0, key, jnp.asarray(lr, jnp.result_type(float)), hyper, limits,
                         jnp.asarray(token, jnp.int32), solver, memory, capacity)
        out = jax.device_get(out)
    finally:
        _HANDLERS.pop(token, None)
    return out


TRACE_COUNT = [0]  # incremented each time the solve is traced (tests: no second compile)


@eqx.filter_jit
def _solve(problem, u0, key, lr, hyper, limits, token, solver, memory, capacity):
    TRACE_COUNT[0] += 1
    fdt = jnp.result_type(float)
    opt = make_optimizer(solver, lr, hyper, memory)
    est = problem.estimator
    spe = est.steps_per_epoch
    n_rep = len(problem.reports.fn.names) if problem.reports is not None else 0

    def grad_u(u, grads_p):
        _, vjp = jax.vjp(problem.to_params, u)
        (g,) = vjp(grads_p)
        return jax.tree_util.tree_map(lambda x: problem.sign * x, g)

    # lbfgs runs with deterministic estimators only (the driver refuses others), so its value and
    # gradient at the current point are the exact ones: reuse those its line search stored in the state
    value_and_grad = (optax.value_and_grad_from_state(problem.solver_objective) if solver == "lbfgs"
                      else lambda u, state: jax.value_and_grad(problem.solver_objective)(u))

    def measure(u, opt_state):
        obj, g = value_and_grad(u, state=opt_state)
        gnorm = optax.tree.norm(g)
        reps = problem.reports.value(problem.to_params(u)) if n_rep else jnp.zeros((0,), fdt)
        return problem.sign * obj, gnorm, reps

    def step(_, c):
        # a step of a fixed-trip-count loop (one epoch): a step past the `steps` limit, or after a
        # non-finite one, is computed but not taken.  A loop whose trip count is known needs no
        # device-to-host read of its condition per iteration (on a GPU, that read cost more than a
        # small step); the waste is bounded by one epoch, at the end of a solve.
        # `bad` is the index of the step that went non-finite (spe while none has): the only per-step
        # bookkeeping; the steps and gradient evaluations are counted once per epoch (epoch_body), as
        # separate per-step counters cost as much as a small step's arithmetic on the CPU (measured)
        j, u, opt_state, est_state, key, bad, rem = c
        active = (bad == spe) & (j < rem)
        key, k = jax.random.split(key)
        if solver == "lbfgs":
            est_state2 = est_state
            value, g = value_and_grad(u, state=opt_state)
            updates, opt_state2 = opt.update(g, opt_state, u, value=value, grad=g, value_fn=problem.solver_objective)
        else:
            grads_p, est_state2 = est.estimate(problem.to_params(u), est_state, k)
            g = grad_u(u, grads_p)
            updates, opt_state2 = opt.update(g, opt_state, u)
        u2 = optax.apply_updates(u, updates)
        # one finiteness reduction per step: a non-finite gradient makes the new point non-finite with every
        # update rule here (sgd/momentum: u - lr g, also at lr = 0 as 0 * inf = nan; adam: inf/inf; lbfgs,
        # normalized: nan directions), and the epoch's exact objective and gradient are checked again below
        good = _finite(u2)
        take = active & good
        u = _select(take, u2, u)
        opt_state = _select(take, opt_state2, opt_state)
        est_state = est_state2  # unguarded: a bad step ends the solve and the state is discarded (a select copies it)
        return (j + 1, u, opt_state, est_state, key, jnp.where(active & ~good, j, bad), rem)

    def epoch_body(c):
        u, opt_state, est_state, key, epoch, steps, evals, status, hist, nrec, last_u = c
        rem = limits["steps"] - steps  # steps j < rem of this epoch are within the `steps` limit
        inner = (jnp.int32(0), u, opt_state, est_state, key, jnp.int32(spe), rem)
        inner = jax.lax.fori_loop(0, spe, step, inner)
        _, u, opt_state, est_state, key, bad, _ = inner
        ok = bad == spe
        # the steps taken (active): all within the limit, or up to and including the non-finite one
        active = jnp.where(ok, jnp.clip(rem, 0, spe), bad + 1)
        steps = steps + active
        evals = evals + active.astype(evals.dtype) * est.evals_per_step
        epoch = epoch + 1
        obj, gnorm, reps = measure(u, opt_state)
        t = io_callback(_host_tick, jax.ShapeDtypeStruct((), jnp.float32), token, epoch, obj, gnorm)
        finite = jnp.isfinite(obj) & jnp.isfinite(gnorm) & _finite(reps)
        u = _select(finite, u, last_u)
        rec = jnp.concatenate([jnp.stack([obj, gnorm, evals, t.astype(fdt)]).astype(fdt), reps.astype(fdt)])
        hist = jnp.where(finite, hist.at[nrec].set(rec), hist)
        nrec = nrec + finite.astype(jnp.int32)
        status = jnp.select(
            [~ok | ~finite, gnorm <= limits["tol"], (epoch >= limits["epochs"]) | (steps >= limits["steps"])
             | (nrec >= capacity), t >= limits["time"]],
            [Status.DIVERGED, Status.CONVERGED, Status.MAX_ITERATIONS, Status.TIME_LIMIT], Status.RUNNING)
        return (u, opt_state, est_state, key, epoch, steps, evals, status.astype(jnp.int32), hist, nrec, u)

    key, k0 = jax.random.split(key)
    est_state = est.init(problem.to_params(u0), k0)
    opt_state = opt.init(u0)
    obj0, gnorm0, reps0 = measure(u0, opt_state)
    t0 = io_callback(_host_tick, jax.ShapeDtypeStruct((), jnp.float32), token, 0, obj0, gnorm0)
    hist = jnp.full((capacity, 4 + n_rep), jnp.nan, fdt)
    hist = hist.at[0].set(jnp.concatenate([jnp.stack([obj0, gnorm0, jnp.zeros((), fdt), t0.astype(fdt)]).astype(fdt),
                                           reps0.astype(fdt)]))
    finite0 = jnp.isfinite(obj0) & jnp.isfinite(gnorm0)
    status0 = jnp.where(~finite0, Status.DIVERGED, jnp.where(gnorm0 <= limits["tol"], Status.CONVERGED,
                                                             Status.RUNNING)).astype(jnp.int32)
    carry = (u0, opt_state, est_state, key, jnp.int32(0), jnp.int32(0), jnp.zeros((), fdt), status0, hist,
             jnp.int32(1), u0)
    carry = jax.lax.while_loop(lambda c: c[7] == Status.RUNNING, epoch_body, carry)
    u, _, _, _, epoch, steps, evals, status, hist, nrec, _ = carry
    return {"u": u, "status": status, "epochs": epoch, "steps": steps, "history": hist, "records": nrec}
