"""Gradient estimators for expectations, compared by measured variance (and bias).

    python examples/expectations_demo.py            # all three examples
    python examples/expectations_demo.py toy        # or: policy, gaussian
    python examples/expectations_demo.py toy --draws 50000

For each example this compiles the `.vr` program once per estimator (the `estimate`
statement overridden with ``estimators={...}``), draws the compiled gradient estimator
many times with independent keys (vmapped, float64), compares the mean with the exact
gradient (closed form or enumeration) and prints a table; the plots go to
``examples/plots/``.  See ``examples/README.md``.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import vrlang

HERE = Path(__file__).resolve().parent
PLOTS = HERE / "plots"


# ------------------------------------------------------------------- measuring


def _flat(tree):
    return jnp.concatenate([jnp.ravel(tree[k]) for k in sorted(tree)])


def measure(path, binder, specs, params, draws, externs=None, seed=0):
    """Draws of the compiled gradient estimator for each spec: a dict spec -> array (draws, n_params).

    All estimators are traced into one jitted function (XLA compile time is mostly fixed
    cost, so one compile for all of them is much faster than one each).
    """
    with jax.enable_x64(True):
        p = {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}
        mods = []
        for spec in specs:
            prog = vrlang.compile(path, x64=True, estimators={binder: spec}, externs=externs)
            est = prog.gradient_estimator()
            mods.append((est.module, est.init(p, 0)))

        @jax.jit
        def run(key):
            keys = jax.random.split(key, draws)
            return [jax.vmap(lambda k, m=m, s=s: _flat(m.estimate(p, s, k)[0]))(keys) for m, s in mods]

        out = run(jax.random.PRNGKey(seed))
        return {spec: np.asarray(g) for spec, g in zip(specs, out)}


def summarise(g, exact):
    """Mean, standard error, total variance (trace of the covariance) and bias of draws ``g``."""
    mean = g.mean(0)
    se = g.std(0, ddof=1) / np.sqrt(len(g))
    return {"mean": mean, "se": se, "var": float(np.sum(g.var(0, ddof=1))),
            "bias": float(np.linalg.norm(mean - exact)), "ratio": float(mean @ exact / (exact @ exact)),
            "ratio_se": float(np.sqrt(np.sum((se * exact) ** 2)) / (exact @ exact)),
            "max_z": float(np.max(np.abs(mean - exact) / np.maximum(se, 1e-300)))}


def _table(rows, cols):
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(x.ljust(w) for x, w in zip(r, widths)))


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    PLOTS.mkdir(exist_ok=True)
    return plt


# ------------------------------------------------------------------ 1. the toy


def toy(draws):
    path = HERE / "bernoulli_toy.vr"
    t = 0.0
    q = 1 / (1 + np.exp(-t))
    exact = np.array([0.1 * q * (1 - q)])  # d/dt [(1 - q) 0.45^2 + q 0.55^2]
    cv = "cv(b, mean = sigmoid(t), coef = optimal, inner = score(samples = 4{}))"
    specs = [("REINFORCE", "score(samples = 1)", 1),
             ("REINFORCE, 4 samples", "score(samples = 4)", 4),
             ("RLOO, 4 samples", "score(samples = 4, baseline = loo)", 4),
             ("optimal baseline, 4 samples", "score(samples = 4, baseline = optimal)", 4),
             ("cv g = b, 4 samples", cv.format(""), 4),
             ("cv g = b + RLOO, 4 samples", cv.format(", baseline = loo"), 4),
             ("cv g = b, exact coef 0.1, + RLOO", "cv(b, mean = sigmoid(t), coef = 0.1, "
              "inner = score(samples = 4, baseline = loo))", 4),
             ("enum (exact)", "enum", 2),
             ("importance, proposal Bernoulli(0.7)", "importance(proposal = Bernoulli(probs = 0.7), samples = 1)", 1),
             ("importance, proposal Bernoulli(0.7), 4 samples",
              "importance(proposal = Bernoulli(probs = 0.7), samples = 4)", 4)]
    g = measure(path, "b", [s for _, s, _ in specs], {"t": t}, draws)
    print(f"\nBernoulli toy at t = {t}: exact gradient {exact[0]:.6f}, {draws} draws per estimator")
    rows, stats = [], []
    for label, spec, cost in specs:
        s = summarise(g[spec], exact)
        if s["var"] < 1e-24:  # enum (and cv with the exact coefficient): exact up to rounding
            s["var"], s["se"] = 0.0, 0 * s["se"]
        stats.append(s)
        rows.append([label, str(cost), f"{s['mean'][0]:.6f} ± {s['se'][0]:.1e}", f"{s['var']:.3e}",
                     f"{s['var'] * cost:.3e}", f"{abs(exact[0]) / np.sqrt(s['var']):.3g}" if s["var"] > 0 else "inf"])
    _table(rows, ["estimator", "body evals", "mean ± SE", "variance", "variance × evals", "|g| / sd"])

    # training curves: p(b = 1) under adam for three of them
    curves = {}
    for label, spec in [("REINFORCE", "score(samples = 1)"), ("RLOO, 4 samples", "score(samples = 4, baseline = loo)"),
                        ("cv g = b + RLOO, 4 samples", cv.format(", baseline = loo")), ("enum (exact)", "enum")]:
        res = vrlang.compile(path, estimators={"b": spec}).solve(key=1)
        curves[label] = res.history["p_one"]
        print(f"adam, 300 steps, {label:<16}: p(b = 1) = {res.history['p_one'][-1]:.4f}")

    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [r[0] for r in rows]
    v = [s["var"] if s["var"] > 0 else np.nan for s in stats]
    ax[0].barh(labels, v, color=["C0", "C0", "C2", "C4", "C5", "C5", "C5", "C3", "C1", "C1"])
    ax[0].set_xscale("log")
    lo = np.nanmin(v) / 10
    ax[0].set_xlim(left=lo)
    ax[0].set_xlabel("variance of the gradient estimate")
    ax[0].invert_yaxis()
    for i, s in enumerate(stats):
        if s["var"] == 0:
            ax[0].text(lo * 1.2, i, "0 (exact)", va="center")
    ax[0].set_title(f"Bernoulli toy, t = {t:g}: gradient {exact[0]:.4f}")
    for label, c in curves.items():
        ax[1].plot(c, label=label)
    ax[1].set_xlabel("adam step (lr = 0.1)")
    ax[1].set_ylabel("p(b = 1)")
    ax[1].set_yscale("log")
    ax[1].set_title("minimising: p(b = 1) should go to 0")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(PLOTS / "bernoulli_toy.png", dpi=110)
    plt.close(fig)


# --------------------------------------------------------- 2. the policy (RLOO/GRPO/ReMax)

TARGET = np.array([2, 0, 1, 2])


def reward(a):
    """A tiny 'reward model': one point per token matching a target, a penalty for a repeated opening."""
    return jnp.sum(a == jnp.asarray(TARGET)).astype(float) - 0.5 * (a[0] == a[1])


def policy(draws):
    path = HERE / "policy.vr"
    theta = np.random.default_rng(0).normal(size=(4, 3)) * 0.7
    # exact gradient: enumerate all 3^4 sequences
    with jax.enable_x64(True):
        seqs = jnp.asarray(list(itertools.product(range(3), repeat=4)))
        r = jax.vmap(reward)(seqs)

        def value(th):
            logp = jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(th, -1)[None], seqs[..., None], -1)[..., 0], -1)
            return jnp.sum(jnp.exp(logp) * r)

        exact = np.asarray(jax.grad(value)(jnp.asarray(theta))).ravel()
        v0 = float(value(jnp.asarray(theta)))
    k = 4
    specs = [("none (plain REINFORCE)", f"score(samples = {k})", k),
             ("loo (RLOO)", f"score(samples = {k}, baseline = loo)", k),
             ("mean (group mean, Dr. GRPO)", f"score(samples = {k}, baseline = mean)", k),
             ("group_norm (GRPO)", f"score(samples = {k}, baseline = group_norm)", k),
             ("greedy (ReMax)", f"score(samples = {k}, baseline = greedy)", k + 1),
             ("optimal (per-coordinate, leave-one-out)", f"score(samples = {k}, baseline = optimal)", k)]
    g = measure(path, "a", [s for _, s, _ in specs], {"theta": theta}, draws, externs={"reward": reward})
    print(f"\npolicy over 3^4 sequences: expected reward {v0:.4f}, |exact gradient| = {np.linalg.norm(exact):.4f}, "
          f"{k} samples, {draws} draws per estimator")
    print("bias ratio = <mean, g>/|g|^2 (1 if unbiased); |bias| = |mean - g| (with SE of the mean ~ sqrt(var/draws))")
    rows, stats = [], []
    for label, spec, cost in specs:
        s = summarise(g[spec], exact)
        stats.append(s)
        flag = "yes" if vrlang.compile(path, estimators={"a": spec}, externs={"reward": reward}).choices["a"].unbiased \
            else "NO (flagged)"
        rows.append([label, str(cost), flag, f"{s['ratio']:.4f} ± {s['ratio_se']:.4f}",
                     f"{s['bias']:.2e}", f"{s['max_z']:.1f}", f"{s['var']:.4f}"])
    _table(rows, ["baseline", "reward evals", "unbiased", "bias ratio ± SE", "|bias|", "max |z|", "variance"])

    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    labels = [r[0] for r in rows]
    colors = ["C7", "C2", "C3", "C1", "C0", "C4"]
    ax[0].barh(labels, [s["var"] for s in stats], color=colors)
    ax[0].set_xlabel("total variance of the gradient estimate (trace)")
    ax[0].invert_yaxis()
    ax[1].errorbar([s["ratio"] for s in stats], range(len(stats)), xerr=[5 * s["ratio_se"] for s in stats],
                   fmt="o", color="k")
    ax[1].axvline(1.0, color="C2", ls="--", label="unbiased")
    ax[1].axvline((k - 1) / k, color="C3", ls=":", label=f"(k-1)/k = {(k - 1) / k:g}")
    ax[1].set_yticks(range(len(stats)), labels)
    ax[1].invert_yaxis()
    ax[1].set_xlabel("<E[estimate], g> / |g|^2  (± 5 SE)")
    ax[1].legend(loc="center")
    fig.suptitle(f"categorical policy over sequences, k = {k} samples per step")
    fig.tight_layout()
    fig.savefig(PLOTS / "policy_baselines.png", dpi=110)
    plt.close(fig)


# ------------------------------------------------------------- 3. the Gaussian


def gaussian(draws):
    path = HERE / "gaussian.vr"
    m, s = 1.0, 1.0
    exact = np.array([2 * m + 1, 2 * s])  # params in sorted order: m, s
    ks = [1, 2, 4, 8, 16]
    fams = {"reparam": "reparam(samples = {k})", "score, no baseline": "score(samples = {k})",
            "score, loo": "score(samples = {k}, baseline = loo)", "score, greedy": "score(samples = {k}, baseline = greedy)",
            "score, optimal": "score(samples = {k}, baseline = optimal)",
            "cv g = z, score, loo": "cv(z, mean = m, coef = optimal, inner = score(samples = {k}, baseline = loo))"}
    # loo and optimal need 2 samples, the leave-one-out cv coefficient 3
    specs = [f.format(k=k) for f in fams.values() for k in ks
             if not (k == 1 and ("loo" in f or "optimal" in f)) and not (k < 4 and f.startswith("cv"))]
    g = measure(path, "z", specs, {"m": m, "s": s}, draws)
    print(f"\nGaussian E(z ~ Normal({m:g}, {s:g}): z^2 + z): exact gradient (m, s) = ({exact[0]:g}, {exact[1]:g}), {draws} draws")
    rows = []
    curves = {name: [] for name in fams}
    for name, f in fams.items():
        for k in ks:
            spec = f.format(k=k)
            if spec not in g:
                continue
            st = summarise(g[spec], exact)
            curves[name].append((k, st["var"]))
            rows.append([spec, f"{st['mean'][0]:.3f} ± {st['se'][0]:.3f}", f"{st['mean'][1]:.3f} ± {st['se'][1]:.3f}",
                         f"{st['var']:.3f}", f"{st['var'] * k:.3f}"])
    _table(rows, ["estimator", "grad m ± SE", "grad s ± SE", "variance", "variance × samples"])

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, c in curves.items():
        k, v = zip(*c)
        ax.loglog(k, v, "o-", label=name)
    ax.set_xlabel("samples per estimate (k)")
    ax.set_ylabel("total variance of the gradient estimate")
    ax.set_title("E(z ~ Normal(m, s): z^2 + z) at m = s = 1")
    ax.legend()
    fig.tight_layout()
    fig.savefig(PLOTS / "gaussian_variance.png", dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", nargs="*", help="toy, policy, gaussian (default: all three)")
    ap.add_argument("--draws", type=int, default=20000, help="independent draws per estimator")
    args = ap.parse_args(argv)
    for name in args.which or ["toy", "policy", "gaussian"]:
        if name not in ("toy", "policy", "gaussian"):
            ap.error(f"unknown example {name!r}: choose from toy, policy, gaussian")
        t0 = time.perf_counter()
        {"toy": toy, "policy": policy, "gaussian": gaussian}[name](args.draws)
        print(f"[{name}: {time.perf_counter() - t0:.1f} s]")
    print(f"plots in {PLOTS}")


if __name__ == "__main__":
    main()
