"""Outer solvers and stopping rules, from the ``solve by NAME(...)`` spec.

====================  =====================================================
``sgd(lr, momentum, decay)``  optax.sgd (heavy-ball momentum when given); step k is
                       lr (1 + k)^-decay (default 0: constant)
``adam(lr)``           optax.adam
``lbfgs``              optax.lbfgs with zoom line search (deterministic: needs
                       ``full`` estimators)
``normalized(lr, beta)``  normalised momentum: m = beta m + (1 - beta) g,
                       u -= lr m / ||m|| (Cutkosky & Mehta, ICML 2020; the upper
                       step of BO-REP); lr is a number (default 0.01), beta 0.9
====================  =====================================================

Stopping: ``epochs = k`` (one epoch = n component gradients), ``steps = k``,
``tol = t`` (full-gradient norm in the solver's coordinates), ``time = seconds``; the
first reached stops.  With neither ``epochs`` nor ``steps`` the default is 100 epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

from vrlang.errors import VrEstimatorError
from vrlang.estimators.spec import Spec, check_args, number

SOLVERS = ("sgd", "adam", "lbfgs", "normalized")
PLANNED = ("halpern",)
STOP_ARGS = {"epochs": "", "steps": "", "tol": "", "time": ""}
ARGS = {
    "sgd": {"lr": "", "momentum": "", "decay": "", **STOP_ARGS},
    "adam": {"lr": "", "b1": "", "b2": "", **STOP_ARGS},
    "lbfgs": {"memory": "", **STOP_ARGS},
    "normalized": {"lr": "", "beta": "", **STOP_ARGS},
}
DEFAULT_EPOCHS = 100


@dataclass(frozen=True)
class SolverConfig:
    name: str
    lr: float | str | None  # "auto" resolved at solve time
    momentum: float
    b1: float
    b2: float
    memory: int
    epochs: int | None
    steps: int | None
    tol: float | None
    time: float | None
    spec: Spec
    beta: float = 0.9  # normalized: the momentum's averaging weight
    decay: float = 0.0  # sgd: step k is lr * (1 + k)^-decay

    def hyper(self) -> dict:
        """The traced hyperparameters (changing them never recompiles)."""
        return {"momentum": self.momentum, "b1": self.b1, "b2": self.b2, "beta": self.beta, "decay": self.decay}


def solver_config(spec: Spec) -> SolverConfig:
    if spec.name not in SOLVERS:
        import difflib
        if spec.name in PLANNED:
            raise VrEstimatorError("E501", f"the solver `{spec.name}` is not available yet in this version", spec.span,
                                   f"available: {', '.join(SOLVERS)}")
        close = difflib.get_close_matches(spec.name, SOLVERS + PLANNED, n=1, cutoff=0.6)
        raise VrEstimatorError("E500", f"unknown solver `{spec.name}`", spec.span,
                               f"did you mean `{close[0]}`?" if close else f"solvers: {', '.join(SOLVERS)}")
    check_args(spec, ARGS[spec.name], "solver")
    lr = None
    if spec.name in ("sgd", "adam"):
        lr = number(spec, "lr", spec.args.get("lr", Spec("auto", {})), allow_auto=True)
    elif spec.name == "normalized":  # the step length itself: no smoothness-based rule
        lr = number(spec, "lr", 0.01)
    epochs = number(spec, "epochs", 1, integer=True) if "epochs" in spec.args else None
    steps = number(spec, "steps", 1, integer=True) if "steps" in spec.args else None
    if epochs is None and steps is None:
        epochs = DEFAULT_EPOCHS
    return SolverConfig(
        name=spec.name, lr=lr,
        momentum=number(spec, "momentum", 0.0, positive=False, upper=0.999999) if "momentum" in spec.args else 0.0,
        b1=number(spec, "b1", 0.9, upper=0.999999), b2=number(spec, "b2", 0.999, upper=0.999999),
        memory=number(spec, "memory", 10, integer=True),
        epochs=epochs, steps=steps,
        tol=number(spec, "tol", 1.0) if "tol" in spec.args else None,
        time=number(spec, "time", 1.0) if "time" in spec.args else None,
        spec=spec,
        beta=0.0 if spec.args.get("beta") == 0 else number(spec, "beta", 0.9, upper=0.999999),
        decay=0.0 if spec.args.get("decay", 0) == 0 else number(spec, "decay", 0.0, upper=1.0),
    )


def make_optimizer(name: str, lr, hyper: dict, memory: int) -> optax.GradientTransformation:
    """Build the optax transformation *inside* the traced solve: ``lr`` and ``hyper`` are tracers."""
    if name == "sgd":
        # step k: lr * (1 + k)^-decay (decay 0: constant; e.g. F2SA's x step ~ k^-5/7)
        return optax.chain(optax.trace(decay=hyper["momentum"]), optax.scale_by_schedule(
            lambda k: (1.0 + k.astype(lr.dtype)) ** -hyper["decay"]), optax.scale(-lr))
    if name == "adam":
        return optax.adam(lr, b1=hyper["b1"], b2=hyper["b2"])
    if name == "lbfgs":
        return optax.lbfgs(memory_size=memory)
    if name == "normalized":
        return optax.chain(optax.ema(hyper["beta"], debias=False), _normalize(), optax.scale(-lr))
    raise ValueError(name)  # pragma: no cover


def _normalize() -> optax.GradientTransformation:
    """``u -> u / ||u||`` over the whole pytree (0 stays 0)."""

    def update(updates, state, params=None):
        norm = optax.tree.norm(updates)
        scale = jnp.where(norm > 0, 1.0 / jnp.where(norm > 0, norm, 1.0), 0.0)
        return jax.tree_util.tree_map(lambda u: u * scale.astype(u.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
