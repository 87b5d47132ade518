"""Data binding: converted once in the program's float type, cached for the same input arrays.

``Program._bind_data`` validates and converts the data (``vrlang.data.validate``) and copies
them to the device; ``vrlang.data_cache.DataCache`` reuses the result while the same array
objects come again, and must miss whenever the values could differ: an array changed in
place, a new object, a garbage-collected one (its id reused), ``clear_data_cache()``.
"""

from __future__ import annotations

import gc

import jax.numpy as jnp
import numpy as np
import pytest

import vrlang
from vrlang import data as D
from vrlang.errors import VrDataError

SRC = """
data X: real[n, d]
data y: real[n]
param w: real[d] = 0.5
minimize mean(i in 0..n: softplus(-y[i] * dot(X[i], w))) + sumsq(w) / 100
"""


def _f(w, X, y):
    return float(np.mean(np.logaddexp(0.0, -y * (X @ w))) + np.sum(w * w) / 100)


@pytest.fixture()
def counted(monkeypatch):
    calls = []
    real = D.validate

    def validate(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(D, "validate", validate)
    return calls


def _data(seed=0, n=50, d=3, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return {"X": rng.normal(size=(n, d)).astype(dtype), "y": np.sign(rng.normal(size=n)).astype(dtype)}


def test_same_arrays_are_converted_once(counted):
    prog = vrlang.compile(SRC)
    data = _data()
    w = {"w": np.array([0.1, -0.2, 0.3])}
    v1 = prog.objective(w, data)
    r1 = prog.solve(data, solver="sgd(lr = 0.1, epochs = 2)")
    v2 = prog.objective(w, dict(data))  # another dict, the same arrays
    r2 = prog.solve(data, solver="sgd(lr = 0.1, epochs = 2)")
    assert len(counted) == 1
    assert v1 == v2 == pytest.approx(_f(w["w"], data["X"].astype(np.float64), data["y"]), rel=1e-5)
    np.testing.assert_array_equal(r1.params["w"], r2.params["w"])


def test_changes_are_seen(counted):
    prog = vrlang.compile(SRC)
    data = _data()
    w = {"w": np.array([0.1, -0.2, 0.3])}
    v = prog.objective(w, data)
    data["X"] *= 2  # in place: the same object, other values
    v_scaled = prog.objective(w, data)
    assert len(counted) == 2
    assert v_scaled == pytest.approx(_f(w["w"], data["X"].astype(np.float64), data["y"]), rel=1e-5) and v_scaled != v
    other = {k: a.copy() for k, a in data.items()}  # a new object with the same values
    assert prog.objective(w, other) == pytest.approx(v_scaled, rel=1e-6)
    assert len(counted) == 3
    prog.clear_data_cache()
    prog.objective(w, other)
    assert len(counted) == 4
    data2 = _data(seed=1)  # other data of the same shape: no recompilation, new values
    v2 = prog.objective(w, data2)
    n = len(counted)
    data2["X"][len(data2["X"]) // 3 + 1, 1] += 0.5  # one entry, in place
    assert prog.objective(w, data2) != v2 and len(counted) == n + 1
    np.random.default_rng(5).shuffle(data2["y"])  # a permutation in place keeps sums, not the checksum
    prog.objective(w, data2)
    assert len(counted) == n + 2
    strided = {"X": data2["X"][::2], "y": data2["y"][::2]}  # not contiguous: bound each time, never cached
    prog.objective(w, strided), prog.objective(w, strided)
    assert len(counted) == n + 4
    assert prog.objective(w, data2) == pytest.approx(_f(w["w"], data2["X"].astype(np.float64), data2["y"]), rel=1e-5)


def test_entries_die_with_their_arrays(counted):
    prog = vrlang.compile(SRC)
    data = _data()
    prog.objective({"w": np.zeros(3)}, data)
    assert len(prog._data_cache) == 1
    del data
    gc.collect()
    assert len(prog._data_cache) == 0  # the cache neither keeps the arrays alive nor outlives them


def test_jax_arrays_and_lists():
    prog = vrlang.compile(SRC)
    data = {k: jnp.asarray(v) for k, v in _data().items()}
    w = {"w": np.array([0.1, -0.2, 0.3])}
    v = prog.objective(w, data)
    assert prog._data_cache.get(prog._data_cache.key(prog.checked.data, data, prog_base()), data) is not None
    lists = {k: np.asarray(a).tolist() for k, a in data.items()}  # not cacheable: converted every time
    assert prog.objective(w, lists) == pytest.approx(v, rel=1e-6)
    assert prog._data_cache.key(prog.checked.data, lists, prog_base()) is None


def prog_base():
    from pathlib import Path
    return Path.cwd()


def test_float32_data_are_not_copied():
    prog = vrlang.compile(SRC)
    data = _data()
    arrays, dims = D.validate(prog.checked, data, np.float32)
    assert arrays["X"] is data["X"] and dims == {"n": 50, "d": 3}
    arrays, _ = D.validate(prog.checked, _data(dtype=np.float64), np.float32)
    assert arrays["X"].dtype == np.float32  # converted to the program's float type, not float64


def test_non_finite_data_still_refused():
    prog = vrlang.compile(SRC)
    data = _data()
    data["X"][3, 1] = np.nan
    with pytest.raises(VrDataError, match=r"NaN at index \[3, 1\]") as e:
        prog.objective({"w": np.zeros(3)}, data)
    assert e.value.code == "E411"
    big = _data(dtype=np.float64)
    big["y"][7] = 1e39  # finite in float64, inf in the program's float32
    with pytest.raises(VrDataError, match=r"inf at index \[7\].*float32") as e:
        prog.objective({"w": np.zeros(3)}, big)
    assert e.value.code == "E411"
    ok = _data(dtype=np.float64)
    ok["X"][:] = 1e38  # a float32 sum of these overflows although every entry is finite
    assert np.isfinite(prog.objective({"w": np.zeros(3)}, ok))
