"""The solve loop lowers the threefry PRNG unrolled on the CPU (vrlang.solvers.loop._unrolled_threefry).

JAX's CPU rule is a rolled 5-round ``fori_loop``; inside the context the generic rule is used.  What
must hold: the same random bits (so the same minibatches and iterates), straight-line code (no while
loop left for the hash), and the CPU rule restored afterwards.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vrlang.solvers import loop

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the rolled lowering is JAX's CPU rule")


def _draws(key):
    # what a step does: split the carried key, fold in a binder salt, draw a minibatch of indices
    key, k = jax.random.split(key)
    idx = jax.random.randint(jax.random.fold_in(k, 12345), (64,), 0, 100_000, dtype=jnp.int32)
    return key, idx, jax.random.normal(k, (8,))


def _lowered(fn, *args):
    return jax.jit(fn).lower(*args).as_text()


def test_unrolled_threefry_same_bits_no_loop_and_restored():
    keys = [jax.random.PRNGKey(s) for s in (0, 1, 2**31 - 1)]
    # fresh function objects, so that no jit cache entry is shared between the two lowerings
    rolled_fn = lambda k: _draws(k)  # noqa: E731
    unrolled_fn = lambda k: _draws(k)  # noqa: E731
    txt_rolled = _lowered(rolled_fn, keys[0])
    with loop._unrolled_threefry():
        txt_unrolled = _lowered(unrolled_fn, keys[0])
        got = [jax.jit(unrolled_fn)(k) for k in keys]
    want = [jax.jit(rolled_fn)(k) for k in keys]
    assert "while" in txt_rolled  # JAX's CPU rule: the hash is a loop (if this fails, JAX changed it)
    assert "while" not in txt_unrolled
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the CPU rule is back after the context
    assert "while" in _lowered(lambda k: _draws(k), keys[1])
