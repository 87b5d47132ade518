"""Trainable externs: an equinox module whose weights are params of the program.

An ``extern`` is a Python callable supplied at compile time.  A plain callable -- and an
equinox Module passed as is -- is a *fixed* function: its weights are constants of the
compiled program (a frozen reward model, say).  Wrapping the module with
:func:`trainable` makes its weights decision variables instead::

    extern decoder(z: real[2]) -> real[d]          # in the .vr file

    dec = vrlang.trainable(eqx.nn.MLP(2, 64, 32, 1, key=key))
    prog = vrlang.compile(src, externs={"decoder": dec})
    res = prog.solve()
    trained = prog.module("decoder", res.params)   # the module with the solved weights

The module's inexact-array leaves (``eqx.is_inexact_array``, as in ``eqx.partition``)
become params named ``<extern>.<path>`` -- e.g. ``decoder.layers.0.weight`` -- of type
``real[<leaf shape>]``, initialised at the module's own values (not at 0: a network
started at zero sits at a saddle point), and optimised by the solver like declared
params: they appear in ``Result.params``, ``Program.grad``, ``Program.init_params`` and
the gradient estimator.  Everything else (activations, integer fields, sizes) stays
static.  This is ``pyro.module`` / numpyro's ``flax_module`` done at compile time.

How it compiles: each call of a trainable extern in the IR gets its weights as extra
arguments, ``decoder(z)`` becoming ``decoder(z, decoder.layers.0.weight, ...)`` (param
references), and the backend evaluates ``eqx.combine(weights, static)(z)``.  Every
analysis that asks which params a subexpression depends on (the GLM detection behind
SAGA's scalar table and ``lr = auto``, the check that sampling weights are param-free)
therefore sees the network's weights, with no special case.

Errors: E317 (``trainable`` of something that is not an equinox Module with array
leaves), E318 (a trainable extern where params are not allowed: ``sampling =
weights(...)``, computed once from the data).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import equinox as eqx
import jax
import numpy as np

from vrlang.check.program import CheckedProgram, ParamDecl
from vrlang.errors import VrEstimatorError
from vrlang.ir import nodes as N
from vrlang.ir.types import VType


class Trainable:
    """An equinox module whose inexact-array leaves are params (see the module docstring).

    Calling it calls the module with its current (initial) weights, so it is also a valid
    fixed extern wherever a trainable one is not wanted.
    """

    def __init__(self, module: eqx.Module, filter_spec: Callable = eqx.is_inexact_array):
        if not isinstance(module, eqx.Module) or not callable(module):
            raise VrEstimatorError("E317", "vrlang.trainable needs a callable equinox Module, got "
                                   f"{type(module).__name__}", None,
                                   "for a network written as a function, declare its weights as params and pass "
                                   "them to the extern as arguments")
        weights, static = eqx.partition(module, filter_spec)
        paths_leaves = jax.tree_util.tree_leaves_with_path(weights)
        if not paths_leaves:
            raise VrEstimatorError("E317", f"the module {type(module).__name__} has no array leaves to train", None,
                                   "pass it as a plain extern (its function is then fixed)")
        self.module = module
        self.names = tuple(_path_name(p) for p, _ in paths_leaves)
        self.init = tuple(np.asarray(x) for _, x in paths_leaves)
        self._treedef = jax.tree_util.tree_structure(weights)
        self._static = static

    def __call__(self, *args):
        return self.module(*args)

    def __repr__(self) -> str:
        return f"trainable({type(self.module).__name__}, {len(self.names)} weight arrays)"

    def combine(self, leaves) -> eqx.Module:
        """The module with its weights replaced by ``leaves`` (in the order of :attr:`names`)."""
        return eqx.combine(jax.tree_util.tree_unflatten(self._treedef, list(leaves)), self._static)

    def bind(self, params: Mapping, prefix: str) -> eqx.Module:
        """The module with the weights ``params[prefix + '.' + name]`` (e.g. from ``Result.params``)."""
        missing = [f"{prefix}.{n}" for n in self.names if f"{prefix}.{n}" not in params]
        if missing:
            raise KeyError(f"params lack the weights of `{prefix}`: {', '.join(missing[:3])}"
                           + (" ..." if len(missing) > 3 else ""))
        return self.combine([jax.numpy.asarray(params[f"{prefix}.{n}"]) for n in self.names])


def trainable(module: eqx.Module, filter_spec: Callable = eqx.is_inexact_array) -> Trainable:
    """Mark an equinox module supplied as an extern as trainable: its array leaves become params."""
    return Trainable(module, filter_spec)


class _Applied:
    """What the interpreter calls: ``f(*args, *weights)`` -> the module with those weights at ``args``."""

    def __init__(self, name: str, t: Trainable, n_args: int):
        self.name, self.t, self.n_args = name, t, n_args

    def __call__(self, *vals):
        if len(vals) != self.n_args + len(self.t.names):  # an IR built after `attach` (sampling weights)
            raise VrEstimatorError("E318", f"the trainable extern `{self.name}` cannot be used here: its weights "
                                   "are params, and sampling weights are computed once from the data", None,
                                   "use data and consts only in weights(...), or a fixed (non-trainable) extern")
        return self.t.combine(vals[self.n_args:])(*vals[:self.n_args])


def attach(cp: CheckedProgram, externs: Mapping | None) -> tuple[dict, dict[str, Trainable]]:
    """Declare the weights of every trainable extern as params and thread them through the IR.

    Mutates ``cp`` (params, objective, reports, binder nodes).  Returns the externs the
    backend calls (trainable ones replaced by their weight-taking form) and the
    trainables by extern name.
    """
    externs = dict(externs or {})
    found = {k: v for k, v in externs.items() if isinstance(v, Trainable) and k in cp.externs}
    if not found:
        return externs, {}
    refs: dict[str, tuple[N.Ref, ...]] = {}
    for name, t in found.items():
        decl = cp.externs[name]
        rs = []
        for wname, leaf in zip(t.names, t.init):
            pname = f"{name}.{wname}"
            vt = VType("real", tuple(int(s) for s in leaf.shape))
            cp.params[pname] = ParamDecl(pname, vt, None, None, np.asarray(leaf, np.float64), decl.span)
            rs.append(N.Ref(vt, "param", pname, span=decl.span))
        refs[name] = tuple(rs)
        externs[name] = _Applied(name, t, len(decl.arg_types))
    memo: dict = {}
    cp.objective = _rewrite(cp.objective, refs, memo)
    cp.reports = {k: _rewrite(v, refs, memo) for k, v in cp.reports.items()}
    for info in cp.binders.values():
        info.nodes = [memo.get(id(n), n) for n in info.nodes]
    return externs, found


def _rewrite(node, refs: dict, memo: dict):
    """``node`` with every call of a trainable extern given its weight refs (sharing preserved)."""
    if node is None or not isinstance(node, N.Node):
        return node
    k = id(node)
    if k in memo:
        return memo[k]
    changes = {}
    for f in dataclasses.fields(node):
        v = getattr(node, f.name)
        new = _rewrite_value(v, refs, memo)
        if new is not v:
            changes[f.name] = new
    if isinstance(node, N.ExternCall) and node.name in refs:
        changes["args"] = changes.get("args", node.args) + refs[node.name]
    out = dataclasses.replace(node, **changes) if changes else node
    memo[k] = out
    return out


def _rewrite_value(v, refs, memo):
    if isinstance(v, N.Node):
        return _rewrite(v, refs, memo)
    if isinstance(v, tuple) and v and any(isinstance(x, (N.Node, tuple)) for x in v):
        new = tuple(_rewrite_value(x, refs, memo) for x in v)
        return v if all(a is b for a, b in zip(new, v)) else new
    return v


def _path_name(path) -> str:
    parts = []
    for k in path:
        for attr in ("name", "key", "idx"):  # GetAttrKey, DictKey, SequenceKey / FlattenedIndexKey
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return ".".join(parts)
