"""Uniform vs importance sampling on examples/importance.vr: gradient variance and convergence.

Run: .venv/bin/python examples/importance_demo.py   (writes examples/plots/importance.png)
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import vrlang  # noqa: E402

HERE = Path(__file__).resolve().parent
SAMPLINGS = {"uniform": "uniform", "weights(norm(X[i]))": "weights(norm(X[i]))", "lipschitz": "lipschitz"}


def variance(sampling: str, draws: int = 4000) -> float:
    prog = vrlang.compile(HERE / "importance.vr", estimators={"i": f"sgd(batch = 8, sampling = {sampling})"},
                          x64=True)
    params = {"w": np.full(30, 0.05)}
    est = prog.gradient_estimator()
    state = est.init(params, 0)
    with jax.enable_x64(True):  # the program was compiled with x64=True
        p = {"w": jnp.asarray(params["w"])}
        keys = jax.random.split(jax.random.PRNGKey(1), draws)
        g = jax.vmap(lambda k: est.module.estimate(p, state, k)[0]["w"])(keys)
        return float(jnp.sum(jnp.var(g, axis=0)))


def main():
    f_star = vrlang.compile(HERE / "importance.vr", estimators={"i": "full"}, x64=True,
                            solver="lbfgs(steps = 500, tol = 1e-10)").solve().objective
    fig, ax = plt.subplots(figsize=(6, 4))
    print(f"{'sampling':<22} {'grad variance':>14} {'subopt after 30 epochs':>24}")
    for label, s in SAMPLINGS.items():
        var = variance(s)
        prog = vrlang.compile(HERE / "importance.vr", estimators={"i": f"saga(batch = 8, sampling = {s})"}, x64=True)
        res = prog.solve(key=0)
        sub = np.maximum(res.history["objective"] - f_star, 1e-16) / abs(f_star)
        print(f"{label:<22} {var:>14.4g} {sub[-1]:>24.3e}   (lr {res.info['lr']:.3g})")
        ax.semilogy(res.history["epoch"], sub, label=f"saga, {label}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("relative suboptimality")
    ax.set_title("importance.vr: uniform vs importance sampling (lr = auto)")
    ax.legend()
    out = HERE / "plots" / "importance.png"
    out.parent.mkdir(exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
