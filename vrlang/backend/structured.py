r"""Lowering of what depends on a sum's structure: importance-sampling weights, GLM functions.

Given the transformed program (:func:`vrlang.transforms.finite_sum.resolve` has typed each
``weights(expr)`` and detected each GLM body, :mod:`vrlang.check.structure`), this module
builds, per data shape:

* the **sampling weights** of ``sampling = weights(expr)``: the expression evaluated for
  every item with ``vmap`` over the index (as ``ev_sum`` evaluates a body), once per
  solve; and of ``sampling = lipschitz``: the per-item smoothness constants below.
  :func:`bind_sampling` checks them (finite, non-negative, not all zero; positive where
  ``mix = 0``, else error E430 naming the binder) and stores the bound
  :class:`~vrlang.estimators.sampling.ImportanceSampler` in the data pytree, so its
  probabilities are traced arrays (new data never recompile);
* for a GLM body, the functions of :class:`GLMFunctions`: the margin
  :math:`m_j(\theta) = \langle x_j, w\rangle`, the per-item function with its margin frozen
  :math:`H_j(\theta, m)` (SAGA's scalar table,
  :class:`~vrlang.estimators.finite_sum.SAGAGLMGradient`), the scalar loss
  :math:`\phi_j(m)`, :math:`\|x_j\|^2` and the objective's coefficient of the sum;
* the **smoothness constants** (:func:`smoothness`):

  .. math::  L_j = |c| \, \sup_m |\phi_j''(m)| \, \|x_j\|^2 + L_\rho,

  where :math:`c = a n` (``sum``) or :math:`a` (``mean``), :math:`a` the objective's
  coefficient of the sum, and :math:`L_\rho` the curvature of the part independent of
  the item (the regulariser; power iteration on its Hessian at the initial point --
  exact for quadratic regularisers).  :math:`\sup_m |\phi_j''|` is found *numerically*:
  :math:`|\phi_j''|` (two ``jax.grad`` in the margin) on a grid of margins -- 201 points
  on ``[-10, 10]`` and 12 log-spaced points per side out to ``|m| = 10^4`` -- then refined
  on 129 points between the two neighbours of the best grid point.  This is exact for the
  common losses, whose curvature peaks on the grid or is constant (logistic/softplus of
  ``-y m``: ``y^2/4`` at ``m = 0``; squared ``(m - y)^2``: 2; ``(m - y)^2 / 2``: 1), and
  accurate to about 1e-5 (relative) for a smooth peak elsewhere in ``[-10, 10]``; a
  curvature peaking outside ``[-10, 10]`` between grid points may be underestimated
  (give ``lr`` or ``weights(...)`` explicitly for such losses); a curvature that still
  grows at ``|m| = 10^4`` (``exp``, ``m^4``) is reported unbounded and no Lipschitz
  constant is claimed.
* ``lr = auto`` for ``sgd`` with ``saga``/``svrg``/``lsvrg`` on a GLM body
  (:func:`glm_auto_lr`): :math:`1/(3 L_{max})`, the SAGA step of Defazio, Bach &
  Lacoste-Julien (NeurIPS 2014, Theorem 1), with :math:`L_{max} = \max_j L_j` -- and with
  importance sampling :math:`L_{max} = \max_j L_j / (n p_j)`, the smoothness of the
  reweighted per-item functions :math:`h_j / (n p_j)` that the sampler averages (for
  uniform :math:`p_j = 1/n` the two agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vrlang.backend.lower import Env, _as_float
from vrlang.check.structure import GLM, MARGIN, TOTAL, render
from vrlang.errors import VrDataError, VrEstimatorError
from vrlang.estimators.sampling import BOUND, FixedIndexSampler, ImportanceSampler, is_importance
from vrlang.ir import nodes as N

VR_FAMILIES = ("saga", "svrg", "lsvrg")  # lr = auto uses the SAGA/SVRG step for these
GRID = np.unique(np.concatenate([np.linspace(-10.0, 10.0, 201), np.logspace(1.0, 4.0, 13)[1:],
                                 -np.logspace(1.0, 4.0, 13)[1:]]))
REFINE_POINTS = 129  # the fine grid between the neighbours of the best grid point
ITEM_CHUNK = 4096
POWER_STEPS = 50
SUP_TEXT = ("sup|phi''| found numerically: the second derivative of the loss in the margin on a grid of margins "
            "in [-1e4, 1e4] (dense on [-10, 10]), refined on a fine grid around the best point")


def _size(d, dims) -> int:
    return d if isinstance(d, int) else dims[d]


@dataclass(frozen=True, eq=False)
class GLMFunctions:
    """The lowered pieces of a GLM body over ``n`` items (``j`` in ``[0, n)``)."""

    binder: str
    n: int
    mean: bool
    glm: GLM
    margin: Callable  # (params, data, consts, j) -> m_j
    frozen: Callable  # (params, m, data, consts, j) -> H_j(params, m): h_j with its margin replaced by m
    phi: Callable  # (params, m, data, consts, j) -> the body at item j with its margin replaced by m
    sqnorm: Callable  # (data, consts, j) -> ||x_j||^2
    outer: Callable  # (params, S, data, consts) -> the objective with the sum replaced by S

    @property
    def scale(self) -> float:
        """h_j = scale * a * body_j + ...: ``n`` for a ``sum``, 1 for a ``mean``."""
        return 1.0 if self.mean else float(self.n)


def lower(cp, choices: dict, dims: dict, interp) -> dict:
    """``{"weights": {binder: fn(data, consts) -> (n,)}, "glm": {binder: GLMFunctions}, "cache": {}}``."""
    out: dict = {"weights": {}, "glm": {}, "cache": {}}
    for b, c in choices.items():
        if c.kind != "index":
            continue
        node = cp.binders[b].nodes[0]
        lo = _size(node.lo, dims)
        n = _size(node.hi, dims) - lo
        w_ir = c.options.get("weights_ir")
        if w_ir is not None:
            out["weights"][b] = _weights_fn(w_ir, b, lo, n, dims, interp)
        st = c.options.get("structure")
        if isinstance(st, GLM) and st.root_frozen is not None:
            out["glm"][b] = _glm_functions(st, lo, n, dims, interp)
    return out


def _weights_fn(w_ir: N.Node, b: str, lo: int, n: int, dims, interp):
    def weights(data, consts):
        env = Env({}, data, consts, dims)
        return jax.vmap(lambda i: _as_float(interp(w_ir, env.bind(b, i))))(jnp.arange(lo, lo + n, dtype=jnp.int32))

    return weights


def _glm_functions(glm: GLM, lo: int, n: int, dims, interp) -> GLMFunctions:
    b = glm.binder

    def margin(params, data, consts, j):
        return interp(glm.margin, Env(params, data, consts, dims).bind(b, j + lo))

    def frozen(params, m, data, consts, j):
        env = Env(params, data, consts, dims, jax.random.PRNGKey(0),
                  {b: FixedIndexSampler(jnp.reshape(j, (1,)))}, {MARGIN: m})
        return interp(glm.root_frozen, env)

    def phi(params, m, data, consts, j):
        return interp(glm.body_frozen, Env(params, data, consts, dims, None, {}, {MARGIN: m}).bind(b, j + lo))

    def sqnorm(data, consts, j):
        x = _as_float(interp(glm.feature, Env({}, data, consts, dims).bind(b, j + lo)))
        return jnp.sum(x * x)

    def outer(params, S, data, consts):
        return interp(glm.root_outer, Env(params, data, consts, dims, None, {}, {TOTAL: S}))

    return GLMFunctions(b, n, glm.sum.mean, glm, margin, frozen, phi, sqnorm, outer)


# ------------------------------------------------------------------ smoothness


def _sup_curvature(curv: Callable, grid):
    """``(sup_m curv(m), unbounded)`` for one item: grid maximum, refined on a fine grid around it."""
    vals = jax.vmap(curv)(grid)
    vals = jnp.where(jnp.isnan(vals), jnp.inf, vals)
    k = jnp.argmax(vals)
    G = grid.shape[0]
    a, b = grid[jnp.maximum(k - 1, 0)], grid[jnp.minimum(k + 1, G - 1)]
    fine = a + (b - a) * jnp.linspace(0.0, 1.0, REFINE_POINTS, dtype=grid.dtype)
    best = jnp.maximum(vals[k], jnp.max(jax.vmap(curv)(fine)))
    # curvature still growing at the ends of the grid: unbounded (exp, m^4, ...)
    grows = (vals[0] > vals[1] * (1 + 1e-6)) | (vals[-1] > vals[-2] * (1 + 1e-6)) | ~jnp.isfinite(best)
    return best, grows


def _power(f: Callable, x0):
    """Largest |eigenvalue| of the Hessian of ``f`` at ``x0`` (power iteration, fixed random start)."""
    leaves, tdef = jax.tree_util.tree_flatten(x0)
    keys = jax.random.split(jax.random.PRNGKey(20261126), max(len(leaves), 1))
    v = jax.tree_util.tree_unflatten(tdef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])

    def norm(t):
        return jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(t)))

    def body(_, carry):
        v, _ = carry
        v = jax.tree_util.tree_map(lambda x: x / jnp.maximum(norm(v), 1e-30), v)
        hv = jax.jvp(jax.grad(f), (x0,), (v,))[1]
        return hv, norm(hv)

    _, lam = jax.lax.fori_loop(0, POWER_STEPS, body, (v, jnp.zeros((), jnp.result_type(float))))
    return lam


def smoothness(gf: GLMFunctions, params, data, consts) -> dict:
    """Per-item smoothness of the GLM's per-item functions (traceable; see the module doc).

    Returns ``L`` (n,) = ``|c| phi2 sqnorm`` (the margin part), ``L_reg`` (the curvature
    of the part independent of the item), ``phi2`` (n,), ``sqnorm`` (n,), ``c`` and
    ``unbounded`` (some item's loss has unbounded curvature).
    """
    fdt = jnp.result_type(float)
    a = jax.grad(gf.outer, argnums=1)(params, jnp.zeros((), fdt), data, consts)
    c = jnp.abs(a) * gf.scale
    idx = jnp.arange(gf.n, dtype=jnp.int32)
    grid = jnp.asarray(GRID, fdt)

    def item(j):
        d2 = jax.grad(jax.grad(gf.phi, argnums=1), argnums=1)

        def curv(m):
            return jnp.abs(d2(params, m, data, consts, j))

        phi2, grows = _sup_curvature(curv, grid)
        return phi2, grows, gf.sqnorm(data, consts, j)

    if gf.n <= ITEM_CHUNK:
        phi2, grows, sq = jax.vmap(item)(idx)
    else:  # bounded memory: ITEM_CHUNK items x the grid at a time
        phi2, grows, sq = jax.lax.map(item, idx, batch_size=ITEM_CHUNK)
    L_reg = _power(lambda p: gf.frozen(p, jnp.zeros((), fdt), data, consts, jnp.zeros((), jnp.int32)), params)
    return {"L": c * phi2 * sq, "L_reg": L_reg, "phi2": phi2, "sqnorm": sq, "c": c, "unbounded": jnp.any(grows)}


def _smoothness_jit(fns_structured: dict, b: str):
    cache = fns_structured["cache"]
    key = ("smoothness", b)
    if key not in cache:
        gf = fns_structured["glm"][b]
        cache[key] = jax.jit(lambda p, d, c: smoothness(gf, p, d, c))
    return cache[key]


def item_smoothness(fns_structured: dict, b: str, params, data, consts) -> dict:
    """:func:`smoothness` for binder ``b`` on the host (numpy), jitted once per data shape."""
    fdt = jnp.result_type(float)
    p = {k: jnp.asarray(v, fdt) for k, v in params.items()}
    data = {k: v for k, v in data.items() if k != BOUND}  # one compiled version, bound samplers or not
    out = _smoothness_jit(fns_structured, b)(p, data, consts)
    return {k: np.asarray(v) for k, v in jax.device_get(out).items()}


# ------------------------------------------------------------------ sampling at data time


def bind_sampling(choices: dict, fns_structured: dict, data: dict, consts: dict, params0) -> dict:
    """``data`` plus the bound importance samplers under ``BOUND`` (unchanged when there are none)."""
    bound = {}
    cache = fns_structured["cache"]
    for b, c in choices.items():
        s = c.sampler
        if not is_importance(s):
            continue
        kind = (c.options.get("sampling") or {}).get("kind")
        if kind == "lipschitz":
            sm = item_smoothness(fns_structured, b, params0, data, consts)
            if bool(sm["unbounded"]):
                raise VrEstimatorError("E396", f"`sampling = lipschitz` on `{b}`: the loss has unbounded curvature in "
                                       "the margin (e.g. exp), so the items have no Lipschitz constants",
                                       c.spec.span, f"use sampling = weights(expr), e.g. weights(norm(X[{b}]))")
            w = sm["L"] + sm["L_reg"]
            what = "the per-item smoothness constants L_i"
        else:
            key = ("weights", b)
            if key not in cache:
                cache[key] = jax.jit(fns_structured["weights"][b])
            w = np.asarray(cache[key](data, consts))
            what = f"the sampling weights {s.source}"
        _check_weights(b, w, s.mix, what)
        key = ("from_weights", b)
        if key not in cache:
            cache[key] = jax.jit(ImportanceSampler.from_weights, static_argnums=(1, 2, 3))
        bound[b] = cache[key](jnp.asarray(w, jnp.result_type(float)), s.batch, s.mix, s.source)
    return {**data, BOUND: bound} if bound else data


def _check_weights(b: str, w: np.ndarray, mix: float, what: str) -> None:
    bad = ~np.isfinite(w)
    if bad.any():
        raise VrDataError("E430", f"{what} of `{b}` are not finite at item {int(np.argmax(bad))} "
                          f"({w[np.argmax(bad)]})")
    if (w < 0).any():
        j = int(np.argmax(w < 0))
        raise VrDataError("E430", f"{what} of `{b}` must be non-negative; item {j} has {w[j]:g}",
                          None, "sampling weights are relative probabilities: use e.g. abs(...) or norm(...)")
    if not w.sum() > 0:
        raise VrDataError("E430", f"{what} of `{b}` are all zero: there is nothing to sample proportionally to",
                          None, "use sampling = uniform")
    if mix == 0 and (w == 0).any():
        j = int(np.argmax(w == 0))
        raise VrDataError("E430", f"{what} of `{b}` are zero at item {j} with mix = 0: that item would never be "
                          "drawn and the estimate would be biased", None,
                          "leave mix at its default (0.1: a uniform share keeps every item) "
                          "or make the weights positive")


# ------------------------------------------------------------------ lr = auto


def auto_lr_applies(program, cfg) -> str | None:
    """The binder whose GLM structure sets ``lr = auto`` (static: from the transformed program), or None."""
    if cfg.name != "sgd" or cfg.momentum:
        return None
    sampled = [b for b, c in program.choices.items() if c.kind == "index" and c.sampler is not None]
    others = [c for c in program.choices.values() if c.kind != "index" and c.plan is not None]
    if len(sampled) != 1 or others:
        return None
    (b,) = sampled
    c = program.choices[b]
    if c.family not in VR_FAMILIES or not isinstance(c.options.get("structure"), GLM):
        return None
    if any(p.constraint for p in program.checked.params.values()):
        return None
    return b


def glm_auto_lr(program, cfg, fns: dict, obj, params0) -> tuple[float, str, dict] | None:
    """``(lr, note, detail)`` of the SAGA/SVRG step on a GLM body, or None when it does not apply."""
    b = auto_lr_applies(program, cfg)
    st = fns.get("structured")
    if b is None or st is None or b not in st["glm"]:
        return None
    sm = item_smoothness(st, b, params0, obj.data, obj.consts)
    if bool(sm["unbounded"]):
        return None
    gf = st["glm"][b]
    L_items = sm["L"] + sm["L_reg"]
    sampler = obj.data.get(BOUND, {}).get(b) if isinstance(obj.data, dict) else None
    fam = program.choices[b].spec.name
    if sampler is not None:
        q = L_items / (gf.n * np.asarray(sampler.probs))
        L = float(q.max())
        which = (f"L_max = max_i L_i/(n p_i) = {L:.4g} (importance sampling: the smoothness of the reweighted "
                 f"per-item functions; max_i L_i = {float(L_items.max()):.4g})")
    else:
        L = float(L_items.max())
        which = f"L_max = max_i L_i = {L:.4g}"
    if not np.isfinite(L) or L <= 0:
        return None
    lr = 1.0 / (3.0 * L)
    note = (f"1/(3 L_max) = {lr:.4g}, the SAGA step of Defazio, Bach & Lacoste-Julien 2014 (used for {fam}), with "
            f"{which}; `{b}` is a generalised linear model in the margin {render(gf.glm.margin)}: "
            f"L_i = |c| sup|phi''| ||x_i||^2 + L_reg with |c| = {float(sm['c']):.4g}, sup|phi''| = "
            f"{float(sm['phi2'].max()):.4g} ({SUP_TEXT}), max_i ||x_i||^2 = {float(sm['sqnorm'].max()):.4g}, "
            f"L_reg = {float(sm['L_reg']):.4g} (curvature of the terms independent of `{b}`, power iteration at the "
            "initial point)")
    detail = {"rule": "1/(3 L_max)", "binder": b, "L_max": L, "L_items_max": float(L_items.max()),
              "L_reg": float(sm["L_reg"]), "phi2_max": float(sm["phi2"].max()), "c": float(sm["c"]),
              "sqnorm_max": float(sm["sqnorm"].max()), "importance_sampling": sampler is not None}
    return lr, note, detail


def explain_lr(program) -> str | None:
    """The ``lr = auto`` rule, in words, when the GLM rule applies (for ``explain``)."""
    cfg = program.solver
    if cfg.lr not in ("auto", None):
        return None
    b = auto_lr_applies(program, cfg)
    if b is None:
        return None
    c = program.choices[b]
    return (f"1/(3 L_max) (SAGA/SVRG theory, Defazio et al. 2014), L_max from the per-item Lipschitz constants of the "
            f"GLM `{b}`: L_i = |c| sup|phi''| ||x_i||^2 + L_reg, {SUP_TEXT}"
            + ("; with importance sampling L_max = max_i L_i/(n p_i)" if is_importance(c.sampler) else ""))
