"""The bilevel examples, measured: hyper-cleaning, per-feature penalties, a multi-block problem.

Run (from the repository root; each writes a plot to examples/plots/ and prints a table):

    .venv/bin/python examples/bilevel_demo.py hyperclean   # examples/hyperclean.vr
    .venv/bin/python examples/bilevel_demo.py features     # examples/logreg_feature_penalty.vr
    .venv/bin/python examples/bilevel_demo.py multitask    # examples/multitask_prior.vr
    .venv/bin/python examples/bilevel_demo.py              # all three

Everything runs in the default precision (float32), as ``vrlang run`` does.  Test-split
numbers come from the programs themselves: the ``report`` of a program, or its validation
objective evaluated on the test split passed in place of the validation data.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import vrlang  # noqa: E402

HERE = Path(__file__).resolve().parent
PLOTS = HERE / "plots"


def _load(name: str) -> dict:
    with np.load(HERE / "data" / name) as z:
        return {k: z[k] for k in z.files}


def _save(fig, name: str) -> None:
    PLOTS.mkdir(exist_ok=True)
    fig.tight_layout()
    fig.savefig(PLOTS / name, dpi=110)
    plt.close(fig)
    print(f"wrote {PLOTS / name}")


def _report_at(prog, params: dict, name: str) -> float:
    """A `report` of ``prog`` evaluated at ``params`` (the history's epoch-0 row of a one-step solve)."""
    return float(prog.solve(params=params, solver="adam(lr = 0.1, steps = 1)").history[name][0])


# ------------------------------------------------------------------------------------------ hyper-cleaning


def hyperclean() -> dict:
    t0 = time.perf_counter()
    z = _load("digits_hyperclean.npz")
    bad = z["corrupted"].astype(bool)
    n = len(bad)
    prog = vrlang.compile(HERE / "hyperclean.vr")
    res = prog.solve()
    h = res.history
    w = np.asarray(res.params["p"]) * n  # weights relative to uniform (1 = plain training)
    below = w < np.median(w)
    oracle = np.where(bad, 1e-9, 1.0)
    oracle_acc = _report_at(prog, {"p": oracle / oracle.sum()}, "test_accuracy")
    out = {"plain_acc": float(h["test_accuracy"][0]), "reweighted_acc": float(h["test_accuracy"][-1]),
           "clean_only_acc": oracle_acc, "val_loss": (float(h["objective"][0]), float(h["objective"][-1])),
           "corrupted_below_median": float(below[bad].mean()), "clean_below_median": float(below[~bad].mean()),
           "steps": res.steps, "solve_s": float(h["time"][-1]), "wall_s": time.perf_counter() - t0}
    print(f"hyper-cleaning, digits: {n} training labels ({bad.sum()} corrupted), {res.steps} outer steps (adam)")
    print(f"  test accuracy, plain training on the corrupted labels  {out['plain_acc']:.4f}")
    print(f"  test accuracy, reweighted training                     {out['reweighted_acc']:.4f}")
    print(f"  test accuracy, training on the clean half only         {out['clean_only_acc']:.4f}  (reference)")
    print(f"  validation cross-entropy {out['val_loss'][0]:.4f} -> {out['val_loss'][1]:.4f}")
    print(f"  corrupted examples with weight below the median: {out['corrupted_below_median']:.3f} "
          f"(clean: {out['clean_below_median']:.3f})")
    print(f"  solve {out['solve_s']:.1f} s, whole run (compile, solve, reference) {out['wall_s']:.1f} s")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.plot(h["epoch"], h["objective"], color="C0", label="validation cross-entropy")
    a1.set_xlabel("outer step (adam)")
    a1.set_ylabel("validation cross-entropy", color="C0")
    b1 = a1.twinx()
    b1.plot(h["epoch"], h["test_accuracy"], color="C1", label="test accuracy")
    b1.axhline(oracle_acc, color="C1", ls=":", label="clean half only")
    b1.set_ylabel("test accuracy", color="C1")
    b1.legend(loc="center right")
    a1.set_title("hyperclean.vr: implicit hypergradient")
    bins = np.logspace(np.log10(max(w.min(), 1e-4)), np.log10(w.max()), 40)
    a2.hist(w[~bad], bins=bins, alpha=0.6, label="clean labels")
    a2.hist(w[bad], bins=bins, alpha=0.6, label="corrupted labels")
    a2.axvline(np.median(w), color="k", ls="--", lw=1, label="median")
    a2.set_xscale("log")
    a2.set_xlabel("learned weight x n (1 = uniform)")
    a2.set_ylabel("training examples")
    a2.legend()
    _save(fig, "hyperclean.png")
    return out


# ------------------------------------------------------------------------------------------ shared-penalty grids


def _grid(prog, d: int, data: dict, test: dict, values) -> list[tuple[float, float, float]]:
    return [(c, prog.objective({"lam": np.full(d, c)}, data), prog.objective({"lam": np.full(d, c)}, test))
            for c in values]


def _penalty_plot(name, title, grid, best, hist_val, hist_test, lam, lam_ax_fn):
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = np.arange(len(hist_val))
    a1.plot(steps, hist_val, color="C0", label="per-feature: validation")
    a1.plot(steps, hist_test, color="C1", label="per-feature: test")
    a1.axhline(best[1], color="C0", ls=":", label=f"best shared ({best[0]:.3g}): validation")
    a1.axhline(best[2], color="C1", ls=":", label="best shared: test")
    a1.set_xlabel("outer step (adam), from the best shared penalty")
    a1.set_ylabel("logistic loss")
    a1.set_title(title)
    a1.legend(fontsize=8)
    lam_ax_fn(a2, lam)
    _save(fig, name)


def _penalty_table(grid, best, rows):
    print(f"  {'penalty':<42} {'validation loss':>16} {'test loss':>10}")
    print(f"  {f'best shared (grid of {len(grid)}): {best[0]:.3g}':<42} {best[1]:>16.4f} {best[2]:>10.4f}")
    for label, v, t in rows:
        print(f"  {label:<42} {v:>16.4f} {t:>10.4f}")


def features() -> dict:
    t0 = time.perf_counter()
    z = _load("breast_cancer_split.npz")
    data = {k: z[k] for k in ("Xtr", "ytr", "Xva", "yva", "Xte", "yte")}
    test = {**data, "Xva": z["Xte"], "yva": z["yte"]}
    d = z["Xtr"].shape[1]
    prog = vrlang.compile(HERE / "logreg_feature_penalty.vr")
    grid = _grid(prog, d, data, test, np.logspace(-4, 1, 26))
    best = min(grid, key=lambda r: r[1])
    res = prog.solve(data, params={"lam": np.full(d, best[0])})
    res0 = prog.solve(data)  # from the file's lam = 0.1
    rows = [(f"per-feature, {res.steps} steps from the best shared", res.objective, prog.objective(res.params, test)),
            (f"per-feature, {res0.steps} steps from lam = 0.1 (the file)", res0.objective,
             prog.objective(res0.params, test))]
    print(f"per-feature L2 penalties, breast cancer: n = {len(z['ytr'])} train, {len(z['yva'])} validation, "
          f"{len(z['yte'])} test, {d} features")
    _penalty_table(grid, best, rows)
    h = res.history
    k = int(np.argmin(h["test_loss"]))
    print(f"  test loss along the run from the best shared: min {h['test_loss'][k]:.4f} at step {k}, "
          f"final {h['test_loss'][-1]:.4f}")
    lam = np.asarray(res.params["lam"])
    print(f"  learned penalties: {np.sum(lam < best[0] / 10)} of {d} below best/10, "
          f"{np.sum(lam > best[0] * 10)} above best*10")
    wall = time.perf_counter() - t0
    print(f"  solves {h['time'][-1]:.1f} s + {res0.history['time'][-1]:.1f} s, whole run {wall:.1f} s")

    def bars(ax, lam):
        ax.bar(np.arange(d), lam, color="C2")
        ax.axhline(best[0], color="k", ls=":", label="best shared")
        ax.set_yscale("log")
        ax.set_xlabel("feature")
        ax.set_ylabel("learned penalty lam_j")
        ax.legend()

    _penalty_plot("feature_penalty.png", "logreg_feature_penalty.vr", grid, best, h["objective"], h["test_loss"],
                  lam, bars)
    return {"best_shared": best, "rows": rows, "wall_s": wall, "min_test_step": k}


def multitask() -> dict:
    t0 = time.perf_counter()
    z = _load("breast_cancer_shards.npz")
    data = {k: z[k] for k in ("Xtr", "ytr", "Xva", "yva")}
    test = {**data, "Xva": z["Xte"], "yva": z["yte"]}
    T, n, d = z["Xtr"].shape
    prog = vrlang.compile(HERE / "multitask_prior.vr")
    zero = np.zeros(d)
    grid = [(c, prog.objective({"w0": zero, "lam": c}, data), prog.objective({"w0": zero, "lam": c}, test))
            for c in np.logspace(-4, 1, 26)]
    best = min(grid, key=lambda r: r[1])
    res = prog.solve(data, params={"w0": zero, "lam": best[0]})
    res0 = prog.solve(data)  # from the file's w0 = 0, lam = 1
    h = res.history
    rows = [(f"learned w0, lam: {res.steps} steps from the best w0 = 0", res.objective,
             prog.objective(res.params, test)),
            (f"learned w0, lam: {res0.steps} steps from the file", res0.objective, prog.objective(res0.params, test))]
    print(f"multi-block: {T} shards of breast cancer, {n} train / {z['Xva'].shape[1]} validation / "
          f"{z['Xte'].shape[1]} test patients each; shared prior mean w0 ({d}) and strength lam")
    print(f"  {'inner regularisation lam/2 |v - w0|^2':<42} {'validation loss':>16} {'test loss':>10}")
    print(f"  {f'w0 = 0, best lam (grid of {len(grid)}): {best[0]:.3g}':<42} {best[1]:>16.4f} {best[2]:>10.4f}")
    for label, v, t in rows:
        print(f"  {label:<42} {v:>16.4f} {t:>10.4f}")
    print(f"  learned lam = {float(res.params['lam']):.4g} (from the best w0 = 0), "
          f"{float(res0.params['lam']):.4g} (from the file)")
    wall = time.perf_counter() - t0
    print(f"  solves {h['time'][-1]:.1f} s + {res0.history['time'][-1]:.1f} s, whole run {wall:.1f} s")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.plot(h["epoch"], h["objective"], color="C0", label="learned (w0, lam): validation")
    a1.axhline(best[1], color="C0", ls=":", label=f"w0 = 0, best lam ({best[0]:.3g}): validation")
    a1.axhline(best[2], color="C1", ls=":", label="w0 = 0, best lam: test")
    a1.scatter([h["epoch"][-1]], [rows[0][2]], color="C1", zorder=3, label="learned (w0, lam): test (end)")
    a1.set_yscale("log")
    a1.set_xlabel("outer step (adam)")
    a1.set_ylabel("mean logistic loss over the 10 blocks")
    a1.set_title("multitask_prior.vr")
    a1.legend(fontsize=8)
    a2.bar(np.arange(d), np.asarray(res.params["w0"]), color="C2")
    a2.set_xlabel("feature")
    a2.set_ylabel("learned prior mean w0")
    _save(fig, "multitask_prior.png")
    return {"best_shared": best, "rows": rows, "wall_s": wall}


DEMOS = {"hyperclean": hyperclean, "features": features, "multitask": multitask}


def main(argv):
    for name in argv or list(DEMOS):
        if name not in DEMOS:
            raise SystemExit(f"unknown demo {name!r}; choose from {', '.join(DEMOS)}")
        DEMOS[name]()
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
