"""Loading data arrays and checking them against their declarations.

Sources are ``.npz`` (the key is the data name), ``.npy`` and ``.csv`` (comma
separated, numbers only), read with ``allow_pickle=False``: a data file is never
executed.  Shape symbols are bound from the arrays; every mismatch, wrong dtype or
non-finite value is a :class:`VrDataError` at the declaration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from vrlang.check.program import CheckedProgram
from vrlang.errors import VrDataError


def _read(path: Path, key: str, span) -> np.ndarray:
    if not path.is_file():
        raise VrDataError("E401", f"data file not found: {path}", span,
                          "pass the data to solve(data=...) or with --data FILE.npz")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if key not in z.files:
                    raise VrDataError("E402", f"`{path.name}` has no array named `{key}`", span,
                                      f"it holds: {', '.join(z.files) or 'nothing'}")
                return np.asarray(z[key])
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".csv":
            return np.loadtxt(path, delimiter=",", ndmin=1)
    except VrDataError:
        raise
    except Exception as e:  # a corrupt file, object arrays, non-numeric csv cells...
        raise VrDataError("E403", f"cannot read `{path}`: {type(e).__name__}: {e}", span) from None
    raise VrDataError("E404", f"unsupported data format `{suffix}`", span, "use .npz, .npy or .csv")


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (for ``--data``)."""
    p = Path(path)
    if not p.is_file():
        raise VrDataError("E401", f"data file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    except Exception as e:
        raise VrDataError("E403", f"cannot read `{p}`: {type(e).__name__}: {e}") from None


def gather(cp: CheckedProgram, given: Mapping | None) -> dict[str, np.ndarray]:
    """The data arrays: those given, then the declared ``from`` sources."""
    given = dict(given or {})
    unknown = [k for k in given if k not in cp.data]
    if unknown:
        raise VrDataError("E405", f"data `{unknown[0]}` is not declared in the program",
                          None, "declared data: " + (", ".join(cp.data) or "none"))
    base = Path(cp.file).parent if cp.file and not cp.file.startswith("<") else Path.cwd()
    out = {}
    for name, decl in cp.data.items():
        if name in given:
            out[name] = given[name]
        elif decl.source is not None:
            out[name] = _read(base / decl.source, name, decl.span)
        else:
            raise VrDataError("E406", f"no value for data `{name}`", decl.span,
                              f"pass data={{'{name}': array}} to solve(), or add `from \"file.npz\"`")
    return out


def _is_jax(x) -> bool:
    try:
        import jax
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, jax.Array)


def _all_finite(a) -> bool:
    """Whether every entry of a float array is finite, without an ``a.size`` temporary in the common case.

    A sum is finite only if every term is (an inf or NaN term makes it inf or NaN); a
    non-finite sum can also be an overflow of finite terms, so that case is checked entry by
    entry, in chunks.  jax arrays are checked on their device.
    """
    if _is_jax(a):
        import jax.numpy as jnp
        return bool(jnp.all(jnp.isfinite(a)))
    if a.size == 0:
        return True
    with np.errstate(all="ignore"):
        if np.isfinite(np.sum(a)):
            return True
    flat = a.reshape(-1) if a.flags.c_contiguous else a.ravel()
    step = 1 << 22
    return all(bool(np.isfinite(flat[k:k + step]).all()) for k in range(0, flat.size, step))


def validate(cp: CheckedProgram, arrays: Mapping, float_dtype=np.float64) -> tuple[dict, dict[str, int]]:
    """Check arrays against declarations; return converted arrays and the bound dims.

    Real data are converted to ``float_dtype`` (the program's float type), without a copy
    when they already have it; jax arrays stay on their device (converted there if needed).
    """
    dims: dict[str, int] = {}
    origin: dict[str, str] = {}
    out = {}
    for name, decl in cp.data.items():
        try:
            a = arrays[name]
            a = a if _is_jax(a) else np.asarray(a)
        except Exception as e:
            raise VrDataError("E407", f"data `{name}` is not an array: {e}", decl.span) from None
        if a.dtype == object or a.dtype.kind not in "biuf":
            raise VrDataError("E407", f"data `{name}` must be numeric, got dtype {a.dtype}", decl.span)
        t = decl.type
        if a.ndim != t.rank:
            raise VrDataError("E408", f"data `{name}` is declared {t} (rank {t.rank}) but the array has shape "
                              f"{a.shape} (rank {a.ndim})", decl.span)
        for axis, (d, size) in enumerate(zip(t.shape, a.shape)):
            if isinstance(d, int) and d != size:
                raise VrDataError("E408", f"axis {axis} of data `{name}` must have size {d}, got {size}", decl.span)
            if isinstance(d, str):
                if d in dims and dims[d] != size:
                    raise VrDataError("E409", f"shape symbol `{d}` is {dims[d]} (from `{origin[d]}`) but axis {axis} "
                                      f"of `{name}` has size {size}", decl.span)
                dims[d], origin[d] = size, name
        if t.base == "int":
            if a.dtype.kind == "f":
                h = np.asarray(a)
                if not np.all(np.isfinite(h)) or not np.all(h == np.round(h)):
                    raise VrDataError("E410", f"data `{name}` is declared int but holds non-integer values", decl.span)
            a = a.astype(np.int32)
        elif t.base == "bool":
            if a.dtype.kind != "b" and not np.all((np.asarray(a) == 0) | (np.asarray(a) == 1)):
                raise VrDataError("E410", f"data `{name}` is declared bool but holds values other than 0/1", decl.span)
            a = a.astype(bool)
        else:
            if a.dtype != np.dtype(float_dtype):
                with np.errstate(over="ignore"):  # a value out of range becomes inf, refused just below
                    a = a.astype(float_dtype)
            if not _all_finite(a):
                a = np.asarray(a)
                bad = ~np.isfinite(a)
                where = tuple(int(k) for k in np.argwhere(bad)[0])
                what = "NaN" if np.isnan(a[where]) else "inf"
                raise VrDataError("E411", f"data `{name}` contains {what} at index {list(where)} "
                                  f"({int(bad.sum())} non-finite value{'s' if bad.sum() > 1 else ''} in all"
                                  + (f", in {np.dtype(float_dtype).name}" if np.dtype(float_dtype) != np.float64
                                     else "") + ")",
                                  decl.span, "clean or impute the data before solving")
        out[name] = a
    for b, info in cp.binders.items():  # ranges such as n..m are only known to be non-empty now
        for node in info.nodes:
            lo = getattr(node, "lo", None)
            if info.kind == "index" and lo is not None:
                lo_v = lo if isinstance(lo, int) else dims[lo]
                hi_v = node.hi if isinstance(node.hi, int) else dims[node.hi]
                if hi_v <= lo_v:
                    raise VrDataError("E414", f"the range of `{b}` is empty with these data: {node.lo}..{node.hi} "
                                      f"= {lo_v}..{hi_v}", info.span, "ranges are half-open: a..b needs a < b")
    for bc in cp.bound_checks:
        hi = bc.hi if isinstance(bc.hi, int) else dims[bc.hi]
        size = bc.dim if isinstance(bc.dim, int) else dims[bc.dim]
        if hi > size:
            raise VrDataError("E412", f"index `{bc.var}` runs up to {hi} but axis {bc.axis} of `{bc.array}` has size "
                              f"{size}", bc.span, "the range of the binder must fit the array it indexes")
    return out, dims
