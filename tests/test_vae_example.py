"""examples/vae_digits.vr: the compiled ELBO and its gradient against a hand-written JAX ELBO.

The networks are equinox MLPs passed as trainable externs (vrlang.trainable); the reference
below is plain jax.numpy on the same weights (read from the program's params by name).
Randomness follows the documented scheme (docs/language.md): the minibatch of ``i`` is drawn
from ``fold_in(key, binder_salt("i"))``, item j uses ``fold_in(key, j)``, the expectation ``z``
inside it ``fold_in(that, binder_salt("z"))`` and ``Normal.rsample``, i.e.
``mu + sigma * normal(key, (k, 2))``; the fixed-key evaluation (the logged objective and
reports) uses ``PRNGKey(0x5EED)`` and max(k, eval_samples) samples for every item.
Compile time dominates: one compiled estimator (vmapped over 2000 keys) serves the
formula and unbiasedness tests, one solve the training test.
"""

from __future__ import annotations

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vrlang
from vrlang.backend.lower import binder_salt
from vrlang.estimators.expectation import _EVAL_KEY

VR = Path(__file__).resolve().parent.parent / "examples" / "vae_digits.vr"
WIDTH = 8


class Encoder(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, x):
        return self.mlp(x).reshape(2, 2)


def _networks(seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    enc = Encoder(eqx.nn.MLP(64, 4, WIDTH, 1, activation=jnp.tanh, key=k1))
    dec = eqx.nn.MLP(2, 64, WIDTH, 1, activation=jnp.tanh, key=k2)
    return enc, dec


def _digits(n, m, seed=0):
    with np.load(VR.parent / "data" / "digits.npz") as z:
        X = z["X"]
    idx = np.random.default_rng(seed).permutation(len(X))
    return {"X": X[idx[:n]], "Xte": X[idx[n:n + m]]}


def _compile(**kw):
    enc, dec = _networks()
    return vrlang.compile(VR, externs={"encoder": vrlang.trainable(enc), "decoder": vrlang.trainable(dec)}, **kw)


# ----------------------------------------------------------------- the hand-written reference


def _mlp(p, prefix, x):
    h = jnp.tanh(p[f"{prefix}.layers.0.weight"] @ x + p[f"{prefix}.layers.0.bias"])
    return p[f"{prefix}.layers.1.weight"] @ h + p[f"{prefix}.layers.1.bias"]


def _item_elbo(p, x, eps):
    """log p(x | z) averaged over z = mu + sigma * eps (rows of eps), minus KL(q || N(0, I))."""
    q = _mlp(p, "encoder.mlp", x).reshape(2, 2)
    mu, s = q[0], jax.nn.softplus(q[1])
    logits = jax.vmap(lambda e: _mlp(p, "decoder", mu + s * e))(eps)
    b = x >= 0.5
    loglik = jnp.mean(jnp.sum(jnp.where(b, jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)), axis=-1))
    kl = 0.5 * jnp.sum(mu ** 2 + s ** 2 - 1) - jnp.sum(jnp.log(s))
    return loglik - kl


def ref_elbo(p, X, eps):
    """Mean over the images of the per-image ELBO estimate with noise eps[i] (shape (n, k, 2))."""
    return jnp.mean(jax.vmap(lambda x, e: _item_elbo(p, x, e))(X, eps))


def ref_minibatch_elbo(p, X, key, batch):
    """One draw of the program's objective, as documented: `sgd(batch = b)` draws b images uniformly with
    replacement from fold_in(key, binder_salt("i")) (weights n/b of a mean: the minibatch mean); image j
    draws its noise from fold_in(fold_in(key, j), binder_salt("z")); one sample (reparam(samples = 1))."""
    idx = jax.random.randint(jax.random.fold_in(key, binder_salt("i")), (batch,), 0, X.shape[0], dtype=jnp.int32)
    eps = jax.vmap(lambda j: jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, j), binder_salt("z")),
                                               (1, 2)))(idx)
    return ref_elbo(p, X[idx], eps)


def _flat(g):
    return jnp.concatenate([jnp.ravel(g[k]) for k in sorted(g)])


N_IMAGES, DRAWS = 40, 2000


@pytest.fixture(scope="module")
def draws():
    """DRAWS draws of the compiled gradient estimator of the file as written (sgd(batch = 64) over 40 images,
    reparam(samples = 1)), in float64, vmapped over independent keys."""
    with jax.enable_x64(True):
        data = _digits(N_IMAGES, 5)
        prog = _compile(x64=True)
        assert {b: str(c.spec) for b, c in prog.choices.items()} == {
            "z": "reparam(samples = 1, eval_samples = 16)", "i": "sgd(batch = 64)", "j": "full"}
        params = prog.init_params(data)
        assert len(params) == 8 and "decoder.layers.1.weight" in params  # the networks' weights are params
        p = {k: jnp.asarray(v) for k, v in params.items()}
        est = prog.gradient_estimator(data).module
        keys = jax.random.split(jax.random.PRNGKey(0), DRAWS)
        G = jax.jit(jax.vmap(lambda k: _flat(est.estimate(p, None, k)[0])))(keys)
        return {"p": p, "X": jnp.asarray(data["X"]), "keys": keys, "G": np.asarray(G)}


# ------------------------------------------------------------------------ deterministic tests


def test_compiled_gradient_matches_hand_written_elbo_with_the_same_noise(draws):
    """Each draw of the compiled estimator = jax.grad of the hand-written minibatch ELBO with the same
    minibatch and the same reparameterisation noise."""
    with jax.enable_x64(True):
        ref = jax.jit(jax.grad(ref_minibatch_elbo), static_argnums=3)
        for j in (0, 1, DRAWS - 1):
            want = _flat(ref(draws["p"], draws["X"], draws["keys"][j], 64))
            np.testing.assert_allclose(draws["G"][j], np.asarray(want), rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------- unbiasedness (z-test)


def test_compiled_gradient_is_unbiased(draws):
    """Mean of the draws vs the exact gradient estimated by the reference over all images with many samples
    (40 independent replicates, 250 samples per image each); tolerance from both standard errors."""
    ref_reps, ref_k = 40, 250
    p, X, G = draws["p"], draws["X"], draws["G"]
    with jax.enable_x64(True):
        @jax.jit
        def reference(keys):  # a low-variance estimate of the exact gradient
            return jax.lax.map(lambda key: _flat(jax.grad(ref_elbo)(p, X, jax.random.normal(key, (len(X), ref_k, 2)))),
                               keys)

        R = np.asarray(reference(jax.random.split(jax.random.PRNGKey(1), ref_reps)))
    m, se = G.mean(0), G.std(0, ddof=1) / np.sqrt(len(G))
    r, se_r = R.mean(0), R.std(0, ddof=1) / np.sqrt(ref_reps)
    tot = np.sqrt(se ** 2 + se_r ** 2)
    live = tot > 0  # the weights of pixels that are 0 in every image have gradient exactly 0 in both
    np.testing.assert_array_equal(m[~live], 0.0)
    np.testing.assert_array_equal(r[~live], 0.0)
    z = (m - r)[live] / tot[live]
    assert np.max(np.abs(z)) < 5.0, f"max |z| = {np.max(np.abs(z)):.2f} over {live.sum()} coordinates"
    # along the gradient: the projections agree, and the test has the power to see a bias of 1% of |g|
    u = r / np.linalg.norm(r)
    se_u = np.sqrt(np.var(G @ u, ddof=1) / len(G) + np.var(R @ u, ddof=1) / ref_reps)
    assert abs(m @ u - r @ u) / se_u < 4.0
    assert 0.01 * np.linalg.norm(r) / se_u > 8.0, "too few draws to detect a bias of 1% of the gradient norm"
    assert abs(0.99 * m @ u - r @ u) / se_u > 4.0  # a 1%-shrunk estimator is rejected


# ---------------------------------------------------------------------------------- training


def test_short_training_run_increases_the_elbo():
    """A short solve (the file's estimators, adam) raises the training and held-out ELBO; the logged values
    at the initial point are the reference's fixed-key estimates (16 samples, the same for every item)."""
    data = _digits(256, 64)
    prog = _compile(solver="adam(lr = 0.02, epochs = 8)")
    p0 = {k: jnp.asarray(v, jnp.float32) for k, v in prog.init_params(data).items()}
    res = prog.solve(data, key=0)
    h = res.history
    eps = jax.random.normal(jax.random.PRNGKey(_EVAL_KEY), (16, 2))
    for name, X in (("objective", data["X"]), ("heldout", data["Xte"])):
        want = jax.jit(ref_elbo)(p0, jnp.asarray(X, jnp.float32), jnp.broadcast_to(eps, (len(X), 16, 2)))
        np.testing.assert_allclose(h[name][0], want, rtol=2e-5)
    assert res.status == "max_steps" and np.all(np.isfinite(h["objective"]))
    assert h["objective"][-1] > h["objective"][0] + 10.0, h["objective"]  # from about -44 nats per image
    assert h["heldout"][-1] > h["heldout"][0] + 10.0, h["heldout"]
    enc = prog.module("encoder", res.params)  # the trained module evaluates like the program's extern
    q = enc(jnp.asarray(data["X"][0], jnp.float32))
    assert q.shape == (2, 2) and np.all(np.isfinite(np.asarray(q)))


# ------------------------------------------------------- the discrete variant (vae_digits_discrete.vr)

VR_DISCRETE = VR.parent / "vae_digits_discrete.vr"


def _compile_discrete(**kw):
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    enc = eqx.nn.MLP(64, 10, WIDTH, 1, activation=jnp.tanh, key=k1)
    dec = eqx.nn.MLP(10, 64, WIDTH, 1, activation=jnp.tanh, key=k2)
    return vrlang.compile(VR_DISCRETE, externs={"encoder": vrlang.trainable(enc), "decoder": vrlang.trainable(dec)},
                          x64=True, **kw)


def ref_discrete_elbo(p, X):
    """The exact ELBO of the categorical-latent model, by hand: sum over the 10 values of c."""
    def item(x):
        t = _mlp(p, "encoder", x)
        q = jax.nn.softmax(t)
        logits = jax.vmap(lambda c: _mlp(p, "decoder", jax.nn.one_hot(c, 10)))(jnp.arange(10))
        b = x >= 0.5
        ll = jnp.sum(jnp.where(b, jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)), axis=-1)
        return q @ ll - (jnp.sum(q * jax.nn.log_softmax(t)) + jnp.log(10.0))
    return jnp.mean(jax.vmap(item)(X))


def test_discrete_latent_score_loo_is_unbiased_against_enum_and_hand_written_exact_gradient():
    """`enum` over c gives the exact ELBO gradient (= the hand-written sum over the support); draws of the
    file's score(samples = 4, baseline = loo) estimator (sum exact here) have that gradient as their mean."""
    draws_n = 2000
    with jax.enable_x64(True):
        data = _digits(12, 5)
        exact = _compile_discrete(estimators={"i": "full", "c": "enum"})
        params = exact.init_params(data)
        p = {k: jnp.asarray(v) for k, v in params.items()}
        X = jnp.asarray(data["X"])
        g = np.asarray(_flat(exact.grad(params, data)))
        np.testing.assert_allclose(g, np.asarray(_flat(jax.grad(ref_discrete_elbo)(p, X))), rtol=1e-8, atol=1e-10)

        prog = _compile_discrete(estimators={"i": "full"})
        assert str(prog.choices["c"].spec) == "score(samples = 4, baseline = loo, eval_samples = 16)"
        est = prog.gradient_estimator(data).module
        keys = jax.random.split(jax.random.PRNGKey(2), draws_n)
        G = np.asarray(jax.jit(jax.vmap(lambda k: _flat(est.estimate(p, None, k)[0])))(keys))
    m, se = G.mean(0), G.std(0, ddof=1) / np.sqrt(draws_n)
    live = se > 0
    np.testing.assert_allclose(m[~live], g[~live], atol=1e-12)  # e.g. pixels that are 0 in every image
    z = (m - g)[live] / se[live]
    assert np.max(np.abs(z)) < 5.0, f"max |z| = {np.max(np.abs(z)):.2f} over {live.sum()} coordinates"
    u = g / np.linalg.norm(g)
    se_u = np.std(G @ u, ddof=1) / np.sqrt(draws_n)
    assert abs(m @ u - g @ u) / se_u < 4.0
    assert 0.01 * np.linalg.norm(g) / se_u > 8.0  # a bias of 1% of the gradient norm would be seen
    # the encoder block alone (where the score term acts; the decoder's gradient given c is pathwise):
    names = sorted(params)
    enc = np.concatenate([np.full(params[k].size, k.startswith("encoder")) for k in names])
    ue = g[enc] / np.linalg.norm(g[enc])
    se_e = np.std(G[:, enc] @ ue, ddof=1) / np.sqrt(draws_n)
    assert abs(m[enc] @ ue - g[enc] @ ue) / se_e < 4.0
    assert abs(0.95 * m[enc] @ ue - g[enc] @ ue) / se_e > 4.0  # a 5% shrinkage of the score part is rejected
