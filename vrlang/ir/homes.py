"""Where a decision binder lives: its *home*, the innermost binder whose variable it uses.

A decision binder ``argmin(v: g)`` written inside a sum, ``mean(j in 0..m: (dot(Xva[j], argmin(v: g)) - yva[j])^2)``,
need not be solved once per ``j``: its inner problem does not mention ``j``.  Its value is a
function of the variables it uses -- params, data, consts and the variables of the binders
it is nested in *and mentions*.  The innermost binder among the latter is its **home**; with
none, the home is the root of the evaluation.  The interpreter solves a decision once at its
home and hands the result down (hoisting), so that:

* binder state (warm starts) has one row per home item, not per item of every enclosing sum;
* methods that change the objective around the argmin (``penalty``, which adds
  ``sigma (g(y) - g(z))`` to the home body) know which body to change.

Binder names are unique in a program and a binder's variable has the binder's name, so the
analysis is by name.  Everything here is a pure function of the (shared, immutable) IR.
"""

from __future__ import annotations

from functools import lru_cache

from vrlang.ir import nodes as N


def _walk(node: N.Node):
    return N.walk(node)


@lru_cache(maxsize=None)
def _binders_within_cached(node: N.Node) -> frozenset:
    return frozenset(n.binder for n in _walk(node) if isinstance(n, N.BINDER_NODES))


def binders_within(node: N.Node) -> frozenset:
    """Names of the binders in ``node``'s subtree (``node`` itself included)."""
    return _binders_within_cached(node)


@lru_cache(maxsize=None)
def free_binders(node: N.Decision) -> frozenset:
    """The binder variables a decision binder uses (in its body or its ``init``) but does not bind."""
    used = {n.name for n in _walk(node) if isinstance(n, N.Ref) and n.kind == "var"}
    return frozenset(used - binders_within(node))


@lru_cache(maxsize=None)
def hoisted(body: N.Node) -> tuple:
    """The decision binders in ``body`` that use no binder bound inside ``body``: they are solved
    once, before ``body`` is evaluated.  Innermost first, so that a decision used inside another
    one's inner problem is solved before it."""
    inside = binders_within(body)
    found = [n for n in _walk(body) if isinstance(n, N.Decision) and not (free_binders(n) & inside)]
    return tuple(reversed(found))


def homed_at(owner: N.Node) -> tuple:
    """The decision binders whose home is the binder ``owner`` (a Sum, Expect or Decision):
    nested in its body, using its variable and no binder bound inside its body."""
    body = owner.body
    inside = binders_within(body)
    return tuple(n for n in _walk(body) if isinstance(n, N.Decision) and owner.binder in free_binders(n)
                 and not (free_binders(n) & inside))


def homes(root: N.Node) -> dict:
    """``{decision binder name: its home}`` for every decision in ``root``: the binder node, or ``None``
    for the root of the evaluation."""
    out = {}
    for n in _walk(root):
        if isinstance(n, N.Decision) and n.binder not in out:
            out[n.binder] = None
    for owner in _walk(root):
        if isinstance(owner, N.BINDER_NODES):
            for d in homed_at(owner):
                out[d.binder] = owner
    return out


def stays_inside(owner: N.Sum, decision: N.Decision) -> bool:
    """Whether ``decision`` (nested in the sum ``owner``) is solved per item of ``owner``: it uses
    ``owner``'s variable or a binder bound inside ``owner``'s body."""
    return bool(free_binders(decision) & (binders_within(owner.body) | {owner.binder}))


__all__ = ["binders_within", "free_binders", "hoisted", "homed_at", "homes", "stays_inside"]
