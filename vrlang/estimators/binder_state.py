r"""Binder state: estimators whose binders remember something between steps.

Some binder estimators keep state across the steps of a solve:

* a decision binder estimated by ``implicit`` warm-starts its inner solver at the previous
  step's solution (:class:`vrlang.estimators.bilevel.Implicit` with ``warm``);
* ``penalty`` (:mod:`vrlang.estimators.penalty`) tracks the pair ``y``, ``z`` of F2SA and
  ``borep`` (:mod:`vrlang.estimators.borep`) the periodically updated lower variable; a state
  may be any pytree of arrays (a dict for these two);
* inside a finite sum over blocks, ``mean(t in 0..T: f_t(argmin(v: g_t(v, x))))``, each
  block keeps its own inner variable: the state has a leading axis of size ``T``, a step that
  samples blocks :math:`B` reads and rewrites only the rows :math:`t \in B`.  Only the sums
  whose variable the inner problem uses (directly or through a binder inside them) add an
  axis: a decision binder is solved once at its *home* (:mod:`vrlang.ir.homes`), so an argmin
  inside a validation mean that does not use the validation index keeps a single state.  With
  ``estimate t by sgd(batch = b)`` a step solves ``b`` inner problems, each from its block's
  last solution -- the blockwise scheme of multi-block bilevel methods (Hu, Zhang, Zhang &
  Yang, "Blockwise stochastic variance-reduced methods with parallel speedup for
  multi-block bilevel optimization", ICML 2023), here without their variance reduction.

The compiled objective then has a second form ``fn_state(params, data, consts, key,
memory) -> (value, new_memory)`` (``memory`` maps binder names to arrays, ``None`` before
the first step: every binder starts from its declared ``init``).  :class:`StatefulGradient`
threads ``memory`` through the estimator state of the ``full`` and ``sgd`` families:

.. math::
    (g_t, m_{t+1}) = \big(\nabla_x F(x_t; \xi_t, m_t),\; \mathrm{sg}[\text{new state}]\big),

i.e. one forward/backward pass gives both the gradient and the next state (``jax.grad``
with ``has_aux``).  The state never carries gradient (``stop_gradient``): a warm start
changes where an inner solve starts, not the solution map it differentiates, so the bias
status of every estimator is unchanged.  The initial state is the state after one exact
evaluation (every block solved once from ``init``).
"""

from __future__ import annotations

import equinox as eqx
import jax

from vrlang.estimators.base import AbstractGradientEstimator, CompiledObjective


class StatefulGradient(AbstractGradientEstimator):
    """``full`` (``exact = True``) or ``sgd`` gradients of an objective with binder state."""

    objective: CompiledObjective
    evals_per_step: float = eqx.field(static=True)
    steps_per_epoch: int = eqx.field(static=True)
    exact: bool = eqx.field(static=True, default=False)

    def init(self, params, key):
        return self.objective.with_state(params, None, None)[1]

    def estimate(self, params, state, key):
        k = None if self.exact else key
        grads, memory = jax.grad(lambda p: self.objective.with_state(p, k, state), has_aux=True)(params)
        return grads, memory
