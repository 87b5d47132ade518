"""A variational autoencoder on the bundled digits data, trained by the ELBO (examples/vae_digits.vr).

    python examples/vae_demo.py                  # 30 epochs of adam, about half a minute on a laptop CPU
    python examples/vae_demo.py --epochs 60
    python examples/vae_demo.py --discrete       # vae_digits_discrete.vr: a categorical latent, RLOO vs enum

The encoder and the decoder are equinox MLPs passed to the program as *trainable* externs
(``vrlang.trainable``): their weights are params of the program, optimised by the vrlang
solver.  The images are split into 1497 for training and 300 held out (seed 0); the program
logs, every epoch, the training ELBO (its objective) and the held-out ELBO (its `heldout`
report), both per image in nats, each a 16-sample Monte Carlo estimate with a fixed key
(``eval_samples = 16``).  Writes ``examples/plots/vae_digits.png``: the two ELBO curves,
the 2-D latent means of the held-out images coloured by digit, and reconstructions.
With ``--discrete`` it trains ``vae_digits_discrete.vr`` instead (a categorical latent in 0..9
per image) twice, its expectation estimated by ``score(samples = 4, baseline = loo)`` (as written)
and by ``enum``, and writes ``examples/plots/vae_digits_discrete.png``.  See ``examples/README.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import vrlang

HERE = Path(__file__).resolve().parent
PLOTS = HERE / "plots"
LATENT = 2  # the program declares encoder -> real[2, 2] and decoder(z: real[2])


class Encoder(eqx.Module):
    """x (d pixels) -> [mean of q(z | x), scale of q(z | x) before softplus], a (2, LATENT) array."""

    mlp: eqx.nn.MLP

    def __init__(self, d: int, width: int, key):
        self.mlp = eqx.nn.MLP(d, 2 * LATENT, width, 1, activation=jnp.tanh, key=key)

    def __call__(self, x):
        return self.mlp(x).reshape(2, LATENT)


def networks(d: int, width: int, seed: int):
    """The encoder and decoder (an MLP from z to the Bernoulli logits of the d pixels)."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return Encoder(d, width, k1), eqx.nn.MLP(LATENT, d, width, 1, activation=jnp.tanh, key=k2)


def split(X, y, n_test: int = 300, seed: int = 0):
    perm = np.random.default_rng(seed).permutation(len(X))
    te, tr = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return X[tr], y[tr], X[te], y[te]


def independent_pixels_loglik(Xtr, Xte) -> tuple[float, float]:
    """Mean log-likelihood (nats per image) of the best model with independent pixels (no latent)."""
    btr, bte = (Xtr >= 0.5).astype(float), (Xte >= 0.5).astype(float)
    p = np.clip(btr.mean(0), 1e-3, 1 - 1e-3)  # a few pixels are never on in the training images

    def ll(b):
        return float(np.mean(np.sum(b * np.log(p) + (1 - b) * np.log1p(-p), axis=1)))

    return ll(btr), ll(bte)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=None, help="override the program's epochs (30)")
    ap.add_argument("--width", type=int, default=32, help="hidden units of each MLP")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--discrete", action="store_true", help="the categorical-latent variant, RLOO vs enum")
    args = ap.parse_args(argv)
    if args.discrete:
        return discrete(args)
    t_start = time.perf_counter()

    with np.load(HERE / "data" / "digits.npz") as z:
        X, y = z["X"], z["y"]
    Xtr, ytr, Xte, yte = split(X, y)
    enc, dec = networks(X.shape[1], args.width, args.seed)
    prog = vrlang.compile(HERE / "vae_digits.vr",
                          externs={"encoder": vrlang.trainable(enc), "decoder": vrlang.trainable(dec)},
                          solver=None if args.epochs is None else f"adam(lr = 0.01, epochs = {args.epochs})")
    n_weights = sum(int(np.prod(p.type.shape)) for p in prog.checked.params.values())
    print(f"VAE on digits: {len(Xtr)} training and {len(Xte)} held-out images of {X.shape[1]} binarised pixels, "
          f"latent dimension {LATENT}, {n_weights} weights (two MLPs, {args.width} hidden units)")
    print(f"estimators: {', '.join(f'{b} by {c.spec}' for b, c in prog.choices.items())}; solver {prog.solver.spec}")

    res = prog.solve(data={"X": Xtr, "Xte": Xte}, key=args.seed)
    wall = time.perf_counter() - t_start
    h = res.history
    print("\nepoch   train ELBO   held-out ELBO   (nats per image; 16-sample Monte Carlo, fixed key)")
    for e in sorted(set(range(0, len(h["epoch"]), 5)) | {len(h["epoch"]) - 1}):
        print(f"{e:5d}   {h['objective'][e]:10.3f}   {h['heldout'][e]:13.3f}")
    lp_tr, lp_te = independent_pixels_loglik(Xtr, Xte)
    print(f"\nfor comparison, independent pixels (no latent, fitted on the training images): "
          f"train {lp_tr:.3f}, held-out {lp_te:.3f}")
    print(f"status {res.status}; {res.steps} adam steps; solve loop {h['time'][-1]:.2f} s; "
          f"whole script up to here {wall:.1f} s (imports, compilation, XLA compile and the solve)")

    if not args.no_plot:
        plot(prog, res, Xte, yte)
    return res


def plot(prog, res, Xte, yte):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PLOTS.mkdir(exist_ok=True)
    enc = prog.module("encoder", res.params)  # the trained networks
    dec = prog.module("decoder", res.params)
    q = jax.vmap(enc)(jnp.asarray(Xte, jnp.float32))
    mu = np.asarray(q[:, 0])
    recon = np.asarray(jax.nn.sigmoid(jax.vmap(dec)(q[:, 0])))  # decoder probabilities at the latent mean

    h = res.history
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.3), gridspec_kw={"width_ratios": [1, 1.1, 1]})
    ax[0].plot(h["epoch"], h["objective"], label="train")
    ax[0].plot(h["epoch"], h["heldout"], label="held out")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("ELBO (nats per image)")
    ax[0].set_ylim(bottom=max(min(h["objective"].min(), h["heldout"].min()), h["objective"][1] - 10))
    ax[0].set_title("ELBO (sgd(batch = 64) + reparam, adam)")
    ax[0].legend()
    sc = ax[1].scatter(mu[:, 0], mu[:, 1], c=yte, cmap="tab10", s=10)
    fig.colorbar(sc, ax=ax[1], ticks=range(10), label="digit")
    ax[1].set_title("latent means of the held-out images")
    ax[1].set_xlabel("$z_1$")
    ax[1].set_ylabel("$z_2$")
    rows, k = [], 8  # 16 held-out images: each row of originals is followed by its reconstructions
    for r in range(2):
        js = range(r * k, (r + 1) * k)
        rows.append(np.concatenate([(Xte[j] >= 0.5).reshape(8, 8) for j in js], axis=1))
        rows.append(np.concatenate([recon[j].reshape(8, 8) for j in js], axis=1))
    gap = np.zeros((1, 8 * k))
    ax[2].imshow(np.concatenate([rows[0], rows[1], gap, gap, rows[2], rows[3]]), cmap="gray_r", vmin=0, vmax=1)
    ax[2].set_axis_off()
    ax[2].set_title("held-out images (rows 1, 3) and decoder\nprobabilities at their latent means (rows 2, 4)")
    fig.tight_layout()
    fig.savefig(PLOTS / "vae_digits.png", dpi=110)
    plt.close(fig)
    print(f"wrote {PLOTS / 'vae_digits.png'}")


def discrete(args):
    """vae_digits_discrete.vr trained with its score-function estimator (RLOO) and with enum."""
    t_start = time.perf_counter()
    with np.load(HERE / "data" / "digits.npz") as z:
        X, y = z["X"], z["y"]
    Xtr, ytr, Xte, yte = split(X, y)
    solver = None if args.epochs is None else f"adam(lr = 0.01, epochs = {args.epochs})"
    runs = {}
    for label, est in (("score(samples = 4, baseline = loo)", None), ("enum", "enum")):
        k1, k2 = jax.random.split(jax.random.PRNGKey(args.seed))
        enc = eqx.nn.MLP(X.shape[1], 10, args.width, 1, activation=jnp.tanh, key=k1)
        dec = eqx.nn.MLP(10, X.shape[1], args.width, 1, activation=jnp.tanh, key=k2)
        prog = vrlang.compile(HERE / "vae_digits_discrete.vr", solver=solver,
                              externs={"encoder": vrlang.trainable(enc), "decoder": vrlang.trainable(dec)},
                              estimators=None if est is None else {"c": est})
        res = prog.solve(data={"X": Xtr, "Xte": Xte}, key=args.seed)
        runs[label] = (prog, res)
        print(f"c by {prog.choices['c'].spec}: {res.steps} adam steps, solve loop {res.history['time'][-1]:.2f} s")
    print("\nELBO, nats per image (the score run logs a 16-sample fixed-key estimate, enum the exact value)")
    short = {"score(samples = 4, baseline = loo)": "RLOO", "enum": "enum"}
    print("epoch" + "".join(f"{short[lab] + ' train':>14}{short[lab] + ' held-out':>16}" for lab in runs))
    n_ep = min(len(r.history["epoch"]) for _, r in runs.values())
    for e in sorted(set(range(0, n_ep, 5)) | {n_ep - 1}):
        print(f"{e:5d}" + "".join(f"{r.history['objective'][e]:14.3f}{r.history['heldout'][e]:16.3f}"
                                  for _, r in runs.values()))
    print(f"whole run {time.perf_counter() - t_start:.1f} s (two compilations and solves)")
    if args.no_plot:
        return runs
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    PLOTS.mkdir(exist_ok=True)
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.2))
    for (label, (prog, res)), col in zip(runs.items(), ("C0", "C3")):
        h = res.history
        ax[0].plot(h["epoch"], h["objective"], color=col, label=f"{label}: train")
        ax[0].plot(h["epoch"], h["heldout"], color=col, ls="--", label=f"{label}: held out")
    ax[0].set_ylim(bottom=min(r.history["heldout"][1] for _, r in runs.values()) - 2)
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("ELBO (nats per image)")
    ax[0].set_title("categorical latent: score function (RLOO) vs enum")
    ax[0].legend(fontsize=8)
    prog, res = runs["score(samples = 4, baseline = loo)"]
    dec = prog.module("decoder", res.params)
    enc = prog.module("encoder", res.params)
    protos = np.asarray(jax.nn.sigmoid(jax.vmap(dec)(jnp.eye(10))))
    q = np.asarray(jax.nn.softmax(jax.vmap(enc)(jnp.asarray(Xte, jnp.float32)), axis=-1))
    order = np.argsort(-q.sum(0))  # clusters by how much held-out mass they take
    ax[1].imshow(np.concatenate([protos[c].reshape(8, 8) for c in order], axis=1), cmap="gray_r", vmin=0, vmax=1)
    ax[1].set_axis_off()
    share = ", ".join(f"{q[:, c].mean():.2f}" for c in order)
    ax[1].set_title(f"decoder probabilities for the 10 values of c (RLOO run), by their\nshare of the held-out images: {share}", fontsize=9)
    fig.tight_layout()
    fig.savefig(PLOTS / "vae_digits_discrete.png", dpi=110)
    plt.close(fig)
    print(f"wrote {PLOTS / 'vae_digits_discrete.png'}")
    return runs


if __name__ == "__main__":
    main()
