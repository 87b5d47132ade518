"""The bound data of a program, reused while the same arrays come again.

Binding data (:func:`vrlang.data.validate`: shape checks, conversion to the program's float
type, the finiteness check; then the copy to the device) costs a pass or two over the data
-- seconds for a design matrix of gigabytes -- and every ``solve``/``objective``/``grad``
call binds its data.  :class:`DataCache` keeps the device arrays of the last few data sets,
keyed by what identifies each input *object* cheaply:

* a numpy array: its ``id``, shape, dtype, strides, buffer address and a checksum of its
  whole buffer (CRC-32 and Adler-32, about 4 GB/s: a fraction of the cost of binding), so
  that any change in place -- ``X *= 2``, one row overwritten, ``rng.shuffle(X)`` -- is
  seen (up to a 64-bit checksum collision); an array that is not contiguous is not cached;
* a jax array: its ``id``, shape and dtype (jax arrays are immutable);
* a declared ``from "file"`` source: the resolved path, its size and modification time.

Any other input (lists, scalars) is not cached.  An entry holds *weak* references to the
input arrays and is dropped as soon as one of them is garbage-collected, so an ``id``
reused by a new object can never hit a stale entry, and the cache never keeps user arrays
alive.  :meth:`vrlang.Program.clear_data_cache` empties it.
"""

from __future__ import annotations

import weakref
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np

ENTRIES = 2  # data sets kept (least recently used dropped first)


def _fingerprint(a: np.ndarray) -> tuple | None:
    """A checksum of every byte of a contiguous array (None: not contiguous, not cached)."""
    if not (a.flags.c_contiguous or a.flags.f_contiguous):
        return None
    buf = memoryview(a.reshape(-1, order="A")).cast("B") if a.size else b""
    return zlib.crc32(buf), zlib.adler32(buf)


def _array_key(x) -> tuple | None:
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            return None
        fp = _fingerprint(x)
        if fp is None:
            return None
        return ("numpy", id(x), x.shape, x.dtype.str, x.strides, x.__array_interface__["data"][0], fp)
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
