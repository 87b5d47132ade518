"""The bound data of a program, reused while the same arrays come again.

Binding data (:func:`vrlang.data.validate`: shape checks, conversion to the program's float
type, the finiteness check; then the copy to the device) costs a pass or two over the data
-- seconds for a design matrix of gigabytes -- and every ``solve``/``objective``/``grad``
call binds its data.  :class:`DataCache` keeps the device arrays of the last few data sets,
keyed by what identifies each input *object* cheaply:

* a numpy array: its ``id``, shape, dtype, strides, buffer address and a fingerprint of
  :data:`SAMPLE` evenly spaced entries (so that overwriting the array in place, ``X *= 2``
  or ``X[:] = other``, is seen);
* a jax array: its ``id``, shape and dtype (jax arrays are immutable);
* a declared ``from "file"`` source: the resolved path, its size and modification time.

Any other input (lists, scalars) is not cached.  An entry holds *weak* references to the
input arrays and is dropped as soon as one of them is garbage-collected, so an ``id``
reused by a new object can never hit a stale entry, and the cache never keeps user arrays
alive.  Limit: a numpy array changed in place only at entries outside the fingerprint
sample (e.g. one row of a large matrix) is not detected -- pass a new array, or call
:meth:`vrlang.Program.clear_data_cache`, after such an edit.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np

SAMPLE = 4096  # entries of a numpy array hashed into its fingerprint
ENTRIES = 2  # data sets kept (least recently used dropped first)


def _fingerprint(a: np.ndarray) -> str:
    if a.size == 0:
        return ""
    idx = np.unique(np.linspace(0, a.size - 1, min(SAMPLE, a.size)).astype(np.int64))
    return hashlib.blake2b(np.ascontiguousarray(a.flat[idx]).tobytes(), digest_size=16).hexdigest()


def _array_key(x) -> tuple | None:
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            return None
        return ("numpy", id(x), x.shape, x.dtype.str, x.strides, x.__array_interface__["data"][0], _fingerprint(x))
    try:
        import jax
        if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
            return ("jax", id(x), x.shape, str(x.dtype))
    except ImportError:  # pragma: no cover
        pass
    return None


class DataCache:
    """``key -> value`` for the bound data of a program (see the module doc)."""

    def __init__(self, entries: int = ENTRIES):
        self.entries = entries
        self._store: OrderedDict = OrderedDict()  # key -> (weak refs to the inputs, value)

    def key(self, declared: Mapping, given: Mapping | None, base: Path) -> tuple | None:
        """The cache key of these inputs, or None when they cannot be cached.

        ``declared`` maps each data name to its declaration (with ``source``, the ``from``
        file); ``base`` is the directory that sources are relative to.
        """
        given = dict(given or {})
        if any(k not in declared for k in given):
            return None  # an unknown name: the binding reports it
        parts = []
        for name, decl in declared.items():
            if name in given:
                k = _array_key(given[name])
                if k is None:
                    return None
            elif getattr(decl, "source", None) is not None:
                p = (base / decl.source).resolve()
                try:
                    st = p.stat()
                except OSError:
                    return None  # the binding reports it
                k = ("file", str(p), st.st_size, st.st_mtime_ns)
            else:
                return None
            parts.append((name, k))
        return tuple(parts)

    def get(self, key: tuple | None, given: Mapping | None) -> Any:
        if key is None or key not in self._store:
            return None
        refs, value = self._store[key]
        given = dict(given or {})
        if any(r() is not given.get(name) for name, r in refs):
            self._store.pop(key, None)
            return None
        self._store.move_to_end(key)
        return value

    def put(self, key: tuple | None, given: Mapping | None, value: Any) -> None:
        if key is None:
            return
        refs = []
        me = weakref.ref(self)
        for name, x in dict(given or {}).items():
            try:
                refs.append((name, weakref.ref(x)))
                weakref.finalize(x, _drop, me, key)
            except TypeError:  # not weak-referenceable: do not cache
                return
        self._store[key] = (tuple(refs), value)
        self._store.move_to_end(key)
        while len(self._store) > self.entries:
            self._store.popitem(last=False)

    def clear(self) -> None:
        self._store.clear()

    def __len__(self) -> int:
        return len(self._store)


def _drop(cache_ref, key) -> None:
    cache = cache_ref()
    if cache is not None:
        cache._store.pop(key, None)
