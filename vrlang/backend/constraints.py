"""Parameter constraints by reparameterisation (as Stan does).

The solver works on an unconstrained ``u``; the program sees ``p = T(u)``:

=================  ===============================  ==========================
constraint         T(u)                             default initial value
=================  ===============================  ==========================
(none)             u                                0
positive           softplus(u)                      1
unit_interval      sigmoid(u)                       0.5
box [lo, hi]       lo + (hi - lo) sigmoid(u)        (lo + hi) / 2
simplex            softmax(u)                       uniform 1/k
=================  ===============================  ==========================

Gradients with respect to ``u`` are ``J_T(u)^T grad_p`` (a VJP), so estimators only
ever produce gradients in the user's (constrained) coordinates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def constrain(kind: str | None, bounds, u):
    if kind is None:
        return u
    if kind == "positive":
        return jax.nn.softplus(u)
    if kind == "unit_interval":
        return jax.nn.sigmoid(u)
    if kind == "box":
        lo, hi = bounds
        return lo + (hi - lo) * jax.nn.sigmoid(u)
    if kind == "simplex":
        return jax.nn.softmax(u, axis=-1)
    raise ValueError(kind)  # pragma: no cover - the checker refuses unknown constraints


def unconstrain(kind: str | None, bounds, p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if kind is None:
        return p
    if kind == "positive":
        return p + np.log(-np.expm1(-p))  # inverse softplus
    if kind == "unit_interval":
        return np.log(p) - np.log1p(-p)
    if kind == "box":
        lo, hi = bounds
        s = (p - lo) / (hi - lo)
        return np.log(s) - np.log1p(-s)
    if kind == "simplex":
        logp = np.log(p)
        return logp - logp.mean(axis=-1, keepdims=True)
    raise ValueError(kind)  # pragma: no cover


def default_init(kind: str | None, bounds, shape) -> np.ndarray:
    if kind is None:
        return np.zeros(shape)
    if kind == "positive":
        return np.ones(shape)
    if kind == "unit_interval":
        return np.full(shape, 0.5)
    if kind == "box":
        return np.full(shape, 0.5 * (bounds[0] + bounds[1]))
    if kind == "simplex":
        return np.full(shape, 1.0 / shape[-1])
    raise ValueError(kind)  # pragma: no cover
