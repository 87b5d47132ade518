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
  (:func:`glm_auto_lr`): the step of each method's theory for minibatches, through the
  **expected smoothness** :math:`\mathcal L(b)` of the minibatch gradient (Gower et al.,
  "SGD: general analysis and improved rates", ICML 2019; Gazagnadou, Gower & Salmon,
  "Optimal mini-batch and step sizes for SAGA", ICML 2019).  vrlang draws the ``b``
  indices i.i.d. (uniformly, or from ``p`` under importance sampling) *with replacement*,
  so the minibatch gradient is :math:`g = \frac1b \sum_k \nabla h_{j_k} / (n p_{j_k})`
  and, with :math:`d_j = \nabla h_j(x) - \nabla h_j(y)` and, for convex :math:`h_j`,
  :math:`\|d_j\|^2 \le 2 L_j D_{h_j}(x, y)` (Bregman divergences),

  .. math::  E\|g(x) - g(y)\|^2 = \tfrac1b E\big\|\tfrac{d_j}{n p_j}\big\|^2 + (1 - \tfrac1b)\|\bar d\|^2
             \le 2\Big[\underbrace{(1 - \tfrac1b) L + \tfrac1b L_{max}}_{\mathcal L(b)}\Big] D_f(x, y),
             \qquad L_{max} = \max_j \frac{L_j}{n p_j},

  and the expected residual (the variance part) is :math:`\rho(b) = L_{max}/b`.  Here
  :math:`L` is the smoothness of the whole mean :math:`f`,

  .. math::  L = \lambda_{max}\Big(\frac{|c|}{n} \sum_j \sup|\phi_j''|\, x_j x_j^\top\Big) + L_\rho,

  (:func:`whole_smoothness`: the ``D x D`` matrix and its exact eigenvalues for up to 64
  params, else power iteration with Hessian-vector products of
  :math:`\frac{|c|}{2n}\sum_j \sup|\phi_j''|\, m_j(v)^2`, ``O(n D)`` each; never ``n x n``);
  :math:`\mathcal L(1) = L_{max}` and :math:`\mathcal L(b) \to L` as :math:`b` grows.
  (For ``b``-nice sampling *without* replacement the papers have
  :math:`\frac{n(b-1)}{b(n-1)} L + \frac{n-b}{b(n-1)} L_{max}`, which is smaller by
  :math:`\frac{(b-1)(L_{max} - L)}{b(n-1)}`, and a smaller residual: the constants here are
  those of the sampler vrlang has, and give steps never larger than the ``b``-nice ones.)  The steps:

  - ``saga``: :math:`1 / (4 \max\{\mathcal L(b),\ \rho(b) + \mu / (4 \pi_{min})\})`,
    Gazagnadou et al. 2019 (from the JacSketch analysis of Gower, Richtárik & Bach 2018),
    whose ``b``-nice form has :math:`\pi_{min} = b/n`; here :math:`\pi_{min} = \min_i
    1 - (1 - p_i)^b`, the smallest probability that an item is in the minibatch, and
    :math:`\mu` the smallest curvature of the regulariser (its Hessian at the initial point), a lower bound
    of the strong convexity for a loss convex in the margin -- any lower bound is a valid
    constant for the theorem;
  - ``svrg``: :math:`1 / (2 (\mathcal L(b) + 2 \rho(b)))`, Free-SVRG of Sebbouh,
    Gazagnadou, Jelassi, Bach & Gower ("Towards closing the gap between the theory and
    practice of SVRG", NeurIPS 2019): the inner loop is not reset at a snapshot, as in
    vrlang's ``svrg`` (whose snapshot is the last iterate, the theorem's a weighted
    average of the inner iterates);
  - ``lsvrg``: :math:`1 / (6 \mathcal L(b))`, Kovalev, Horváth & Richtárik (ALT 2020,
    :math:`1/(6 L_{max})` for one item) with the expected smoothness of the minibatch
    (Qian, Qu & Richtárik, "L-SVRG and L-Katyusha with arbitrary sampling", 2019).

  At ``b = 1`` the three are :math:`1/(4 L_{max} + \mu/\pi_{min})`, :math:`1/(6 L_{max})`
  and :math:`1/(6 L_{max})`.  They are worst-case steps: on badly scaled data
  (:math:`L_{max} \gg L`) they are much smaller than a tuned step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from vrlang.backend.lower import Env, _as_float
from vrlang.check.structure import GLM, MARGIN, TOTAL, render
from vrlang.errors import VrDataError, VrEstimatorError
from vrlang.estimators.sampling import BOUND, FixedIndexSampler, ImportanceSampler, is_importance
from vrlang.ir import nodes as N

VR_FAMILIES = ("saga", "svrg", "lsvrg")  # lr = auto uses each one's minibatch step (RULES)
GRID = np.unique(np.concatenate([np.linspace(-10.0, 10.0, 201), np.logspace(1.0, 4.0, 13)[1:],
                                 -np.logspace(1.0, 4.0, 13)[1:]]))
REFINE_POINTS = 129  # the fine grid between the neighbours of the best grid point
ITEM_CHUNK = 4096
POWER_STEPS = 50
DENSE_MAX = 64  # whole_smoothness: exact eigenvalues of the D x D Hessians up to D = 64 params
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
    return _power_op(lambda v: jax.jvp(jax.grad(f), (x0,), (v,))[1], x0)


def _norm(t):
    return jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(t)))


def _power_op(matvec: Callable, x0):
    """Largest |eigenvalue| of the symmetric linear map ``matvec`` on pytrees shaped like ``x0``."""
    leaves, tdef = jax.tree_util.tree_flatten(x0)
    keys = jax.random.split(jax.random.PRNGKey(20261126), max(len(leaves), 1))
    v = jax.tree_util.tree_unflatten(tdef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])

    def body(_, carry):
        v, _ = carry
        v = jax.tree_util.tree_map(lambda x: x / jnp.maximum(_norm(v), 1e-30), v)
        hv = matvec(v)
        return hv, _norm(hv)

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


def whole_smoothness(gf: GLMFunctions, params, data, consts, phi2, L_reg) -> dict:
    r"""The smoothness of the whole mean and a strong-convexity lower bound (traceable; see the module doc).

    ``L_loss`` = :math:`\lambda_{max}(\frac{|c|}{n} \sum_j \sup|\phi_j''|\, x_j x_j^\top)` (``phi2`` the
    sups): the Hessian of the quadratic :math:`\frac{|c|}{2n} \sum_j \sup|\phi_j''|\, m_j(\theta)^2` (the
    margins are linear); ``mu_reg`` = the smallest eigenvalue of the regulariser's Hessian at ``params``,
    clipped at 0.  Up to ``DENSE_MAX`` params both Hessians are formed (``D`` Hessian-vector products,
    ``O(n D^2)``) and their eigenvalues are exact; beyond, power iteration (``O(n D)`` per step) on the
    first, and on ``L_reg I - Hessian`` for the second (``L_reg`` its largest |eigenvalue|).
    """
    fdt = jnp.result_type(float)
    a = jax.grad(gf.outer, argnums=1)(params, jnp.zeros((), fdt), data, consts)
    c = jnp.abs(a) * gf.scale
    idx = jnp.arange(gf.n, dtype=jnp.int32)

    def quad(p):
        def one(j, s):
            m = _as_float(gf.margin(p, data, consts, j))
            return s * m * m

        if gf.n <= ITEM_CHUNK:
            terms = jax.vmap(one)(idx, phi2)
        else:  # bounded memory: ITEM_CHUNK rows at a time
            terms = jax.lax.map(lambda t: one(*t), (idx, phi2), batch_size=ITEM_CHUNK)
        return 0.5 * c * jnp.sum(terms) / gf.n

    def reg(p):
        return gf.frozen(p, jnp.zeros((), fdt), data, consts, jnp.zeros((), jnp.int32))

    flat, unravel = jax.flatten_util.ravel_pytree(params)
    if flat.shape[0] <= DENSE_MAX:  # small: the two D x D Hessians, exact eigenvalues
        L_loss = jnp.max(jnp.abs(jnp.linalg.eigvalsh(jax.hessian(lambda x: quad(unravel(x)))(flat))))
        mu = jnp.maximum(jnp.linalg.eigvalsh(jax.hessian(lambda x: reg(unravel(x)))(flat))[0], 0.0)
    else:
        L_loss = _power(quad, params)

        def shifted(v):
            hv = jax.jvp(jax.grad(reg), (params,), (v,))[1]
            return jax.tree_util.tree_map(lambda x, y: L_reg * x - y, v, hv)

        mu = jnp.maximum(L_reg - _power_op(shifted, params), 0.0)
    return {"L_loss": L_loss, "mu_reg": mu}


def glm_constants(fns_structured: dict, b: str, params, data, consts) -> dict:
    """:func:`smoothness` and :func:`whole_smoothness` for binder ``b`` on the host (numpy), jitted once."""
    sm = item_smoothness(fns_structured, b, params, data, consts)
    cache = fns_structured["cache"]
    key = ("whole", b)
    if key not in cache:
        gf = fns_structured["glm"][b]
        cache[key] = jax.jit(lambda p, d, c, phi2, L_reg: whole_smoothness(gf, p, d, c, phi2, L_reg))
    fdt = jnp.result_type(float)
    p = {k: jnp.asarray(v, fdt) for k, v in params.items()}
    data = {k: v for k, v in data.items() if k != BOUND}
    out = cache[key](p, data, consts, jnp.asarray(sm["phi2"], fdt), jnp.asarray(sm["L_reg"], fdt))
    return {**sm, **{k: np.asarray(v) for k, v in jax.device_get(out).items()}}


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


RULES = {"saga": "1/(4 max(L(b), rho(b) + mu/(4 pi_min)))", "svrg": "1/(2 (L(b) + 2 rho(b)))",
         "lsvrg": "1/(6 L(b))"}
CITES = {"saga": "the minibatch SAGA step of Gazagnadou, Gower & Salmon 2019",
         "svrg": "the minibatch Free-SVRG step of Sebbouh et al. 2019",
         "lsvrg": "the L-SVRG step of Kovalev et al. 2020 with the minibatch's expected smoothness (Qian et al. 2019)"}


def expected_smoothness(L: float, L_max: float, b: int) -> float:
    r""":math:`\mathcal L(b) = (1 - 1/b) L + L_{max}/b`: ``b`` items i.i.d. with replacement (see the module doc)."""
    return (1.0 - 1.0 / b) * L + L_max / b


def minibatch_step(family: str, L: float, L_max: float, b: int, mu: float = 0.0, pi_min: float = 1.0) -> dict:
    """The ``lr = auto`` step of ``family`` (saga/svrg/lsvrg) from the constants (see the module doc).

    ``L`` the smoothness of the whole mean, ``L_max`` = max_j L_j/(n p_j), ``b`` the batch,
    ``mu`` a strong-convexity lower bound and ``pi_min`` = min_i P(item i in the minibatch)
    (both used by saga only).  Returns ``lr``, ``L_b`` = L(b) and ``rho_b`` = rho(b) = L_max/b.
    """
    Lb = expected_smoothness(L, L_max, b)
    rho = L_max / b
    if family == "saga":
        lr = 1.0 / (4.0 * max(Lb, rho + mu / (4.0 * pi_min)))
    elif family == "svrg":
        lr = 1.0 / (2.0 * (Lb + 2.0 * rho))
    elif family == "lsvrg":
        lr = 1.0 / (6.0 * Lb)
    else:
        raise ValueError(f"no minibatch step rule for {family}")
    return {"lr": lr, "L_b": Lb, "rho_b": rho}


def glm_auto_lr(program, cfg, fns: dict, obj, params0) -> tuple[float, str, dict] | None:
    """``(lr, note, detail)`` of the SAGA/SVRG/L-SVRG minibatch step on a GLM body, or None when it does not apply."""
    b = auto_lr_applies(program, cfg)
    st = fns.get("structured")
    if b is None or st is None or b not in st["glm"]:
        return None
    sm = glm_constants(st, b, params0, obj.data, obj.consts)
    if bool(sm["unbounded"]):
        return None
    gf = st["glm"][b]
    n = gf.n
    L_items = sm["L"] + sm["L_reg"]
    sampler = obj.data.get(BOUND, {}).get(b) if isinstance(obj.data, dict) else None
    choice = program.choices[b]
    fam = choice.family
    bs = int(choice.sampler.batch)
    if sampler is not None:
        probs = np.asarray(sampler.probs, np.float64)
        L_max = float((L_items / (n * probs)).max())
        which = (f"L_max = max_i L_i/(n p_i) = {L_max:.4g} (importance sampling: the smoothness of the reweighted "
                 f"per-item functions; max_i L_i = {float(L_items.max()):.4g})")
    else:
        probs = np.full(n, 1.0 / n)
        L_max = float(L_items.max())
        which = f"L_max = max_i L_i = {L_max:.4g}"
    L = float(sm["L_loss"] + sm["L_reg"])
    mu = float(sm["mu_reg"])
    pi_min = float(-np.expm1(bs * np.log1p(-probs.min())))  # 1 - (1 - p_min)^b
    if not (np.isfinite(L_max) and np.isfinite(L)) or L_max <= 0 or L <= 0:
        return None
    step = minibatch_step(fam, L, L_max, bs, mu, pi_min)
    lr = step["lr"]
    mu_txt = (f", mu = {mu:.4g} (smallest curvature of the terms independent of `{b}`), pi_min = {pi_min:.4g} "
              f"(smallest probability that an item is in the minibatch)") if fam == "saga" else ""
    note = (f"{RULES[fam]} = {lr:.4g}, {CITES[fam]}, with the expected smoothness of b = {bs} items drawn with "
            f"replacement L(b) = (1 - 1/b) L + L_max/b = {step['L_b']:.4g} and rho(b) = L_max/b = "
            f"{step['rho_b']:.4g}{mu_txt}; L = {L:.4g} (smoothness of the whole mean: lambda_max(|c|/n sum_i "
            f"sup|phi''| x_i x_i^T), exact up to {DENSE_MAX} params, else power iteration; + L_reg), {which}; "
            f"`{b}` is a generalised linear model in the margin {render(gf.glm.margin)}: "
            f"L_i = |c| sup|phi''| ||x_i||^2 + L_reg with |c| = {float(sm['c']):.4g}, "
            f"sup|phi''| = {float(sm['phi2'].max()):.4g} ({SUP_TEXT}), "
            f"max_i ||x_i||^2 = {float(sm['sqnorm'].max()):.4g}, L_reg = {float(sm['L_reg']):.4g} "
            f"(curvature of the terms independent of `{b}`, power iteration at the initial point)")
    detail = {"rule": RULES[fam], "family": fam, "binder": b, "batch": bs, "L": L, "L_max": L_max,
              "L_b": step["L_b"], "rho_b": step["rho_b"], "mu": mu, "pi_min": pi_min,
              "L_loss": float(sm["L_loss"]), "L_items_max": float(L_items.max()),
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
    return (f"{RULES[c.family]} ({CITES[c.family]}), b = {c.sampler.batch}, L(b) = (1 - 1/b) L + L_max/b the expected "
            f"smoothness of the minibatch (drawn with replacement), rho(b) = L_max/b; L = smoothness of the whole "
            f"mean, L_max = max_i L_i"
            + ("/(n p_i) (importance sampling)" if is_importance(c.sampler) else "")
            + f" from the per-item Lipschitz constants of the GLM `{b}`: L_i = |c| sup|phi''| ||x_i||^2 + L_reg, "
            f"{SUP_TEXT}")
