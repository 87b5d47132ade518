"""The runtime protocol of gradient estimators (usable without the DSL).

Following optax's ``init``/``update`` split, an estimator is an equinox Module with

* ``init(params, key) -> state`` -- an explicit pytree (``None`` when stateless);
* ``estimate(params, state, key) -> (grads, state)`` -- ``grads`` has the structure of
  ``params`` (a dict name -> array) and estimates the gradient of the objective.

Hyperparameters and data are array fields, hence traced: changing them never
recompiles.  The objective is a :class:`CompiledObjective`: a pure function of
``(params, data, consts, key)`` where ``key=None`` means "exact" and a key selects the
random minibatches of the sampled sums.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import equinox as eqx
import jax


class CompiledObjective(eqx.Module):
    """An objective bound to its data and constants.

    ``fn(params, data, consts, key)`` returns a scalar; with ``key=None`` every finite
    sum is exact, with a key each sampled sum draws its minibatch, so that
    ``E_key[fn(params, ..., key)] = fn(params, ..., None)`` when the composition is
    linear (the bias analysis says when it is not).
    """

    data: dict
    consts: dict
    fn: Callable = eqx.field(static=True)
    components: int = eqx.field(static=True, default=1)  # component gradients of one exact evaluation
    # optional ``fn_at(params, data, consts, idx)``: the objective with the (single) sampled
    # sum's minibatch fixed to the indices ``idx`` (shape ``(b,)``), reweighted ``n / b``
    # (:class:`vrlang.estimators.sampling.FixedIndexSampler`); SAGA needs it.
    fn_at: Callable | None = eqx.field(static=True, default=None)
    # optional ``fn_state(params, data, consts, key, memory) -> (value, new_memory)``: the objective
    # with binder state (warm starts; :mod:`vrlang.estimators.binder_state`)
    fn_state: Callable | None = eqx.field(static=True, default=None)

    def value(self, params):
        return self.fn(params, self.data, self.consts, None)

    def sample(self, params, key):
        return self.fn(params, self.data, self.consts, key)

    def with_state(self, params, key, memory):
        """``(value, new_memory)`` with binder state ``memory`` (``None``: every binder from its init)."""
        if self.fn_state is None:
            raise ValueError("this CompiledObjective has no binder state (fn_state)")
        return self.fn_state(params, self.data, self.consts, key, memory)

    def at(self, params, idx):
        """``F(w; {idx})``; with one index ``j``, the per-item function ``h_j`` with ``mean_j h_j = f``."""
        if self.fn_at is None:
            raise ValueError("this CompiledObjective has no fixed-index form (fn_at)")
        return self.fn_at(params, self.data, self.consts, idx)


class AbstractGradientEstimator(eqx.Module):
    """Base class: subclasses define ``init`` and ``estimate``."""

    unbiased: ClassVar[bool] = True
    # Subclasses also carry two static fields: ``evals_per_step`` (component-gradient
    # evaluations per call of ``estimate``, amortised) and ``steps_per_epoch``.

    def init(self, params, key) -> Any:
        return None

    def estimate(self, params, state, key):  # pragma: no cover - abstract
        raise NotImplementedError


def tree_axpy(a, x, y):
    """a * x + y on pytrees."""
    return jax.tree_util.tree_map(lambda xi, yi: a * xi + yi, x, y)
