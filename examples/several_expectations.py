"""Several expectations from one set of samples: importance sampling + a control variate.

    python examples/several_expectations.py                 # 4000 replications of each estimator
    python examples/several_expectations.py --reps 20000

``examples/several_expectations.vr`` estimates four expectations under the target
p = Normal(1, 1) from 64 samples of the proposal Normal(0, 2), all from the same samples
(a vector body), with the control variate g = z (known mean 1).  This script compiles it
once per estimator (``estimators={"z": ...}``), draws each estimate many times with
independent keys (vmapped, float64), and compares the four quantities with their exact
values: the mean (bias, in standard errors) and the variance of one estimate.  The
quantity is chosen by the const ``sel``; the four values of one replication are
evaluated with the same key, hence on the same 64 proposal samples (consts are traced:
no recompilation).  Writes ``examples/plots/several_expectations.png``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import vrlang

HERE = Path(__file__).resolve().parent
VR = HERE / "several_expectations.vr"
PLOTS = HERE / "plots"
NAMES = ["E[z^2]", "E[exp(z/2)]", "P(z > 2)", "E[softplus(z)]"]
K = 64
PROPOSAL = f"importance(proposal = Normal(0, 2), samples = {K})"
ESTIMATORS = [
    ("importance sampling (IS)", PROPOSAL),
    ("IS + cv g = z (coef optimal)", f"cv(z, mean = mu, coef = optimal, inner = {PROPOSAL})"),
    ("IS + cv g = 1 - r(z)/p(z) (coef optimal)",
     f"cv(1 - sigma / 2 * exp((z - mu)^2 / (2 * sigma^2) - z^2 / 8), mean = 0, coef = optimal, inner = {PROPOSAL})"),
    ("self-normalised IS",
     f"importance(proposal = Normal(0, 2), samples = {K}, self_normalized = true)"),
]


def exact_values(mu=1.0, sigma=1.0):
    """Closed forms, and softplus by Gauss-Hermite quadrature (200 nodes)."""
    x, w = np.polynomial.hermite_e.hermegauss(200)
    z = mu + sigma * x
    softplus = np.sum(w * np.logaddexp(0.0, z)) / np.sqrt(2 * np.pi)
    return np.array([mu ** 2 + sigma ** 2, math.exp(mu / 2 + sigma ** 2 / 8),
                     0.5 * math.erfc((2 - mu) / sigma / math.sqrt(2)), softplus])


def draws(spec: str, reps: int, seed: int = 0) -> np.ndarray:
    """``(reps, 4)``: the four estimates of each replication (same key, hence same samples)."""
    with jax.enable_x64(True):
        prog = vrlang.compile(VR, x64=True, estimators={"z": spec})
        # the runtime objective (vrlang.estimators.base.CompiledObjective): fn(params, data, consts, key)
        obj = prog.gradient_estimator().module.objective
        sels = jnp.eye(4)

        @jax.jit
        def run(key):
            def one(k):
                return jax.vmap(lambda s: obj.fn({}, obj.data, {**obj.consts, "sel": s}, k))(sels)
            return jax.vmap(one)(jax.random.split(key, reps))

        return np.asarray(run(jax.random.PRNGKey(seed))), prog.choices["z"].unbiased


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=4000, help="independent estimates per estimator")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    exact = exact_values()
    results = {}
    for label, spec in ESTIMATORS:
        results[label] = draws(spec, args.reps)
    print(f"target Normal(1, 1), proposal Normal(0, 2), {K} samples per estimate, {args.reps} replications; "
          "exact values: " + ", ".join(f"{n} = {v:.4f}" for n, v in zip(NAMES, exact)))
    plain = results[ESTIMATORS[0][0]][0]
    print(f"\n{'estimator':<42}{'unbiased':>9}  " + "".join(f"{n:>24}" for n in NAMES))
    print(" " * 53 + "".join(f"{'variance (reduction)':>24}" for _ in NAMES))
    for label, _ in ESTIMATORS:
        d, unbiased = results[label]
        cells = [f"{d[:, i].var(ddof=1):.2e} ({plain[:, i].var(ddof=1) / d[:, i].var(ddof=1):4.1f}x)" for i in range(4)]
        print(f"{label:<42}{'yes' if unbiased else 'NO':>9}  " + "".join(f"{c:>24}" for c in cells))
    print(f"\n{'estimator':<42}{'':>9}  " + "".join(f"{n:>24}" for n in NAMES))
    print(" " * 53 + "".join(f"{'mean - exact (|z|)':>24}" for _ in NAMES))
    for label, _ in ESTIMATORS:
        d = results[label][0]
        se = d.std(0, ddof=1) / np.sqrt(len(d))
        cells = [f"{d[:, i].mean() - exact[i]:+.1e} ({abs(d[:, i].mean() - exact[i]) / se[i]:.1f})" for i in range(4)]
        print(f"{label:<42}{'':>9}  " + "".join(f"{c:>24}" for c in cells))
    ratios = {label: plain.var(0, ddof=1) / results[label][0].var(0, ddof=1) for label, _ in ESTIMATORS}
    print(f"[{time.perf_counter() - t0:.1f} s]")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    PLOTS.mkdir(exist_ok=True)
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
    for i, ax in enumerate(axes):
        for (label, _), color in zip(ESTIMATORS, ["C7", "C2", "C0", "C3"]):
            d = results[label][0][:, i]
            ax.hist(d, bins=60, histtype="step", color=color, density=True,
                    label=label.split(" (")[0] if i == 0 else None)
        ax.axvline(exact[i], color="k", ls="--", lw=1)
        short = ["cv z", "cv w", "SNIS"]
        ax.set_title(NAMES[i] + ": variance / " + ", ".join(
            f"{n} {r[i]:.1f}x" for n, r in zip(short, list(ratios.values())[1:])), fontsize=8)
        ax.set_yticks([])
    axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"four expectations under Normal(1, 1) from the same {K} samples of Normal(0, 2) "
                 f"({args.reps} replications; dashed: exact)", fontsize=10)
    fig.tight_layout()
    fig.savefig(PLOTS / "several_expectations.png", dpi=110)
    plt.close(fig)
    print(f"plot: {PLOTS / 'several_expectations.png'}")


if __name__ == "__main__":
    main()
