"""JAX implementations of the builtins and primitive operations.

Keys match :data:`vrlang.check.builtins.BUILTINS` plus the operator names the checker
emits (``add``, ``matmul``, ``maximum``, ...).  ``norm`` and ``sqrt`` use safe
gradients at zero so a solve started at ``w = 0`` does not produce NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp


def _safe_norm(x):
    sq = jnp.sum(jnp.square(x))
    nonzero = sq > 0
    return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def _relu(x):
    return jnp.maximum(x, 0)


def _pow(a, b):
    return jnp.power(a, b)


UNARY = {
    "exp": jnp.exp, "log": jnp.log, "log1p": jnp.log1p, "expm1": jnp.expm1, "sqrt": jnp.sqrt,
    "sin": jnp.sin, "cos": jnp.cos, "tan": jnp.tan, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus, "log1pexp": jax.nn.softplus, "relu": _relu,
    "log_sigmoid": jax.nn.log_sigmoid, "square": jnp.square, "abs": jnp.abs, "neg": jnp.negative,
    "not": jnp.logical_not,
    "logsumexp": lambda x: logsumexp(x), "sumsq": lambda x: jnp.sum(jnp.square(x)), "norm": _safe_norm,
    "sum": jnp.sum, "mean": jnp.mean, "max": jnp.max, "min": jnp.min, "prod": jnp.prod,
    "softmax": lambda x: jax.nn.softmax(x, axis=-1), "log_softmax": lambda x: jax.nn.log_softmax(x, axis=-1),
    "transpose": jnp.transpose,
}

BINARY = {
    "add": jnp.add, "sub": jnp.subtract, "mul": jnp.multiply, "div": jnp.true_divide, "pow": _pow,
    "eq": jnp.equal, "ne": jnp.not_equal, "lt": jnp.less, "le": jnp.less_equal, "gt": jnp.greater,
    "ge": jnp.greater_equal, "and": jnp.logical_and, "or": jnp.logical_or,
    "maximum": jnp.maximum, "minimum": jnp.minimum, "dot": jnp.dot, "matmul": jnp.matmul,
}

TERNARY = {"where": jnp.where, "clip": jnp.clip}

#: names of every builtin function the backend implements (checked against the checker's table)
IMPLEMENTED = set(UNARY) | set(BINARY) | set(TERNARY) | {"one_hot", "max", "min"}
