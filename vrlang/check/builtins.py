"""Typing rules of the builtin functions (LANGUAGE.md §3).

Each rule takes the argument types and returns the result type; a mismatch raises a
:class:`VrTypeError` naming both shapes.  The JAX implementations live in
:mod:`vrlang.backend.builtins`; the two tables have the same keys (a test checks it).
"""

from __future__ import annotations

from vrlang.errors import Span, VrTypeError
from vrlang.ir.types import VType, broadcast, join_base, shape_str

ELEMENTWISE_REAL = (
    "exp", "log", "log1p", "expm1", "sqrt", "sin", "cos", "tan", "tanh", "sigmoid", "softplus",
    "log1pexp", "relu", "log_sigmoid", "square",
)
REDUCE_TO_SCALAR = ("logsumexp", "sumsq", "norm", "sum", "mean", "max", "min", "prod")
PAIRWISE = ("max", "min")  # two-argument forms: elementwise maximum/minimum
LAST_AXIS = ("softmax", "log_softmax")

#: every builtin name with a short description (for `explain`, the REPL and did-you-mean)
BUILTINS: dict[str, str] = {
    **{n: "elementwise" for n in ELEMENTWISE_REAL},
    "abs": "elementwise absolute value",
    **{n: "reduce an array to a scalar" for n in REDUCE_TO_SCALAR},
    **{n: "along the last axis" for n in LAST_AXIS},
    "dot": "inner / matrix-vector product (jnp.dot)",
    "where": "where(cond, a, b), elementwise select",
    "one_hot": "one_hot(k, n): indicator vector of length n",
    "clip": "clip(x, lo, hi)",
    "transpose": "transpose a matrix",
}


def _err(msg: str, span: Span | None, hint: str | None = None) -> VrTypeError:
    return VrTypeError("E210", msg, span, hint)


def _numeric(name: str, t: VType, span) -> None:
    if t.base == "bool":
        raise _err(f"`{name}` expects a number, got {t}", span, "convert with where(cond, 1, 0)")


def _bcast(name: str, types: list[VType], span) -> tuple:
    shape = broadcast(*(t.shape for t in types))
    if shape is None:
        shapes = " and ".join(shape_str(t.shape) for t in types)
        raise VrTypeError("E211", f"shapes do not broadcast in `{name}`: {shapes}", span,
                          "elementwise operations need equal dimensions (or 1) from the right")
    return shape


def matmul_shape(name: str, a: VType, b: VType, span) -> tuple:
    if a.rank == 0 or b.rank == 0:
        raise _err(f"`{name}` needs arrays, got {a} and {b}", span, "use `*` to scale by a scalar")
    if a.rank > 2 or b.rank > 2:
        raise _err(f"`{name}` supports vectors and matrices, got {a} and {b}", span)
    inner_a = a.shape[-1]
    inner_b = b.shape[0]
    if inner_a != inner_b:
        raise VrTypeError("E212", f"inner dimensions differ in `{name}`: {shape_str(a.shape)} and {shape_str(b.shape)}",
                          span, f"the last axis of the left ({inner_a}) must equal the first axis of the right ({inner_b})")
    return a.shape[:-1] + b.shape[1:]


def type_builtin(name: str, args: list[VType], static: dict, span: Span | None) -> VType:
    """The result type of builtin ``name`` applied to ``args``."""
    n = len(args)

    def arity(*allowed):
        if n not in allowed:
            want = " or ".join(map(str, allowed))
            raise VrTypeError("E213", f"`{name}` takes {want} argument{'s' if allowed != (1,) else ''}, got {n}", span)

    if name in ELEMENTWISE_REAL:
        arity(1)
        _numeric(name, args[0], span)
        return VType("real", args[0].shape)
    if name == "abs":
        arity(1)
        _numeric(name, args[0], span)
        return args[0]
    if name in PAIRWISE and n == 2:
        for a in args:
            _numeric(name, a, span)
        return VType(join_base(*(a.base for a in args)), _bcast(name, args, span))
    if name in REDUCE_TO_SCALAR:
        arity(1)
        _numeric(name, args[0], span)
        base = args[0].base if name in ("sum", "max", "min", "prod") else "real"
        return VType(base, ())
    if name in LAST_AXIS:
        arity(1)
        _numeric(name, args[0], span)
        if args[0].rank == 0:
            raise _err(f"`{name}` needs a vector, got a scalar", span)
        return VType("real", args[0].shape)
    if name == "dot":
        arity(2)
        for a in args:
            _numeric(name, a, span)
        return VType(join_base(args[0].base, args[1].base, "int"), matmul_shape(name, args[0], args[1], span))
    if name == "where":
        arity(3)
        if args[0].base != "bool":
            raise _err(f"the condition of `where` must be a comparison (bool), got {args[0]}", span,
                       "write e.g. where(x > 0, a, b)")
        return VType(join_base(args[1].base, args[2].base), _bcast(name, args, span))
    if name == "clip":
        arity(3)
        for a in args:
            _numeric(name, a, span)
        return VType(join_base(*(a.base for a in args)), _bcast(name, args, span))
    if name == "one_hot":
        arity(2)
        if args[0].base != "int":
            raise _err(f"the first argument of `one_hot` must be an integer index, got {args[0]}", span)
        size = static.get("size")
        if size is None:
            raise _err("the size of `one_hot` must be an integer literal or a shape symbol", span,
                       "write e.g. one_hot(y[i], k) with k a dimension of some data")
        return VType("real", args[0].shape + (size,))
    if name == "transpose":
        arity(1)
        if args[0].rank != 2:
            raise _err(f"`transpose` needs a matrix, got {args[0]}", span)
        return VType(args[0].base, args[0].shape[::-1])
    raise _err(f"unknown builtin `{name}`", span)  # pragma: no cover - guarded by the caller
