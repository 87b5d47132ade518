"""Finite-sum gradient estimators.

For an objective :math:`f(w) = g(w) + \\frac1n\\sum_i f_i(w)` the compiler provides the
stochastic objective :math:`F(w;\\xi)` (each sampled sum replaced by its reweighted
minibatch, :mod:`vrlang.estimators.sampling`) with :math:`E_\\xi F(w;\\xi) = f(w)`.
The estimators below are written against that one function, so they apply to any
program whose sampled sums enter the objective linearly.

* :class:`FullGradient` -- :math:`\\nabla f(w)` exactly (``full``).
* :class:`MinibatchGradient` -- :math:`\\nabla F(w;\\xi)` (``sgd``; Robbins & Monro 1951).
* :class:`SVRGGradient` -- :math:`\\nabla F(w;\\xi) - \\nabla F(\\tilde w;\\xi) + \\nabla f(\\tilde w)`
  with the snapshot :math:`\\tilde w` refreshed every ``epoch`` steps (Johnson & Zhang,
  "Accelerating stochastic gradient descent using predictive variance reduction",
  NeurIPS 2013).  Unbiased: the two sampled terms share :math:`\\xi` and have equal
  means up to the control variate's exact mean :math:`\\nabla f(\\tilde w)`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from vrlang.estimators.base import AbstractGradientEstimator, CompiledObjective


class FullGradient(AbstractGradientEstimator):
    objective: CompiledObjective
    evals_per_step: float = eqx.field(static=True)
    steps_per_epoch: int = eqx.field(static=True)

    def estimate(self, params, state, key):
        return jax.grad(self.objective.value)(params), state


class MinibatchGradient(AbstractGradientEstimator):
    objective: CompiledObjective
    evals_per_step: float = eqx.field(static=True)
    steps_per_epoch: int = eqx.field(static=True)

    def estimate(self, params, state, key):
        return jax.grad(self.objective.sample)(params, key), state


class SVRGState(eqx.Module):
    snapshot: dict
    full_grad: dict
    count: jax.Array


class SVRGGradient(AbstractGradientEstimator):
    objective: CompiledObjective
    epoch: int = eqx.field(static=True)  # steps between snapshot refreshes
    evals_per_step: float = eqx.field(static=True)
    steps_per_epoch: int = eqx.field(static=True)

    def init(self, params, key):
        return SVRGState(params, jax.grad(self.objective.value)(params), jnp.zeros((), jnp.int32))

    def estimate(self, params, state, key):
        def refresh(s):
            return SVRGState(params, jax.grad(self.objective.value)(params), s.count)

        state = jax.lax.cond((state.count > 0) & (state.count % self.epoch == 0), refresh, lambda s: s, state)
        g = jax.grad(self.objective.sample)
        gw, gs = g(params, key), g(state.snapshot, key)
        grads = jax.tree_util.tree_map(lambda a, b, c: a - b + c, gw, gs, state.full_grad)
        return grads, SVRGState(state.snapshot, state.full_grad, state.count + 1)
