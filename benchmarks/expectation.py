#!/usr/bin/env python
"""Expectation benchmark for vrlang (issue 4, item 7).

One command (from the repository root)::

    .venv/bin/python benchmarks/expectation.py            # full sizes, a few minutes on 2 CPU cores
    .venv/bin/python benchmarks/expectation.py --quick    # smaller problems and fewer draws

writes its section of ``benchmarks/RESULTS.md`` (between the ``expectation`` markers; a
run on another JAX backend, e.g. a GPU, writes the section ``expectation-<backend>``) and
the raw numbers to ``benchmarks/expectation_results[-<backend>].json``.  What it measures:

1. **Compiled vs hand-written** (per-estimate time).  Two problems with K samples x a
   batch of n data:

   * ``gauss``: ``E(w ~ Normal(m, s): mean(i in 0..n: (dot(X[i], w) - y[i])^2))``,
     ``w: real[d]`` -- estimators ``reparam``, ``score`` + ``loo``, ``score`` + ``greedy``
     and ``importance(proposal = Normal(0, 1))``;
   * ``cat``: ``E(c ~ Categorical(logits = theta): mean(i in 0..n: (dot(X[i], W[c]) - y[i])^2))``
     with ``C`` categories -- ``enum``, ``score`` + ``loo``, ``score`` + ``greedy``.

   vrlang's compiled estimator (``prog.gradient_estimator(data).module.estimate``) and the
   same estimator written by hand in plain JAX (a surrogate whose ``jax.grad`` is the
   estimator, matrix products over the batch), both jitted with the data, params and key
   as arguments.  The hand-written version draws the same samples from the same keys
   (vrlang's key scheme: ``fold_in(key, binder_salt(binder))``), so the two gradients are
   compared for equality first.  Time per call: many calls, each ``block_until_ready``,
   median over interleaved repeats; wall and process CPU time.  Target ratio <= 1.05.
   Diagnostics: the number of jaxpr equations and of optimised-HLO instructions (and
   dots, gathers, reduce-windows) of each compiled function; and vrlang's estimator jitted as a
   function of its module's arrays (flattened once), to separate the per-call flattening of the module.
2. **Gradient variance vs numpyro's ``TraceGraph_ELBO``** on one ELBO: a mixture model
   with a per-datum discrete latent ``z_i ~ Bernoulli(prior)``, ``x_i ~ Normal(mu[z_i], 1)``,
   guide ``q(z_i) = Bernoulli(logits = phi_i)``; params ``phi`` (guide) and ``mu`` (model).
   numpyro's estimates (``jax.grad`` of ``TraceGraph_ELBO(num_particles).loss`` over many
   keys) and vrlang's (``Program.estimator_variance`` on the same ELBO written as a .vr
   program: ``score`` with 1 and 4 samples, ``loo``, ``enum``); both means are checked
   against the exact gradient (enumeration, cross-checked with ``jax.grad`` of the ELBO
   written out by hand in float64).

This file is not part of the test suite (``pytest`` collects ``tests/`` only).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import vrlang  # noqa: E402

import _common  # noqa: E402  (benchmarks/_common.py)

BENCH = ROOT / "benchmarks"
SEED = 0
T_START = time.perf_counter()


def salt(name: str) -> int:
    """vrlang.backend.lower.binder_salt, restated: the hand-written estimators draw with vrlang's keys."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T_START:7.1f}s] {msg}", flush=True)


# ============================================================================ problems

GAUSS = """\
data X: real[n, d]
data y: real[n]
param m: real[d] = 0
param s: real[d] in positive = 1
minimize E(w ~ Normal(m, s): mean(i in 0..n: (dot(X[i], w) - y[i])^2))
"""

CAT = """\
data X: real[n, d]
data y: real[n]
param theta: real[{C}] = 0
param W: real[{C}, d] = 0
minimize E(c ~ Categorical(logits = theta): mean(i in 0..n: (dot(X[i], W[c]) - y[i])^2))
"""


def make_data(n, d, seed=SEED):
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, d)) / math.sqrt(d)).astype(np.float32)
    w = rng.normal(size=d)
    y = (X @ w + 0.5 * rng.normal(size=n)).astype(np.float32)
    return {"X": X, "y": y}


def gauss_params(d, seed=1):
    rng = np.random.default_rng(seed)
    return {"m": (0.3 * rng.normal(size=d)).astype(np.float32),
            "s": rng.uniform(0.5, 1.0, size=d).astype(np.float32)}


def cat_params(C, d, seed=2):
    rng = np.random.default_rng(seed)
    return {"theta": rng.normal(size=C).astype(np.float32), "W": (0.5 * rng.normal(size=(C, d))).astype(np.float32)}


def _normal_logpdf(z, m, s):
    return -0.5 * jnp.square((z - m) / s) - jnp.log(s) - 0.5 * math.log(2 * math.pi)


def _batch_loss(w, X, y):
    """mean_i (X_i . w_k - y_i)^2 for each row w_k of w: (K, d) -> (K,)."""
    return jnp.mean(jnp.square(w @ X.T - y), axis=1)


def hand_gauss(kind: str, K: int):
    """The gauss problem's estimators, by hand: ``(data, params, key) -> grads``."""
    sw = salt("w")

    def surrogate(p, data, key):
        X, y = data["X"], data["y"]
        k = jax.random.fold_in(key, sw)
        d = p["m"].shape[0]
        if kind == "reparam":
            w = p["m"] + jax.random.normal(k, (K, d)) * p["s"]
            return jnp.mean(_batch_loss(w, X, y))
        if kind == "importance":  # proposal Normal(0, 1), weights q/p
            z = jax.random.normal(k, (K, d))
            logw = jnp.sum(_normal_logpdf(z, p["m"], p["s"]) - _normal_logpdf(z, 0.0, 1.0), axis=1)
            return jnp.mean(jnp.exp(logw) * _batch_loss(z, X, y))
        # score: z stop-gradient'ed, f does not depend on the params, gradient (f - b) grad log q
        z = jax.lax.stop_gradient(p["m"] + jax.random.normal(k, (K, d)) * p["s"])
        f = _batch_loss(z, X, y)
        logq = jnp.sum(_normal_logpdf(z, p["m"], p["s"]), axis=1)
        if kind == "loo":
            b = (jnp.sum(f) - f) / (K - 1)
        else:  # greedy: the loss at the mode
            b = _batch_loss(p["m"][None, :], X, y)[0]
        return jnp.mean(f) + jnp.mean(jax.lax.stop_gradient(f - b) * (logq - jax.lax.stop_gradient(logq)))

    def grads(data, p, key):
        return jax.grad(surrogate)(p, data, key)

    return grads


def hand_cat(kind: str, K: int):
    sc = salt("c")

    def surrogate(p, data, key):
        X, y = data["X"], data["y"]
        logp = jax.nn.log_softmax(p["theta"])
        if kind == "enum":
            return jnp.dot(jnp.exp(logp), _batch_loss(p["W"], X, y))
        c = jax.random.categorical(jax.random.fold_in(key, sc), p["theta"], shape=(K,))
        f = _batch_loss(p["W"][c], X, y)  # depends on W: its pathwise gradient
        fs = jax.lax.stop_gradient(f)
        if kind == "loo":
            b = (jnp.sum(fs) - fs) / (K - 1)
        else:
            b = jax.lax.stop_gradient(_batch_loss(p["W"][jnp.argmax(p["theta"])][None, :], X, y)[0])
        logq = logp[c]
        return jnp.mean(f) + jnp.mean((fs - b) * (logq - jax.lax.stop_gradient(logq)))

    def grads(data, p, key):
        return jax.grad(surrogate)(p, data, key)

    return grads


def cases(K, C):
    g = [("gauss", "reparam", f"reparam(samples = {K})"),
         ("gauss", "loo", f"score(samples = {K}, baseline = loo)"),
         ("gauss", "greedy", f"score(samples = {K}, baseline = greedy)"),
         ("gauss", "importance", f"importance(proposal = Normal(0, 1), samples = {K})")]
    c = [("cat", "enum", "enum"),
         ("cat", "loo", f"score(samples = {K}, baseline = loo)"),
         ("cat", "greedy", f"score(samples = {K}, baseline = greedy)")]
    return g + c


# ============================================================================ timing


def _jaxpr_eqns(jaxpr) -> int:
    n = 0
    for e in jaxpr.eqns:
        n += 1
        for v in e.params.values():
            for sub in (v if isinstance(v, (list, tuple)) else [v]):
                if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                    n += _jaxpr_eqns(sub.jaxpr)
                elif hasattr(sub, "eqns"):
                    n += _jaxpr_eqns(sub)
    return n


def _hlo_counts(text: str) -> dict:
    lines = [ln for ln in text.splitlines() if re.match(r"^\s+(ROOT\s+)?%?[\w.\-]+ = ", ln)]
    return {"instructions": len(lines),
            "fusions": sum(1 for ln in lines if " fusion(" in ln),
            "dots": sum(1 for ln in lines if re.search(r" (dot|convolution)\(", ln)),
            "gathers": sum(1 for ln in lines if " gather(" in ln),
            "reduce_windows": sum(1 for ln in lines if " reduce-window(" in ln)}


def diagnostics(fn, args) -> dict:
    jp = jax.make_jaxpr(fn)(*args)
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    return {"jaxpr_eqns": _jaxpr_eqns(jp.jaxpr), **_hlo_counts(hlo)}


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(tree[k], np.float64)) for k in sorted(tree)])


def time_pair(fns: dict, args: dict, calls: int, repeats: int) -> dict:
    """Median per-call wall and CPU time of each function; the implementations interleaved per repeat."""
    keys = [jax.random.PRNGKey(1000 + j) for j in range(calls)]
    for name, f in fns.items():  # warm-up (compiled already)
        for j in range(3):
            jax.block_until_ready(f(*args[name], keys[j]))
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    order = list(fns)
    for r in range(repeats):
        for name in (order if r % 2 == 0 else order[::-1]):
            f, a = fns[name], args[name]
            t0, c0 = time.perf_counter(), time.process_time()
            for j in range(calls):
                jax.block_until_ready(f(*a, keys[j]))
            wall[name].append((time.perf_counter() - t0) / calls)
            cpu[name].append((time.process_time() - c0) / calls)
    return {k: {"wall_median": float(np.median(wall[k])), "cpu_median": float(np.median(cpu[k])),
                "wall_min": float(np.min(wall[k])),
                "wall_all": wall[k], "cpu_all": cpu[k]} for k in fns}


def bench_compiled_vs_hand(n, d, K, C, repeats, target_batch_s):
    data = make_data(n, d)
    jdata = {k: jnp.asarray(v) for k, v in data.items()}
    out = []
    for prob, kind, spec in cases(K, C):
        src = GAUSS if prob == "gauss" else CAT.format(C=C)
        binder = "w" if prob == "gauss" else "c"
        prog = vrlang.compile(src, estimators={binder: spec})
        est = prog.gradient_estimator(data)
        module = est.module
        params = gauss_params(d) if prob == "gauss" else cat_params(C, d)
        p = {k: jnp.asarray(v) for k, v in params.items()}
        hand = hand_gauss(kind, K) if prob == "gauss" else hand_cat(kind, K)

        def vr(mod, q, key):
            return mod.estimate(q, None, key)[0]

        leaves, treedef = jax.tree_util.tree_flatten(module)

        def vr_leaves(leaves, q, key):  # diagnostic: the module's arrays passed flat (its pytree flattened once)
            return jax.tree_util.tree_unflatten(treedef, leaves).estimate(q, None, key)[0]

        def hand_gather(data, q, key):  # diagnostic: the rows read through an iota gather, as a vmapped X[i] does
            idx = jax.lax.iota(jnp.int32, data["X"].shape[0])
            return hand({"X": data["X"][idx], "y": data["y"][idx]}, q, key)

        f_vr, f_hand, f_gather, f_leaves = jax.jit(vr), jax.jit(hand), jax.jit(hand_gather), jax.jit(vr_leaves)
        t0 = time.perf_counter()
        jax.block_until_ready(f_vr(module, p, jax.random.PRNGKey(0)))
        c_vr = time.perf_counter() - t0
        t0 = time.perf_counter()
        jax.block_until_ready(f_hand(jdata, p, jax.random.PRNGKey(0)))
        c_hand = time.perf_counter() - t0
        # the same estimator: the same gradient from the same key
        rel = 0.0
        for s in range(3):
            a = _flat(f_vr(module, p, jax.random.PRNGKey(s)))
            b = _flat(f_hand(jdata, p, jax.random.PRNGKey(s)))
            rel = max(rel, float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)))
        t1 = time.perf_counter()
        jax.block_until_ready(f_hand(jdata, p, jax.random.PRNGKey(1)))
        single = time.perf_counter() - t1
        calls = int(min(2000, max(5, target_batch_s / max(single, 1e-6))))
        times = time_pair({"vrlang": f_vr, "hand": f_hand, "hand_gather": f_gather, "vrlang_leaves": f_leaves},
                          {"vrlang": (module, p), "hand": (jdata, p), "hand_gather": (jdata, p),
                           "vrlang_leaves": (leaves, p)}, calls, repeats)
        reps = 2000
        t0 = time.perf_counter()
        for _ in range(reps):
            jax.tree_util.tree_flatten(module)
        flatten_s = (time.perf_counter() - t0) / reps
        t0 = time.perf_counter()
        for _ in range(reps):
            jax.tree_util.tree_flatten(jdata)
        flatten_dict_s = (time.perf_counter() - t0) / reps
        diag = {"vrlang": diagnostics(vr, (module, p, jax.random.PRNGKey(0))),
                "hand": diagnostics(hand, (jdata, p, jax.random.PRNGKey(0)))}
        row = {"problem": prob, "estimator": spec, "kind": kind, "n": n, "d": d, "K": K, "C": C,
               "calls": calls, "repeats": repeats, "max_rel_diff": rel, "compile_s": {"vrlang": c_vr, "hand": c_hand},
               "times": times, "diag": diag,
               "ratio_wall": times["vrlang"]["wall_median"] / times["hand"]["wall_median"],
               "ratio_cpu": times["vrlang"]["cpu_median"] / times["hand"]["cpu_median"],
               "ratio_gather_wall": times["vrlang"]["wall_median"] / times["hand_gather"]["wall_median"],
               "ratio_leaves_wall": times["vrlang_leaves"]["wall_median"] / times["hand"]["wall_median"],
               "module_flatten_s": flatten_s, "dict_flatten_s": flatten_dict_s,
               "ratio_wall_min": times["vrlang"]["wall_min"] / times["hand"]["wall_min"]}
        log(f"  {prob:5s} {spec:45s} vrlang {1e3 * times['vrlang']['wall_median']:8.3f} ms  hand "
            f"{1e3 * times['hand']['wall_median']:8.3f} ms  ratio {row['ratio_wall']:.3f} (cpu {row['ratio_cpu']:.3f}; "
            f"vs hand+gather {row['ratio_gather_wall']:.3f}; leaves/hand {row['ratio_leaves_wall']:.3f})"
            f"  max rel diff {rel:.1e}")
        out.append(row)
    return out


# ============================================================================ ELBO vs numpyro

ELBO = """\
# -ELBO of a two-component mixture with a per-datum discrete latent (benchmarks/expectation.py)
data x: real[n]
const prior_logit: real = {prior_logit}
param phi: real[n] = 0
param mu: real[2] = 0
minimize -sum(i in 0..n: E(z ~ Bernoulli(logits = phi[i]):
    z * log_sigmoid(prior_logit) + (1 - z) * log_sigmoid(-prior_logit)
    - (x[i] - mu[z])^2 / 2 - 0.91893853320467274
    - (z * log_sigmoid(phi[i]) + (1 - z) * log_sigmoid(-phi[i]))))
"""
PRIOR = 0.4
MU_TRUE = (-1.0, 2.0)


def elbo_data(n, seed=SEED):
    rng = np.random.default_rng(seed + 7)
    z = rng.random(n) < PRIOR
    x = np.where(z, MU_TRUE[1], MU_TRUE[0]) + rng.normal(size=n)
    phi = rng.normal(size=n)  # evaluation point: phi != 0 (numpyro's Bernoulli-logits log_prob has a kink at 0)
    return {"x": x.astype(np.float32)}, {"phi": phi.astype(np.float32), "mu": np.array([-0.5, 1.5], np.float32)}


def exact_elbo_grad(x, params):
    """jax.grad of the exact -ELBO (both values of every z_i summed out), float64, written by hand."""
    x64 = getattr(jax, "enable_x64", None)
    if x64 is None:  # pragma: no cover - older/newer jax
        from jax.experimental import enable_x64 as x64
    with x64(True):
        a = math.log(PRIOR / (1 - PRIOR))
        xx = jnp.asarray(x, jnp.float64)

        def neg_elbo(p):
            q1 = jax.nn.sigmoid(p["phi"])
            lp = lambda z: (z * jax.nn.log_sigmoid(a) + (1 - z) * jax.nn.log_sigmoid(-a)  # noqa: E731
                            - 0.5 * (xx - p["mu"][z]) ** 2 - 0.5 * math.log(2 * math.pi))
            lq = lambda z: z * jax.nn.log_sigmoid(p["phi"]) + (1 - z) * jax.nn.log_sigmoid(-p["phi"])  # noqa: E731
            return -jnp.sum(q1 * (lp(1) - lq(1)) + (1 - q1) * (lp(0) - lq(0)))

        g = jax.grad(neg_elbo)({k: jnp.asarray(v, jnp.float64) for k, v in params.items()})
        return {k: np.asarray(v) for k, v in g.items()}


def numpyro_estimates(x, params, draws, particles, seed):
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import TraceGraph_ELBO

    n = x.shape[0]
    a = math.log(PRIOR / (1 - PRIOR))

    def model(x):
        mu = numpyro.param("mu", jnp.zeros(2))
        with numpyro.plate("data", n):
            z = numpyro.sample("z", dist.Bernoulli(logits=a))
            numpyro.sample("x", dist.Normal(mu[z], 1.0), obs=x)

    def guide(x):
        phi = numpyro.param("phi", jnp.zeros(n))
        with numpyro.plate("data", n):
            numpyro.sample("z", dist.Bernoulli(logits=phi))

    elbo = TraceGraph_ELBO(num_particles=particles)
    xs = jnp.asarray(x)
    p = {k: jnp.asarray(v) for k, v in params.items()}

    def one(key):
        g = jax.grad(lambda q: elbo.loss(key, q, model, guide, xs))(p)
        return jnp.concatenate([jnp.ravel(g[k]) for k in sorted(g)])

    keys = jax.random.split(jax.random.PRNGKey(seed), draws)
    f = jax.jit(jax.vmap(one))
    jax.block_until_ready(f(keys))  # compile
    t0 = time.perf_counter()
    G = np.asarray(jax.block_until_ready(f(keys)), np.float64)
    return G, (time.perf_counter() - t0) / draws


def bench_elbo(n, draws):
    data, params = elbo_data(n)
    exact = exact_elbo_grad(data["x"], params)
    src = ELBO.format(prior_logit=repr(math.log(PRIOR / (1 - PRIOR))))
    prog = vrlang.compile(src, estimators={"z": "score(samples = 1)"})
    rep = prog.estimator_variance(data=data, params=params, draws=draws, key=SEED, alternatives=False,
                                  extra={"z": ["score(samples = 4)", "score(samples = 4, baseline = loo)", "enum"]})
    names = sorted(params)
    ex = np.concatenate([np.ravel(exact[k]) for k in names])
    vr_exact = np.concatenate([np.ravel(rep.exact[k]) for k in names])
    rows = []
    for r in rep.rows:  # bias_z: against vrlang's exact gradient, which agrees with the hand-written one (below)
        mean = np.concatenate([np.ravel(r.mean[k]) for k in names])
        rows.append({"impl": "vrlang", "estimator": r.estimator, "cost": r.cost, "draws": rep.draws,
                     "variance": r.variance, "variance_se": r.variance_se, "var_phi": r.param_variance["phi"],
                     "var_mu": r.param_variance["mu"], "bias_z": r.bias_z, "unbiased": r.unbiased,
                     "mean_err": float(np.linalg.norm(mean - ex)), "time_per_estimate": r.time_per_estimate})
    for particles in (1, 4):
        G, t = numpyro_estimates(data["x"], params, draws, particles, SEED + 11)
        mean, var = G.mean(0), G.var(0, ddof=1)
        n_phi = n
        # sorted names: mu (2 coords) then phi (n coords)
        chunks = np.array_split(np.sum((G - mean) ** 2, axis=1), 16)
        tc = np.array([c.mean() for c in chunks]) * len(G) / (len(G) - 1)
        z = np.abs(mean - ex) / np.sqrt(var / len(G))
        rows.append({"impl": "numpyro", "estimator": f"TraceGraph_ELBO(num_particles = {particles})",
                     "cost": n * particles, "draws": len(G), "variance": float(var.sum()),
                     "variance_se": float(np.std(tc, ddof=1) / math.sqrt(len(tc))),
                     "var_phi": float(var[2:2 + n_phi].sum()), "var_mu": float(var[:2].sum()),
                     "bias_z": float(z.max()), "unbiased": True, "mean_err": float(np.linalg.norm(mean - ex)),
                     "time_per_estimate": t})
        log(f"  numpyro particles {particles}: variance {var.sum():.4g}, max |z| {z.max():.2f}")
    return {"n": n, "draws": rep.draws, "exact": {k: v.tolist() for k, v in exact.items()},
            "exact_vs_vrlang_max_abs": float(np.max(np.abs(vr_exact - ex))), "rows": rows,
            "params": {k: v.tolist() for k, v in params.items()}}


# ============================================================================ report


def machine_info() -> dict:
    import numpyro
    return _common.machine_info(numpyro=numpyro.__version__)


def _f(x, fmt=".4g"):
    return "—" if x is None else format(x, fmt)


def write_report(res: dict, path: Path, name: str):
    m = res["machine"]
    L = [f"<!-- {name}:start -->", f"## Expectations (`benchmarks/expectation.py`){' — ' + res['backend_label'] if res['backend_label'] else ''}", ""]
    L.append(f"- command: `{res['command']}`")
    L.append(f"- date: {res['date']} (total run time {res['total_s'] / 60:.1f} min)")
    L.append(f"- machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
             f"{_f(m['ram_gib'], '.1f')} GiB RAM; Python {m['python']}, jax {m['jax']} (backend `{m['backend']}`, "
             f"devices `{m['devices']}`), numpy {m['numpy']}, numpyro {m['numpyro']}; vrlang commit {m['commit']}")
    la, lb = m["load_avg_start"], res["load_avg_end"]
    busy = la[0] > 0.5 * (m["usable_cores"] or 1)
    L.append(f"- load average at start {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}, at end {lb[0]:.2f}/{lb[1]:.2f}/"
             f"{lb[2]:.2f} (1/5/15 min)" + (". The machine was busy with other jobs: wall times are noisy; each "
                                            "pair was timed back-to-back, interleaved, in one process."
                                            if busy else ": the machine was otherwise idle."))
    A = res["compiled_vs_hand"]
    a0 = A[0]
    L += ["", "### 1. Compiled vs hand-written JAX: time per gradient estimate", "",
          f"n = {a0['n']} data x K = {a0['K']} samples, d = {a0['d']}, C = {a0['C']} categories, float32. "
          "Both sides are `jax.jit` functions of (data, params, key) returning the gradient: vrlang's "
          "`prog.gradient_estimator(data).module.estimate` (the runtime estimator the solve loop calls) and the same "
          "estimator written by hand (a surrogate whose `jax.grad` is the estimator, `w @ X.T` over the batch). The "
          "hand-written version draws the same samples (vrlang's key scheme), so `max rel diff` compares the two "
          "gradients from the same keys. Times: median over the repeats (interleaved) of the mean over `calls` calls, "
          "each `block_until_ready`; wall and process CPU time (all threads). `hand + gather` is a diagnostic: the "
          "hand-written estimator with X and y first read through an iota-indexed gather (`X[iota(n)]`, what a "
          "vmapped `X[i]` compiles to), timed in the same interleaved loop. `vrlang, flat` is another: vrlang's "
          "same compiled estimator, jitted as a function of the module's arrays (its pytree flattened once, outside "
          "the loop) instead of the module itself, also interleaved; its ratio to `hand` is the compiled "
          "computation's alone, without the per-call flattening of the equinox module, which the solve loop "
          "(the estimator called inside one jitted loop) does not pay.", "",
          "| problem | estimator | max rel diff | calls × repeats | vrlang ms | hand ms | **wall ratio** | CPU ratio | "
          "ratio of fastest repeats | "
          "hand + gather ms | vrlang / (hand + gather) | vrlang, flat ms | vrlang, flat / hand | "
          "jaxpr eqns (vrlang / hand) | HLO instr. (vrlang / hand) | "
          "HLO dots | HLO gathers | HLO reduce-windows |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in A:
        dv, dh = r["diag"]["vrlang"], r["diag"]["hand"]
        L.append(f"| {r['problem']} | `{r['estimator']}` | {r['max_rel_diff']:.1e} | {r['calls']} × {r['repeats']} | "
                 f"{1e3 * r['times']['vrlang']['wall_median']:.3f} | {1e3 * r['times']['hand']['wall_median']:.3f} | "
                 f"**{r['ratio_wall']:.3f}** | {r['ratio_cpu']:.3f} | {r['ratio_wall_min']:.3f} | "
                 f"{1e3 * r['times']['hand_gather']['wall_median']:.3f} | {r['ratio_gather_wall']:.3f} | "
                 f"{1e3 * r['times']['vrlang_leaves']['wall_median']:.3f} | {r['ratio_leaves_wall']:.3f} | "
                 f"{dv['jaxpr_eqns']} / {dh['jaxpr_eqns']} | {dv['instructions']} / {dh['instructions']} | "
                 f"{dv['dots']} / {dh['dots']} | {dv['gathers']} / {dh['gathers']} | "
                 f"{dv['reduce_windows']} / {dh['reduce_windows']} |")
    L += ["", "Problems: `gauss` = `E(w ~ Normal(m, s): mean(i in 0..n: (dot(X[i], w) - y[i])^2))`, w: real[d]; "
          "`cat` = `E(c ~ Categorical(logits = theta): mean(i in 0..n: (dot(X[i], W[c]) - y[i])^2))`. "
          "Data X ~ N(0, 1/d), y linear + noise (seed 0)."]
    L += ["", ANALYSIS]
    worst = max(A, key=lambda r: r["ratio_wall"])
    L += ["", f"Target ≤ 1.05: {sum(r['ratio_wall'] <= 1.05 for r in A)} of {len(A)} met on wall time (medians), "
          f"{sum(r['ratio_cpu'] <= 1.05 for r in A)} of {len(A)} on CPU time, "
          f"{sum(r['ratio_wall_min'] <= 1.05 for r in A)} of {len(A)} on the fastest repeats; the largest median wall "
          f"ratio is {worst['ratio_wall']:.3f} (`{worst['estimator']}` on {worst['problem']}); "
          f"{sum(r['ratio_leaves_wall'] <= 1.05 for r in A)} of {len(A)} with the module flattened once "
          f"(`vrlang, flat`, largest {max(r['ratio_leaves_wall'] for r in A):.3f})."]
    med = lambda f: 1e6 * float(np.median([f(r) for r in A]))  # noqa: E731
    L += ["", REMAINING.format(
        flatten_us=med(lambda r: r["module_flatten_s"]), dict_us=med(lambda r: r["dict_flatten_s"]),
        extra_us=med(lambda r: r["times"]["vrlang"]["wall_median"] - r["times"]["vrlang_leaves"]["wall_median"]))]
    B = res["elbo"]
    L += ["", "### 2. Gradient variance vs numpyro `TraceGraph_ELBO`", "",
          f"-ELBO of a two-component Gaussian mixture with a per-datum Bernoulli latent: z_i ~ Bernoulli({PRIOR}), "
          f"x_i ~ Normal(mu[z_i], 1), n = {B['n']} points drawn with mu = {MU_TRUE}; guide q(z_i) = "
          "Bernoulli(logits = phi_i). Params: phi (n guide logits, drawn N(0, 1): away from 0, where numpyro's "
          "Bernoulli-logits log_prob has a kink) and mu = (-0.5, 1.5) (model). vrlang: the same -ELBO written as a "
          "`.vr` program (`sum(i in 0..n: E(z ~ Bernoulli(logits = phi[i]): log p(z) + log N(x_i; mu[z], 1) - "
          "log q(z)))`), measured by `Program.estimator_variance`; numpyro: `jax.grad` of "
          "`TraceGraph_ELBO(num_particles).loss` (model with `numpyro.plate`, so its score terms are "
          "Rao-Blackwellised per datum, as vrlang's per-datum `E` inside the sum), vmapped over keys. "
          f"{B['draws']} estimates each, float32. The exact gradient is `jax.grad` of the ELBO with every z_i summed "
          f"out, in float64, written by hand; vrlang's own exact gradient (all binders `enum`) agrees to "
          f"{B['exact_vs_vrlang_max_abs']:.1e}. max |z| = max over the {B['n'] + 2} coordinates of |mean − exact| / SE. "
          "Time per estimate: vrlang's is what `estimator_variance` reports (one jitted call vectorised over the keys, "
          "the running moments included; `enum` does not depend on the key and is timed as one call), numpyro's is "
          "`jit(vmap(grad(loss)))` over all the keys divided by their number; on this tiny model it is dominated by "
          "drawing: vrlang derives an independent key per datum and per sample (`fold_in`), numpyro draws the plate "
          "at once.",
          "",
          "| implementation | estimator | cost (body evals / estimate) | variance (trace) ± SE | var (phi) | var (mu) | "
          "variance × cost | max \\|z\\| vs exact | µs / estimate (vmapped) |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in B["rows"]:
        L.append(f"| {r['impl']} | `{r['estimator']}` | {r['cost']} | {_f(r['variance'])} ± {_f(r['variance_se'], '.2g')} | "
                 f"{_f(r['var_phi'])} | {_f(r['var_mu'])} | {_f(r['variance'] * r['cost'])} | {_f(r['bias_z'], '.2f')} | "
                 f"{_f(1e6 * r['time_per_estimate'], '.3g')} |")
    if res.get("elbo_notes"):
        L += ["", res["elbo_notes"]]
    L.append(f"<!-- {name}:end -->")
    _common.write_section(path, name, "\n".join(L) + "\n")


ANALYSIS = (
    "Diagnosis and fix. The first measurement of this comparison (vrlang commit 2aa55f8, same sizes, 2-core CPU "
    "at load ~9) gave ratios of 1.30-1.69 on wall time and 1.24-1.68 on CPU time. The jaxprs and optimised HLO "
    "showed why: every `X[i]` in an exact sum `mean(i in 0..n: ...)` was evaluated under `vmap` over "
    "`i = arange(n)` and compiled to a `gather` of all n rows -- a full copy of X (`f32[n, d] fusion(X, ...)`) "
    "per gradient estimate, which XLA does not turn back into a plain read; the `hand + gather` column adds "
    "exactly that copy to the hand-written estimator and accounts for the difference. Fixed in the lowering "
    "(`vrlang/backend/lower.py`, `ev_sum`): an exact sum now maps over the rows of the slice `X[lo:hi]` for every "
    "`X[i, ...]` of a data, const or param array indexed first by the binder, instead of indexing with a "
    "vmapped iota; the HLO gathers column shows what remains (the categories drawn by `score` on `cat`, "
    "`W[c]`, which the hand-written version gathers too). The same gather was on the path of every exact "
    "finite sum (full gradients, SVRG snapshots), so the finite-sum benchmark may move too.\n\n"
    "Second round. With the rows mapped, the run of vrlang commit 3064513 (load 0.8-1.4) still gave "
    "`score(samples = 16, baseline = loo)` 1.09 (gauss) and 1.06 (cat) and `importance` 1.07. The optimised HLO "
    "of every vrlang estimator but `reparam` had a `reduce-window` the hand-written one has not (none now: "
    "HLO reduce-windows column): "
    "written `dot(X[i], w)`, the product over the rows batches under the samples' `vmap` to "
    "`dot_general(X, W)`, rows first (`[n, K]`), and the next elementwise operation with a row-indexed array "
    "(`- y[i]`) moves the samples to the front with a transpose (JAX's broadcasting batch rule). XLA folds the "
    "transpose into the product as a column-major layout, and the reduction over the rows, now over the major "
    "dimension, is not offloaded with the product but split by the CPU compiler's tree-reduction pass into a "
    "`reduce-window` (32 rows at a time) and a second `reduce`. Fixed in the lowering (`vrlang/backend/lower.py`, "
    "`Interpreter._dot_order`): an inner product of two vectors whose first operand varies with the innermost "
    "mapped binder and whose second does not is evaluated in the other order, `dot(w, X[i])`, which batches to "
    "`W @ X.T` (`[K, n]`, no transpose): the hand-written form. The optimised HLO of `reparam` is (and was "
    "before this fix) the hand-written one's instruction for instruction, up to names; the other estimators now "
    "differ from theirs only in the O(K d) work below (the max rel diff column is float rounding). Also: the log-probability of one Categorical choice is read as "
    "`log_pmf[z]` (`vrlang/estimators/expectation.py`, `log_prob`, numpyro's formula and support check) instead "
    "of numpyro's `take_along_axis` on a `K x C` broadcast copy, whose gradient was a scatter into that copy "
    "summed back to C.")


REMAINING = (
    "What remains. Both compiled programs have the same matrix products over the batch (HLO dots column), no "
    "gather of X and one reduction over the rows. vrlang's jaxprs are longer (jaxpr eqns column): numpyro "
    "argument checks and per-item keys (`fold_in`), dead code that XLA removes. Left in the compiled programs, all "
    "O(K d) or O(C d), not growing with n: numpyro's support check in `log_prob` (`where(isfinite(z), ..., -inf)`, "
    "fused into the existing loops; kept: with `importance` it is what gives a proposal sample outside the "
    "target's support weight 0), `W[c]` read as a clamped dynamic slice (under `vmap` a gather with two index "
    "columns and a clamp, where the hand-written `W[c]` has one), and with `enum` a gather of `W` at "
    "the support `0..C-1` (and its scatter in the gradient) where the hand-written version uses `W` itself. The "
    "rest of the difference is outside the compiled computation: the benchmark passes vrlang's estimator module "
    "to `jax.jit` on every call (as a pytree: flattening that equinox module in Python took {flatten_us:.1f} µs "
    "here, the hand-written side's dict of arrays {dict_us:.1f} µs); the same compiled estimator called with the "
    "module's arrays (`vrlang, flat`) took {extra_us:.1f} µs less per call (medians over the problems): compare "
    "its ratio column with the `wall ratio` one. On a 2-core "
    "machine shared with other jobs, differences of a few percent are within the spread of the repeats (compare "
    "the median and fastest-repeat ratios).")


def elbo_notes(B) -> str:
    rows = {(r["impl"], r["estimator"]): r for r in B["rows"]}
    ok = all(r["bias_z"] is not None and r["bias_z"] < 4 for r in B["rows"])
    n1 = rows.get(("numpyro", "TraceGraph_ELBO(num_particles = 1)"))
    v1 = rows.get(("vrlang", "score(samples = 1)"))
    loo = rows.get(("vrlang", "score(samples = 4, baseline = loo)"))
    n4 = rows.get(("numpyro", "TraceGraph_ELBO(num_particles = 4)"))
    parts = [("Every mean agrees with the exact gradient (max |z| < 4)." if ok else
              "NOT every mean is within 4 SE of the exact gradient: see the max |z| column.")]
    if n1 and v1:
        parts.append(f"With one sample and no baseline, vrlang's score estimator has {v1['variance'] / n1['variance']:.2f}× "
                     "numpyro's variance: the two differ only in the term −∇ log q(z) of the body's −log q(z), "
                     "which vrlang differentiates as written and numpyro drops for non-reparameterised guide sites "
                     "(its expectation is zero, E_q[∇ log q] = 0), so both are unbiased.")
    if loo and n4:
        parts.append(f"At the same cost (4 samples per datum) RLOO has {loo['variance'] / n4['variance']:.3g}× the variance "
                     "of numpyro with 4 particles (no baseline), and `enum` (2 evaluations per datum) is exact.")
    return " ".join(parts)


# ============================================================================ main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller problems, fewer repeats and draws")
    ap.add_argument("--n", type=int, default=None, help="data size of part 1 (default 20000; quick 4000)")
    ap.add_argument("--d", type=int, default=None, help="dimension of part 1 (default 32)")
    ap.add_argument("--section", default=None, help="RESULTS.md section name (default `expectation`, or "
                                                     "`expectation-<backend>` off the CPU)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not touch RESULTS.md / the JSON")
    ap.add_argument("--out-dir", default=None, help="write the JSON and a copy of the section here too")
    ap.add_argument("--from-json", default=None, metavar="PATH",
                    help="measure nothing: render the RESULTS.md section from a saved results JSON")
    args = ap.parse_args(argv)
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
        write_report(res, BENCH / "RESULTS.md", res["section"])
        log(f"wrote {BENCH / 'RESULTS.md'} (section {res['section']}) from {args.from_json}")
        return 0
    if args.quick:
        n, d, K, C, repeats, batch_s, elbo_n, draws = 4000, 32, 16, 8, 5, 0.15, 10, 4000
    else:
        n, d, K, C, repeats, batch_s, elbo_n, draws = 20000, 32, 16, 8, 15, 0.3, 20, 20000
    n, d = args.n or n, args.d or d
    info = machine_info()
    log(f"machine: {info['cpu']} / {info['devices']}")
    log("1. compiled vs hand-written")
    A = bench_compiled_vs_hand(n, d, K, C, repeats, batch_s)
    log("2. ELBO variance vs numpyro TraceGraph_ELBO")
    B = bench_elbo(elbo_n, draws)
    backend = jax.default_backend()
    name = args.section or ("expectation" if backend == "cpu" else f"expectation-{backend}")
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    res = {"machine": info, "command": "python benchmarks/expectation.py" + (f" {argv_text}" if argv_text else ""),
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "total_s": time.perf_counter() - T_START, "load_avg_end": list(os.getloadavg()),
           "compiled_vs_hand": A, "elbo": B, "elbo_notes": elbo_notes(B), "section": name,
           "backend_label": "" if name == "expectation" else f"{backend}, {info['devices']}"}
    for r in B["rows"]:
        log(f"  {r['impl']:8s} {r['estimator']:40s} variance {r['variance']:.4g}  cost {r['cost']}  "
            f"max|z| {_f(r['bias_z'], '.2f')}")
    log(res["elbo_notes"])
    if args.no_write:
        return 0
    suffix = "" if name == "expectation" else name[len("expectation"):]
    targets = [BENCH] + ([Path(args.out_dir)] if args.out_dir else [])
    for t in targets:
        t.mkdir(parents=True, exist_ok=True)
        (t / f"expectation_results{suffix}.json").write_text(json.dumps(res, indent=1) + "\n")
    write_report(res, BENCH / "RESULTS.md", name)
    if args.out_dir:
        write_report(res, Path(args.out_dir) / "RESULTS_section.md", name)
    log(f"wrote {BENCH / 'RESULTS.md'} (section {name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
