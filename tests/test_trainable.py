"""Trainable externs (vrlang.trainable): an equinox module's weights as params of the program."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vrlang
from vrlang.errors import VrEstimatorError

SRC = """
data X: real[n, d]
data y: real[n]
extern net(x: real[d]) -> real
minimize mean(i in 0..n: (net(X[i]) - y[i])^2)
"""


def _mlp(seed=0):
    return eqx.nn.MLP(3, "scalar", 4, 1, activation=jnp.tanh, key=jax.random.PRNGKey(seed))


def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10, 3))
    return {"X": X, "y": np.sin(X[:, 0]) + 0.5 * X[:, 1]}


def _ref_loss(p, X, y):
    """The same objective written by hand in jax.numpy."""
    h = jnp.tanh(X @ p["net.layers.0.weight"].T + p["net.layers.0.bias"])
    out = h @ p["net.layers.1.weight"][0] + p["net.layers.1.bias"][0]
    return jnp.mean((out - y) ** 2)


def test_plain_module_is_a_fixed_function_trainable_makes_its_weights_params():
    mlp, data = _mlp(), _data()
    assert vrlang.compile(SRC, externs={"net": mlp}).init_params(data) == {}  # weights are constants
    prog = vrlang.compile(SRC, externs={"net": vrlang.trainable(mlp)}, x64=True)
    p0 = prog.init_params(data)
    assert sorted(p0) == ["net.layers.0.bias", "net.layers.0.weight", "net.layers.1.bias", "net.layers.1.weight"]
    np.testing.assert_array_equal(p0["net.layers.0.weight"], np.asarray(mlp.layers[0].weight))  # the module's init
    assert p0["net.layers.1.weight"].shape == (1, 4) and p0["net.layers.1.bias"].shape == (1,)
    assert "net.layers.0.weight: real[4, 3]" in prog.explain()
    with jax.enable_x64(True):
        p = {k: jnp.asarray(v) for k, v in p0.items()}
        X, y = jnp.asarray(data["X"]), jnp.asarray(data["y"])
        np.testing.assert_allclose(prog.objective(p0, data), _ref_loss(p, X, y), rtol=1e-12)
        g, want = prog.grad(p0, data), jax.grad(_ref_loss)(p, X, y)
        for k in want:
            np.testing.assert_allclose(g[k], want[k], rtol=1e-10, atol=1e-14, err_msg=k)


def test_solve_trains_the_weights_and_module_returns_the_trained_network():
    data = _data()
    prog = vrlang.compile(SRC, externs={"net": vrlang.trainable(_mlp())}, solver="adam(lr = 0.05, steps = 60)")
    res = prog.solve(data)
    assert res.history["objective"][-1] < 0.5 * res.history["objective"][0]
    net = prog.module("net", res.params)
    out = jax.vmap(net)(jnp.asarray(data["X"], jnp.float32))
    np.testing.assert_allclose(np.mean((np.asarray(out) - data["y"]) ** 2), res.objective, rtol=1e-5)
    with pytest.raises(KeyError, match="not a trainable extern"):
        prog.module("nope", res.params)


def test_weights_are_visible_to_the_structure_analysis():
    """A GLM body plus a trainable network of X[i] is not a GLM (SAGA's scalar table would drop the network's
    gradient); with a fixed network the extra term is param-free and the body stays a GLM."""
    src = """
    data X: real[n, d]
    data y: real[n]
    param w: real[d]
    extern net(x: real[d]) -> real
    minimize mean(i in 0..n: softplus(-y[i] * dot(X[i], w)) + net(X[i])^2)
    estimate i by saga(batch = 2)
    """
    fixed = vrlang.compile(src, externs={"net": _mlp()}).choices["i"].options["structure"]
    trained = vrlang.compile(src, externs={"net": vrlang.trainable(_mlp())}).choices["i"].options["structure"]
    assert fixed and not trained
    assert "net.layers.0.weight" in trained.reason


def test_trainable_extern_in_sampling_weights_is_refused():
    src = SRC + "estimate i by sgd(batch = 2, sampling = weights(abs(net(X[i]))))\n"
    prog = vrlang.compile(src, externs={"net": vrlang.trainable(_mlp())})
    with pytest.raises(VrEstimatorError) as e:
        prog.solve(_data(), solver="adam(lr = 0.1, steps = 1)")
    assert e.value.code == "E318"


def test_trainable_needs_an_equinox_module_with_arrays():
    with pytest.raises(VrEstimatorError) as e:
        vrlang.trainable(lambda x: x)
    assert e.value.code == "E317"

    class NoWeights(eqx.Module):
        def __call__(self, x):
            return jnp.sum(x)

    with pytest.raises(VrEstimatorError) as e:
        vrlang.trainable(NoWeights())
    assert e.value.code == "E317"


def test_a_shared_argument_is_traced_once():
    """A def argument used three times (and a `let`) is evaluated once per evaluation, not once per use."""
    calls = []

    def ext(x):
        calls.append(1)
        return jnp.sum(x)

    src = """
    data X: real[n, d]
    param a: real = 1
    extern ext(x: real[d]) -> real
    def f(u: real) = u * u + a * u
    minimize mean(i in 0..n: f(ext(X[i])))
    """
    prog = vrlang.compile(src, externs={"ext": ext})
    X = np.ones((4, 3))
    assert prog.objective({"a": 1.0}, {"X": X}) == pytest.approx(12.0)
    assert len(calls) == 1  # one trace of the vmapped body, one call of the extern
