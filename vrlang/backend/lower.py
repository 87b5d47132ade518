"""IR -> JAX: an interpreter of the IR, traced once under ``jit``.

Finite sums are evaluated with ``vmap`` over the index (or over a sampled minibatch
of indices), never unrolled, so the traced program -- and compile time -- does not
grow with the data size.  Which sums are sampled, and how, is given by *samplers*
(one per binder, from :mod:`vrlang.estimators.sampling`); with no sampler, or with
``key=None``, a sum is exact.

An exact sum maps over the *rows* of the arrays it indexes by its binder: every data,
param or const array ``A`` that the body indexes as ``A[i, ...]`` (first index exactly
the binder ``i``) is sliced ``A[lo:hi]`` and passed to the ``vmap`` with ``in_axes=0``,
and inside the body ``A[i, rest]`` reads ``row[rest]`` (:attr:`Env.rows`).  Nested exact
sums continue the chain: inside a sum over ``i`` mapped over the rows of ``X``, a sum over
``j`` whose body reads ``X[i, j]`` maps over the entries of the row.  Gathering
``A[arange(lo, hi)]`` instead would materialise a copy of ``A`` (``n x d`` for a design
matrix) on every evaluation, and its gradient would be a scatter-add; with the rows
mapped, ``vmap(dot(X[i], w))`` is one matrix-vector product.  Any other use of ``A``
(``A[i - 1]``, ``A[j, i]``, ``A`` whole) reads the full array as before, so the values are
those of the gathering evaluation for every body.

Inside such a map, an inner product ``dot(X[i], w)`` whose first operand varies with the
innermost mapped binder and whose second does not is evaluated as ``dot(w, X[i])``
(:meth:`Interpreter._dot_order`): under an enclosing ``vmap`` over samples of ``w`` it then
batches to ``W @ X.T`` with no transpose before the reduction over the rows.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import jax
import jax.numpy as jnp

from vrlang.backend import builtins as JB
from vrlang.errors import VrDataError, VrEstimatorError
from vrlang.estimators.sampling import FixedIndexSampler, UniformSampler
from vrlang.ir import homes
from vrlang.ir import nodes as N

_DTYPES = {"real": None, "int": jnp.int32, "bool": jnp.bool_}


_INNER_KEY = 0x1A5B  # the fixed key of a minibatch inner solver's draws in exact evaluations


def binder_salt(name: str) -> int:
    """A stable per-binder integer used to fold PRNG keys."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


@dataclass
class Env:
    params: dict
    data: dict
    consts: dict
    dims: dict[str, int]
    key: Any = None
    samplers: dict = field(default_factory=dict)
    vars: dict = field(default_factory=dict)
    plans: dict = field(default_factory=dict)  # expectation estimators, by binder
    # binder state (vrlang.estimators.binder_state): ``memory`` is read (binder -> its state, with a
    # leading axis per enclosing sum), ``collect`` receives the new state; None = stateless evaluation
    memory: dict | None = None
    collect: dict | None = None
    # id(node) -> value of the nodes evaluated in this env: a node shared by several uses (a `let`, a def's
    # argument) is traced once.  Fresh for every Env (bind, replace); an Env is evaluated under one trace.
    memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    # decision binders already solved at their home (vrlang.ir.homes): binder -> its value here
    decided: dict = field(default_factory=dict)
    # exact sums mapped over rows: {binder: {(kind, name, prefix): the row at the binder's current index}},
    # where A[b1, .., bk, b] reads rows[b][(kind, name, (b1, .., bk))] (prefix: the binders mapped before b)
    rows: dict = field(default_factory=dict)
    # the binder of the innermost ``vmap`` here (an exact or sampled sum's index, an expectation's sample),
    # None outside them: ``dot`` puts the operand that varies with it second (Interpreter._dot_order)
    mapped: str | None = None

    def dim(self, d):
        return d if isinstance(d, int) else self.dims[d]

    def bind(self, name, value, key=None, mapped=False) -> "Env":
        """``name`` bound to ``value``; ``mapped``: ``value`` is one item of a ``vmap`` (a sum's index, a sample)."""
        return replace(self, key=self.key if key is None else key, vars={**self.vars, name: value},
                       rows=_hide(self.rows, name),
                       mapped=name if mapped else (None if name == self.mapped else self.mapped))

    def with_rows(self, binder: str, rows: dict) -> "Env":
        return replace(self, rows={**self.rows, binder: rows})

    def stateless(self) -> "Env":
        """The same environment with no binder state (nested bodies whose state is not tracked)."""
        return replace(self, memory=None, collect=None)

    def frozen(self) -> "Env":
        """Stateless, and no gradient reaches the params, consts or outer variables (for inner loops)."""
        sg = jax.lax.stop_gradient
        return replace(self, params=sg(self.params), consts=sg(self.consts), vars=sg(self.vars),
                       decided=sg(self.decided), memory=None, collect=None, rows=sg(self.rows))


def _hide(rows: dict, name: str) -> dict:
    """Rebinding ``name`` hides the rows mapped by an outer binder of that name and every row read through it."""
    if not rows or not any(b == name or any(name in k[2] for k in r) for b, r in rows.items()):
        return rows
    return {b: {k: v for k, v in r.items() if name not in k[2]} for b, r in rows.items() if b != name}


class Interpreter:
    """Evaluates IR nodes with ``jax.numpy``; externs are Python callables."""

    def __init__(self, externs: dict[str, Callable] | None = None, trace_counter: list | None = None,
                 map_rows: bool = True):
        self.externs = externs or {}
        self.trace_counter = trace_counter
        self.map_rows = map_rows  # False: exact sums gather A[arange(lo, hi)] (the reference evaluation)
        self._indexed: dict = {}  # id(Sum) -> (Sum, the arrays its body reads by its binder: (kind, name, prefix))
        self._uses: dict = {}  # (id(node), binder) -> (node, whether the node reads the variable `binder`)

    def __call__(self, node: N.Node, env: Env):
        if self.trace_counter is not None:
            self.trace_counter[0] += 1
        return self.at_home(node, env)

    def evaluate(self, node: N.Node, env: Env):
        k = id(node)
        if k not in env.memo:
            env.memo[k] = getattr(self, "ev_" + type(node).__name__.lower())(node, env)
        return env.memo[k]

    def ev_lit(self, node: N.Lit, env):
        return jnp.asarray(node.value, dtype=_DTYPES[node.type.base] or jnp.result_type(float))

    def ev_ref(self, node: N.Ref, env: Env):
        if node.kind == "param":
            return env.params[node.name]
        if node.kind == "data":
            return env.data[node.name]
        if node.kind == "const":
            return env.consts[node.name]
        if node.kind == "dim":
            return jnp.asarray(env.dims[node.name], jnp.int32)
        return env.vars[node.name]

    def ev_op(self, node: N.Op, env: Env):
        args = [self.evaluate(a, env) for a in node.args]
        if node.op == "one_hot":
            size = env.dim(node.static[0])
            return jax.nn.one_hot(args[0], size, dtype=jnp.result_type(float))
        if len(args) == 1:
            return JB.UNARY[node.op](args[0])
        if len(args) == 2:
            a, b = args
            if node.op in ("add", "sub", "mul", "div", "pow", "maximum", "minimum", "dot", "matmul") \
                    and node.type.base == "real":
                a, b = _as_float(a), _as_float(b)
            if node.op == "dot" and env.mapped is not None and self._dot_order(node, env, a, b):
                a, b = b, a  # the same inner product (see _dot_order)
            return JB.BINARY[node.op](a, b)
        return JB.TERNARY[node.op](*args)

    def _dot_order(self, node: N.Op, env: Env, a, b) -> bool:
        """Whether to evaluate the inner product ``dot(a, b)`` of two vectors as ``dot(b, a)``: when ``a`` varies
        with the innermost mapped binder (``env.mapped``) and ``b`` does not, e.g. ``dot(X[i], w)`` in a sum over
        ``i`` inside an expectation over ``w``.

        The value is the same (up to the rounding of the products' sum); the layout is not.  Under the enclosing ``vmap`` (the samples ``w_k``) JAX batches
        ``dot(X[i], w)`` over the rows into ``dot_general(X, W)``, which puts the rows first (``[n, K]``), and the
        next elementwise operation with another row-indexed array (``- y[i]``) moves the samples to the front
        with a transpose.  XLA folds that transpose into the product as a column-major layout, and the exact
        sum's reduction over the rows then runs over the major dimension, which the CPU compiler splits into a
        two-stage ``reduce-window`` + ``reduce`` instead of one reduction fused with the matrix product.
        ``dot(w, X[i])`` batches to ``dot_general(W, X)``, ``[K, n]``: no transpose, the form ``W @ X.T`` one
        writes by hand.
        """
        if getattr(a, "ndim", None) != 1 or getattr(b, "ndim", None) != 1:
            return False
        return self._reads(node.args[0], env.mapped) and not self._reads(node.args[1], env.mapped)

    def _reads(self, node: N.Node, binder: str) -> bool:
        """Whether the IR graph ``node`` reads the variable ``binder`` (cached per node)."""
        hit = self._uses.get((id(node), binder))
        if hit is None or hit[0] is not node:
            found = any(isinstance(n, N.Ref) and n.kind == "var" and n.name == binder for n in N.walk(node))
            hit = self._uses[(id(node), binder)] = (node, found)
        return hit[1]

    def ev_index(self, node: N.Index, env: Env):
        if env.rows and isinstance(node.base, N.Ref):  # A[i, j, rest] inside exact sums mapped over rows of A
            row, k = _mapped_row(env.rows, node)
            if k:
                rest = tuple(slice(None) if i is None else self.evaluate(i, env) for i in node.items[k:])
                return row[rest] if rest else row
        base = self.evaluate(node.base, env)
        idx = tuple(slice(None) if i is None else self.evaluate(i, env) for i in node.items)
        return base[idx]

    def ev_vector(self, node: N.Vector, env: Env):
        items = [self.evaluate(i, env) for i in node.items]
        if node.type.base == "real":
            items = [_as_float(i) for i in items]
        return jnp.stack(items)

    def ev_externcall(self, node: N.ExternCall, env: Env):
        fn = self.externs.get(node.name)
        if fn is None:  # guarded at compile time; kept for the runtime used without the driver
            raise VrEstimatorError("E310", f"extern `{node.name}` was not supplied", node.span)
        out = jnp.asarray(fn(*[self.evaluate(a, env) for a in node.args]))
        want = tuple(env.dim(d) for d in node.type.shape)
        if out.shape != want:
            raise VrDataError("E413", f"extern `{node.name}` returned shape {out.shape}, declared {want}", node.span)
        return out

    def ev_sum(self, node: N.Sum, env: Env):
        lo, hi = env.dim(node.lo), env.dim(node.hi)
        n = hi - lo
        sampler = env.samplers.get(node.binder)

        tracked = self._tracked(node, env)

        def body(i, rows=None):
            # random choices inside the body get an independent key per item
            key = None if env.key is None else jax.random.fold_in(env.key, i)
            item = env.bind(node.binder, i, key, mapped=True)
            if rows:  # exact: the rows of the arrays indexed by the binder are mapped in (see _rows)
                item = item.with_rows(node.binder, rows)
            if not tracked:
                return self.at_home(node.body, item)
            # binder state nested in this sum: item i reads its own slice and reports its new state
            mem = {b: _tree(lambda a: a[i - lo], m) for b, m in (env.memory or {}).items() if b in tracked}
            inner = replace(item, memory=mem, collect={})
            return self.at_home(node.body, inner), inner.collect

        exact = sampler is None or env.key is None
        if exact:
            idx = jnp.arange(lo, hi, dtype=jnp.int32)
            rows = self._rows(node, env, lo, hi) if self.map_rows else {}
            out = jax.vmap(body)(idx, rows)
        else:
            key = jax.random.fold_in(env.key, binder_salt(node.binder))
            idx, weights = sampler.sample(key, n, env)
            idx = idx + lo
            out = jax.vmap(body)(idx)
        vals = out[0] if tracked else out
        if tracked:
            for b, new in out[1].items():
                old = (env.memory or {}).get(b)
                if exact:
                    env.collect[b] = new
                elif old is not None:  # only the sampled items' state changes
                    env.collect[b] = _tree(lambda o, n: o.at[idx - lo].set(n), old, new)
        if exact:
            total = jnp.sum(_as_float(vals), axis=0) if node.type.base == "real" else jnp.sum(vals, axis=0)
        else:
            total = jnp.tensordot(weights, _as_float(vals), axes=1)
        return total / n if node.mean else total

    def _tracked(self, node: N.Sum, env: Env) -> frozenset:
        """The stateful binders solved per item of this sum: nested in its body and using its variable
        (or a binder inside it); the others are solved once, outside (vrlang.ir.homes).  Empty when the
        evaluation keeps no state."""
        if env.collect is None:
            return frozenset()
        found = set()
        for inner in N.walk(node.body):
            if isinstance(inner, (N.Decision, N.Expect)) and getattr(env.plans.get(inner.binder), "stateful", False) \
                    and (isinstance(inner, N.Expect) or homes.stays_inside(node, inner)):
                found.add(inner.binder)
        return frozenset(found)

    def _rows(self, node: N.Sum, env: Env, lo: int, hi: int) -> dict:
        """``{(kind, name, prefix): source[lo:hi]}`` for the arrays the body reads as ``A[*prefix, binder, ...]``.

        ``source`` is ``A`` itself (empty prefix) or, inside exact sums over the binders of the
        prefix mapped over the rows of ``A``, the current row ``A[*prefix]``.
        """
        cached = self._indexed.get(id(node))
        found = cached[1] if cached is not None and cached[0] is node else None
        if found is None:
            found = set()
            for n in N.walk(node.body):
                if isinstance(n, N.Index) and isinstance(n.base, N.Ref) and n.base.kind in ("data", "param", "const"):
                    prefix = []
                    for it in n.items:
                        if not (isinstance(it, N.Ref) and it.kind == "var"):
                            break
                        if it.name == node.binder:
                            found.add((n.base.kind, n.base.name, tuple(prefix)))
                            break
                        prefix.append(it.name)
            found = tuple(sorted(found))
            self._indexed[id(node)] = (node, found)
        out = {}
        for kind, name, prefix in found:
            if prefix:
                src = env.rows.get(prefix[-1], {}).get((kind, name, prefix[:-1]))
            else:
                src = self.ev_ref(N.Ref(None, kind, name), env)
            if src is not None and getattr(src, "ndim", 0) >= 1 and src.shape[0] >= hi:
                out[(kind, name, prefix)] = src[lo:hi]  # else gathered, as without the mapping (clamped indices)
        return out

    def ev_expect(self, node: N.Expect, env: Env):
        plan = env.plans.get(node.binder)
        if plan is None:  # the driver always chooses one; the runtime used alone may not
            raise VrEstimatorError("E390", f"no estimator for the expectation `{node.binder}`", node.span)
        import numpyro.distributions as nd

        dist = node.dist
        kwargs = {k: _as_float(self.evaluate(v, env)) for k, v in dist.kwargs}
        q = getattr(nd, dist.name)(**kwargs)
        int_sample = node.dist.type.base == "int"

        def cast(z):
            return z.astype(jnp.int32) if int_sample else _as_float(z)

        def body(z, j=None, expr=None):
            # sample j gets its own key, so that random choices nested in the body are independent
            # across the samples of this one (as ev_sum does per item); `expr`: another IR node
            # evaluated at the sample instead of the body (a control variate's g and mean)
            key = None if env.key is None or j is None else jax.random.fold_in(env.key, j)
            # (binder state is not tracked per sample: nested decision binders start cold)
            return _as_float(self.at_home(node.body if expr is None else expr,
                                          env.stateless().bind(node.binder, z, key, mapped=True)))

        key = None if env.key is None else jax.random.fold_in(env.key, binder_salt(node.binder))
        if env.collect is not None and getattr(plan, "stateful", False):  # e.g. an ema baseline
            out, state = plan.surrogate_from(dist.name, q, body, key, cast, (env.memory or {}).get(node.binder))
            env.collect[node.binder] = jax.lax.stop_gradient(state)
            return out
        return plan.surrogate(dist.name, q, body, key, cast)

    def at_home(self, body: N.Node, env: Env):
        """Evaluate ``body`` after solving the decision binders whose home it is (vrlang.ir.homes):
        each is solved once here and its value handed down, instead of once per item of the sums
        between here and its use.  A method with a term at its home (``penalty``) evaluates the
        body itself: it changes the objective around the argmin."""
        todo = [d for d in homes.hoisted(body) if d.binder not in env.decided and d.binder in env.plans]
        if not todo:
            return self.evaluate(body, env)
        env = replace(env, decided=dict(env.decided))  # filled in order: later ones may use earlier ones
        local = None
        for d in todo:
            plan = env.plans[d.binder]
            if getattr(plan, "home_term", False):
                local = (d, plan)  # at most one per home (refused at compile time otherwise)
            else:
                env.decided[d.binder] = self._decide(d, env)
        if local is None:
            return self.evaluate(body, env)
        return self._penalised(body, env, *local)

    def ev_decision(self, node: N.Decision, env: Env):
        if node.binder in env.decided:  # solved at its home
            return env.decided[node.binder]
        return self._decide(node, env)

    def _init(self, node: N.Decision, env: Env):
        shape = tuple(env.dim(d) for d in node.var_type.shape)
        return jnp.zeros(shape, jnp.result_type(float)) if node.init is None else \
            jnp.broadcast_to(_as_float(self.evaluate(node.init, env)), shape)

    def _decide(self, node: N.Decision, env: Env):
        # the plan (vrlang.estimators.bilevel: Implicit or Unroll) solves the inner problem and gives its gradient
        plan = env.plans.get(node.binder)
        if plan is None:  # the driver always chooses one; the runtime used alone may not
            raise VrEstimatorError("E390", f"no hypergradient method for the decision binder `{node.binder}`",
                                   node.span)
        init = self._init(node, env)
        # the inner objective is evaluated exactly (key=None): stochastic inner problems are refused at compile
        # time (except with penalty, evaluated by _penalised, and implicit with neumann: decide_sampled below)
        inner = replace(env, key=None, memory=None, collect=None)
        batch = getattr(getattr(plan, "inner", None), "batch", None)  # a minibatch inner solver (svrg, saga...)
        if batch is not None:  # draws: the step's key (or, exact evaluations, a fixed key) folded with the salt
            base = jax.random.fold_in(jax.random.PRNGKey(_INNER_KEY) if env.key is None else env.key,
                                      binder_salt(node.binder))
            drawn = {s.binder: UniformSampler(batch) for s in N.walk(node.body)
                     if isinstance(s, N.Sum) and s.binder not in env.samplers}

        def objective(v, draw=None):
            e = inner if draw is None else replace(inner, key=jax.random.fold_in(base, draw),
                                                   samplers={**inner.samplers, **drawn})
            return _as_float(self.at_home(node.body, e.bind(node.binder, v)))

        if batch is not None:  # vrlang.estimators.inner_finite_sum: the solver's key, SAGA's items
            objective.key, objective.items, objective.at = base, None, None
            sums = N.outermost_sums(node.body)
            if len(sums) == 1 and sums[0].binder not in env.samplers:
                items = sums[0]

                def at(v, idx):  # the body with its one sum at the items idx (weights n/b), other sums exact
                    e = replace(inner, key=base, samplers={**inner.samplers, items.binder: FixedIndexSampler(idx)})
                    return _as_float(self.at_home(node.body, e.bind(node.binder, v)))

                objective.items, objective.at = env.dim(items.hi) - env.dim(items.lo), at

        if env.collect is not None and hasattr(plan, "decide_sampled"):
            # a minibatched inner problem (implicit, stocBiO: vrlang.estimators.stochastic_implicit): the inner
            # objective is evaluated with a key (its sums sampled), frozen for the inner steps and HVPs
            frozen = env.frozen()

            def sampled(v, key, is_frozen=False):
                e = replace(frozen if is_frozen else env, key=key, memory=None, collect=None)
                return _as_float(self.at_home(node.body, e.bind(node.binder, v)))

            key = None if env.key is None else jax.random.fold_in(env.key, binder_salt(node.binder))
            out, state = plan.decide_sampled(node.op, sampled, init, (env.memory or {}).get(node.binder), key)
            env.collect[node.binder] = jax.lax.stop_gradient(state)
            return out
        if env.collect is not None and getattr(plan, "stateful", False):
            # warm start: the inner solve starts from this binder's last solution (its state)
            out, state = plan.decide_from(node.op, objective, init, (env.memory or {}).get(node.binder))
            env.collect[node.binder] = jax.lax.stop_gradient(state)
            return out
        return plan.decide(node.op, objective, init)

    def _penalised(self, body: N.Node, env: Env, node: N.Decision, plan):
        """``body`` with the argmin ``node`` replaced by a tracked variable y and the penalty term of
        its method (vrlang.estimators.penalty) added: the outer objective f(y) is ``body``."""
        from vrlang.estimators.penalty import HomeProblem

        init = self._init(node, env)
        sign = -1.0 if node.op == "argmax" else 1.0
        frozen = env.frozen()

        def outer(v, key, is_frozen=False):
            e = frozen if is_frozen else env
            return _as_float(self.evaluate(body, replace(e, key=key, decided={**e.decided, node.binder: v})))

        def inner(v, key, is_frozen=False):
            e = replace(frozen if is_frozen else env, key=key, memory=None, collect=None)
            return sign * _as_float(self.at_home(node.body, e.bind(node.binder, v)))

        home = HomeProblem(outer, inner, env.key, env.consts)
        if env.collect is None:  # an exact evaluation: the true objective's value, the penalty's gradient
            return plan.exact(home, init)
        value, state = plan.tracked(home, init, (env.memory or {}).get(node.binder))
        env.collect[node.binder] = jax.lax.stop_gradient(state)
        return value

    def ev_dist(self, node, env):  # pragma: no cover - only reached through ev_expect
        raise VrEstimatorError("E390", "distributions are not compiled yet", node.span)


def _tree(fn, *trees):
    return jax.tree_util.tree_map(fn, *trees)


def _mapped_row(rows: dict, node: N.Index):
    """``(row, k)``: the mapped row ``A[items[:k]]`` for the longest chain of mapped binders (``k = 0``: none)."""
    kind, name = node.base.kind, node.base.name
    row, prefix = None, ()
    for it in node.items:
        if not (isinstance(it, N.Ref) and it.kind == "var"):
            break
        r = rows.get(it.name, {}).get((kind, name, prefix))
        if r is None:
            break
        row, prefix = r, prefix + (it.name,)
    return row, len(prefix)


def _as_float(x):
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))
