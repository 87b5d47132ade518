"""The driver: one function runs the stages in order (as stanc3's driver does).

``source -> parse -> AST -> check -> IR -> transforms -> JAX -> solve loop``.
:func:`compile` runs everything up to the transformed program; :class:`Program`
binds data, lowers to JAX (cached per data shape, so a second solve on same-shaped
data reuses the compiled loop) and runs the solve.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vrlang import data as D
from vrlang.data_cache import DataCache
from vrlang.backend.constraints import default_init, unconstrain
from vrlang.backend import structured
from vrlang.backend.lower import Env, Interpreter, binder_salt
from vrlang.check import bias
from vrlang.check.checker import check
from vrlang.check.program import CheckedProgram
from vrlang.errors import VrDataError, VrError, VrEstimatorError, VrTypeError, VrWarning
from vrlang.estimators.base import CompiledObjective
from vrlang.estimators import inner_cost
from vrlang.estimators.binder_state import StatefulGradient
from vrlang.estimators.finite_sum import (FullGradient, LSVRGGLMGradient, LSVRGGradient, MinibatchGradient,
                                          PAGEGradient, SAGAGLMGradient, SAGAGradient, SARAHGradient, SPIDERGradient,
                                          STORMGradient, SVRGGLMGradient, SVRGGradient, GLMControl)
from vrlang.estimators.sampling import FixedIndexSampler, UniformSampler, bind_samplers
from vrlang.estimators.spec import Spec, to_spec
from vrlang.ir import nodes as N
from vrlang.solvers import loop
from vrlang.solvers.spec import SolverConfig, solver_config
from vrlang.solvers.status import Status
from vrlang.syntax import ast, parse_program, parse_spec
from vrlang.transforms import EstimatorChoice, choose, default
from vrlang.transforms.finite_sum import resolve as resolve_finite_sums
from vrlang.transforms.control_variate import resolve as resolve_control_variates
from vrlang.transforms.bilevel import check_decisions, check_solver
from vrlang.trainable import attach as attach_trainable

DEFAULT_SOLVER = "sgd(lr = auto, epochs = 100)"


# ------------------------------------------------------------------------- results


@dataclass
class Result:
    """The outcome of :meth:`Program.solve`."""

    params: dict[str, np.ndarray]
    history: dict[str, np.ndarray]
    status: str
    message: str
    epochs: int
    steps: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def objective(self) -> float:
        return float(self.history["objective"][-1])

    def summary(self) -> str:
        h = self.history
        lines = [f"status     {self.status}: {self.message}",
                 f"objective  {h['objective'][-1]:.10g}",
                 f"grad norm  {h['grad_norm'][-1]:.3e}",
                 f"epochs     {self.epochs}   steps {self.steps}   grad evals {int(h['grad_evals'][-1])}",
                 f"time       {h['time'][-1]:.3f} s"]
        for k, v in h.items():
            if k not in ("objective", "grad_norm", "grad_evals", "time", "epoch"):
                lines.append(f"{k:<10} {v[-1]:.6g}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"status": self.status, "message": self.message, "epochs": self.epochs, "steps": self.steps,
                "objective": self.objective, "info": self.info,
                "history": {k: [float(x) if np.isfinite(x) else None for x in v] for k, v in self.history.items()},
                "params": {k: np.asarray(v).tolist() for k, v in self.params.items()}}


class _ReportFn:
    """Evaluates every `report` expression; a stable callable (static under jit)."""

    def __init__(self, names, nodes, dims, interp, plans=None):
        self.names, self.nodes, self.dims, self.interp = tuple(names), tuple(nodes), dims, interp
        self.plans = plans or {}  # expectation and decision-binder plans (a report may use a `let` argmin)

    def __call__(self, params, data, consts, key):
        env = Env(params, data, consts, self.dims, plans=self.plans)
        return jnp.stack([jnp.asarray(self.interp(n, env), jnp.result_type(float)) for n in self.nodes])


# ------------------------------------------------------------------------- program


class Program:
    """A compiled vrlang program (see LANGUAGE.md §6)."""

    def __init__(self, cp: CheckedProgram, choices: dict[str, EstimatorChoice], solver: SolverConfig,
                 externs: Mapping[str, Callable], consts: dict[str, np.ndarray], x64: bool,
                 warnings: list[VrWarning], ast_program: ast.Program, trainables: Mapping | None = None):
        self.checked = cp
        self.trainables = dict(trainables or {})  # externs whose weights are params (vrlang.trainable)
        self.choices = choices
        self.solver = solver
        self.externs = dict(externs)
        self.consts = consts
        self.x64 = x64
        self.warnings = warnings
        self.ast = ast_program
        self.trace_counter = [0]
        self._interp = Interpreter(self.externs, self.trace_counter)
        self._lowered: dict = {}
        self._data_cache = DataCache()

    # ---- precision
    def _precision(self):
        return jax.enable_x64(True) if self.x64 else contextlib.nullcontext()

    @property
    def float_dtype(self):
        return np.float64 if self.x64 else np.float32

    # ---- binding data
    def _bind(self, data: Mapping | None, consts: Mapping | None = None):
        dims, jdata = self._bind_data(data)
        key = tuple(sorted(dims.items()))
        if key not in self._lowered:
            self._lowered[key] = self._lower(dims)
        fns = self._lowered[key]
        fdt = self.float_dtype
        jconsts = {k: jnp.asarray(v, fdt if self.checked.consts[k].type.base == "real" else np.int32)
                   for k, v in self._merge_consts(consts).items()}
        return dims, fns, jdata, jconsts

    def _bind_data(self, data: Mapping | None) -> tuple[dict[str, int], dict]:
        """``(dims, device arrays)``: validated and converted once, in the program's float type, then
        reused while the same array objects (or unchanged ``from`` files) come again (:mod:`vrlang.data_cache`)."""
        base = Path(self.checked.file).parent if self.checked.file and not self.checked.file.startswith("<") \
            else Path.cwd()
        ck = self._data_cache.key(self.checked.data, data, base)
        hit = self._data_cache.get(ck, data)
        if hit is not None:
            return hit
        arrays, dims = D.validate(self.checked, D.gather(self.checked, data), self.float_dtype)
        out = dims, {k: jnp.asarray(v) for k, v in arrays.items()}
        self._data_cache.put(ck, data, out)
        return out

    def clear_data_cache(self) -> None:
        """Forget the bound data: the next call validates and converts its data again (after editing an
        array in place; see :mod:`vrlang.data_cache` for what is detected without it)."""
        self._data_cache.clear()

    def _merge_consts(self, overrides: Mapping | None) -> dict[str, np.ndarray]:
        return _merge_consts(self.checked, self.consts, overrides)

    def _lower(self, dims: dict[str, int]) -> dict:
        cp, interp = self.checked, self._interp
        samplers = {b: c.sampler for b, c in self.choices.items() if c.sampler is not None}
        plans = {b: c.plan for b, c in self.choices.items() if c.plan is not None}
        root = cp.objective

        def objective(params, data, consts, key):
            # importance samplers come bound to the data (their probabilities are traced arrays)
            return interp(root, Env(params, data, consts, dims, key, bind_samplers(samplers, data), plans=plans))

        objective_state = None
        if any(getattr(p, "stateful", False) for p in plans.values()):
            def objective_state(params, data, consts, key, memory):
                env = Env(params, data, consts, dims, key, bind_samplers(samplers, data), plans=plans,
                          memory=memory, collect={})
                return interp(root, env), env.collect

        sizes = {}
        for b, info in cp.binders.items():
            if info.kind == "index":
                node = info.nodes[0]
                sizes[b] = _size(node.hi, dims) - _size(node.lo, dims)
        exact_evals = max(1, _count(root, sizes, {}))
        eff = {b: (c.sampler.batch if c.sampler is not None else sizes.get(b, 1)) for b, c in self.choices.items()}
        eff = {**sizes, **{b: v for b, v in eff.items() if b in sizes}}
        sampled_evals = max(1, _count(root, eff, {}))
        # grad_evals per step with decision binders: once per home item, with static inner iterations
        step_evals = ((inner_cost.step_evaluations(root, sizes, self.choices),
                       inner_cost.step_evaluations(root, eff, self.choices))
                      if any(isinstance(n, N.Decision) for n in N.walk(root)) else None)
        reports = _ReportFn(cp.reports.keys(), cp.reports.values(), dims, interp, plans) if cp.reports else None
        # SPIDER's restart: each sampled sum with a `large_batch` drawn at that size, the others exact
        large = {b: c.sampler.with_batch(c.options["large_batch"]) for b, c in self.choices.items()
                 if c.sampler is not None and c.options.get("large_batch")}
        large_objective, large_evals = None, None
        if large:
            def large_objective(params, data, consts, key):
                drawn = bind_samplers(large, data, {b: s.batch for b, s in large.items()})
                return interp(root, Env(params, data, consts, dims, key, drawn, plans=plans))

            large_evals = max(1, _count(root, {**sizes, **{b: s.batch for b, s in large.items()}}, {}))
        # SAGA's per-item functions: the (single) sampled sum's minibatch fixed to given indices
        objective_at = None
        if len(samplers) == 1:
            (sb,) = samplers

            def objective_at(params, data, consts, idx):
                env = Env(params, data, consts, dims, jax.random.PRNGKey(0), {sb: FixedIndexSampler(idx)}, plans=plans)
                return interp(root, env)

        node_sizes = {b: {_size(nd.hi, dims) - _size(nd.lo, dims) for nd in info.nodes}
                      for b, info in cp.binders.items() if info.kind == "index"}
        return {"objective": objective, "reports": reports, "exact_evals": exact_evals,
                "sampled_evals": sampled_evals, "sizes": sizes, "large_objective": large_objective,
                "large_evals": large_evals, "objective_at": objective_at, "node_sizes": node_sizes,
                "dims": dims, "structured": structured.lower(cp, self.choices, dims, interp),
                "objective_state": objective_state, "step_evals": step_evals}

    def _objective_module(self, fns, jdata, jconsts) -> CompiledObjective:
        # importance sampling: the weights are evaluated on the data once, here (E430 when unusable)
        jdata = structured.bind_sampling(self.choices, fns["structured"], jdata, jconsts,
                                         self._init_params(fns["dims"]))
        return CompiledObjective(jdata, jconsts, fns["objective"], fns["exact_evals"], fns.get("objective_at"),
                                 fns.get("objective_state"))

    def _estimator(self, fns, obj: CompiledObjective):
        families = {c.family for c in self.choices.values() if c.kind == "index"} - {"full"}
        stateful = obj.fn_state is not None  # warm starts: threaded through the full and sgd families
        # grad_evals per step of the full/sgd families (decision binders: vrlang.estimators.inner_cost)
        exact_step, sampled_step = fns.get("step_evals") or (float(fns["exact_evals"]), float(fns["sampled_evals"]))
        if not families:
            if any(_stochastic(c) for c in self.choices.values()):  # sampled expectations: a fresh key per step
                if stateful:
                    return StatefulGradient(obj, exact_step, 1)
                return MinibatchGradient(obj, exact_step, 1)
            if stateful:
                return StatefulGradient(obj, exact_step, 1, exact=True)
            return FullGradient(obj, exact_step, 1)
        spe = max(1, math.ceil(fns["exact_evals"] / fns["sampled_evals"]))
        needs = [b for b, c in self.choices.items() if getattr(c.plan, "requires_state", False)]
        if needs and families != {"sgd"}:
            c = self.choices[needs[0]]
            raise VrEstimatorError("E398", f"`{c.spec}` on `{needs[0]}` keeps state between steps, which this version "
                                   f"threads through the full and sgd estimators only (here: "
                                   f"{', '.join(sorted(families))})", c.spec.span,
                                   "estimate the sums around it by sgd or full, or use baseline = loo")
        if families == {"sgd"}:
            if stateful:
                return StatefulGradient(obj, sampled_step, spe)
            return MinibatchGradient(obj, sampled_step, spe)
        if families == {"svrg"}:
            epochs = {c.options.get("epoch") for c in self.choices.values() if c.family == "svrg"}
            if len(epochs) > 1:
                raise VrEstimatorError("E393", "`epoch` of `svrg` differs between the binders estimated by svrg",
                                       None, "give every binder estimated by svrg the same `epoch`")
            m = epochs.pop() or spe  # the snapshot period; an epoch of the history stays ceil(n / b) steps
            evals = 2.0 * fns["sampled_evals"] + fns["exact_evals"] / m
            glm = self._glm_control(fns, obj)
            if glm is not None:  # GLM body: one draw, scalar derivatives
                return SVRGGLMGradient(glm, m, evals, spe)
            return SVRGGradient(obj, m, evals, spe)
        if len(families) == 1 and families <= _VR_FAMILIES:
            return self._vr_estimator(next(iter(families)), fns, obj)
        names = ", ".join(f"{c.spec.name} on `{b}`" for b, c in self.choices.items() if c.family != "full")
        raise VrEstimatorError("E393", f"combining {names} is not supported yet in this version", None,
                               "use one variance-reduction method for all sampled sums, or sgd for all")

    def _vr_estimator(self, family: str, fns, obj: CompiledObjective):
        """L-SVRG, SAGA, SARAH, SPIDER, PAGE, STORM: resolve the size-dependent defaults and build."""
        chosen = {b: c for b, c in self.choices.items() if c.family == family}
        s, n_all = fns["sampled_evals"], fns["exact_evals"]
        spe = max(1, math.ceil(n_all / s))
        fdt = self.float_dtype

        def option(key):
            vals = {c.options.get(key) for c in chosen.values()}
            if len(vals) > 1:
                raise VrEstimatorError("E393", f"`{key}` of `{family}` differs between the binders "
                                       f"{', '.join(f'`{b}`' for b in chosen)}", None,
                                       f"give every binder estimated by {family} the same `{key}`")
            return vals.pop()

        if family == "lsvrg":
            p = option("p") or 1.0 / spe
            glm = self._glm_control(fns, obj)
            if glm is not None:  # GLM body: one draw, scalar derivatives
                return LSVRGGLMGradient(glm, jnp.asarray(p, fdt), s, n_all, spe)
            return LSVRGGradient(obj, jnp.asarray(p, fdt), s, n_all, spe)
        if family == "saga":
            sampled = [b for b, c in self.choices.items() if c.sampler is not None]
            if len(sampled) != 1 or obj.fn_at is None:
                raise VrEstimatorError("E394", "saga with more than one sampled sum is not supported yet "
                                       f"(sampled: {', '.join(f'`{b}`' for b in sampled)})", None,
                                       "estimate one binder by saga and the others by full, or use svrg/lsvrg")
            (b,) = sampled
            if len(fns["node_sizes"][b]) != 1:
                raise VrEstimatorError("E394", f"saga on `{b}`: its sums have different sizes "
                                       f"{sorted(fns['node_sizes'][b])}; not supported yet", None,
                                       "use svrg or lsvrg")
            (n,) = fns["node_sizes"][b]
            sampler = bind_samplers({b: self.choices[b].sampler}, obj.data)[b]
            glm = fns["structured"]["glm"].get(b) if self.choices[b].options.get("glm_table") else None
            if glm is not None:  # GLM body: one scalar per item
                return SAGAGLMGradient(obj, n, sampler.batch, float(s), spe, glm.margin, glm.frozen, sampler)
            return SAGAGradient(obj, n, sampler.batch, float(s), spe, sampler=sampler)
        if family == "sarah":
            m = option("epoch") or spe
            return SARAHGradient(obj, m, (2.0 * s * (m - 1) + n_all) / m, spe)
        if family == "spider":
            large = None
            restart = n_all
            if fns["large_objective"] is not None:
                large = CompiledObjective(obj.data, obj.consts, fns["large_objective"], fns["large_evals"])
                restart = fns["large_evals"]
            q = option("period") or max(1, math.ceil(restart / s))
            return SPIDERGradient(obj, large, q, (2.0 * s * (q - 1) + restart) / q, spe)
        if family == "page":
            p = option("p") or s / (s + n_all)
            return PAGEGradient(obj, jnp.asarray(p, fdt), s, n_all, spe)
        if family == "storm":
            return STORMGradient(obj, jnp.asarray(option("a"), fdt), 2.0 * s, spe)
        raise AssertionError(family)  # pragma: no cover

    def _glm_control(self, fns, obj: CompiledObjective):
        """SVRG/L-SVRG on a GLM body (``glm_svrg``, set by ``resolve``): the scalar-derivative step, or None."""
        sampled = [b for b, c in self.choices.items() if c.sampler is not None]
        if len(sampled) != 1 or not self.choices[sampled[0]].options.get("glm_svrg"):
            return None
        (b,) = sampled
        gf = fns["structured"]["glm"].get(b)
        if gf is None or len(fns["node_sizes"][b]) != 1:
            return None
        sampler = bind_samplers({b: self.choices[b].sampler}, obj.data)[b]
        return GLMControl(obj, gf.n, gf.margin, gf.frozen, sampler, binder_salt(b))

    # ---- public API
    def gradient_estimator(self, data: Mapping | None = None, consts: Mapping | None = None):
        """The compiled gradient estimator on its own: ``init(params, key)``, ``estimate(params, state, key)``."""
        with self._precision():
            _, fns, jdata, jconsts = self._bind(data, consts)
            return _KeyedEstimator(self._estimator(fns, self._objective_module(fns, jdata, jconsts)), self.x64)

    def estimator_variance(self, data: Mapping | None = None, params: Mapping | None = None, draws: int = 1000,
                           key: int = 0, alternatives: bool = True, *, consts: Mapping | None = None,
                           extra: Mapping[str, list] | None = None, binders: list | None = None):
        """Empirical variance of the gradient estimate, per random/sampled binder, for the chosen estimator
        and the alternatives that apply (``extra``: more specs per binder); see :mod:`vrlang.variance`."""
        from vrlang.variance import estimator_variance
        return estimator_variance(self, data, params, draws, key, alternatives, consts=consts, extra=extra,
                                  binders=binders)

    def objective(self, params: Mapping, data: Mapping | None = None, consts: Mapping | None = None) -> float:
        """The exact objective at ``params`` (every sum exact)."""
        with self._precision():
            _, fns, jdata, jconsts = self._bind(data, consts)
            p = self._check_params(params)
            if "value_jit" not in fns:
                fns["value_jit"] = jax.jit(lambda q, d, c: fns["objective"](q, d, c, None))
            return float(fns["value_jit"](p, jdata, jconsts))

    def grad(self, params: Mapping, data: Mapping | None = None, consts: Mapping | None = None) -> dict:
        """The exact gradient of the objective with respect to each param."""
        with self._precision():
            _, fns, jdata, jconsts = self._bind(data, consts)
            p = self._check_params(params)
            if "grad_jit" not in fns:
                fns["grad_jit"] = jax.jit(jax.grad(lambda q, d, c: fns["objective"](q, d, c, None)))
            g = fns["grad_jit"](p, jdata, jconsts)
            return {k: np.asarray(v) for k, v in g.items()}

    def init_params(self, data: Mapping | None = None) -> dict[str, np.ndarray]:
        """The declared initial values (defaults at the centre of each constraint set)."""
        with self._precision():
            dims, _ = self._bind_data(data)
        return self._init_params(dims)

    def _init_params(self, dims) -> dict[str, np.ndarray]:
        out = {}
        for name, p in self.checked.params.items():
            shape = tuple(_size(d, dims) for d in p.type.shape)
            v = default_init(p.constraint, p.bounds, shape) if p.init is None else np.broadcast_to(p.init, shape)
            out[name] = np.array(v, dtype=np.float64)
        return out

    def _check_params(self, params: Mapping) -> dict:
        want = set(self.checked.params)
        got = set(params)
        if got != want:
            missing, extra = sorted(want - got), sorted(got - want)
            raise VrDataError("E420", "params do not match the program: "
                              + (f"missing {', '.join(missing)}" if missing else "")
                              + ("; " if missing and extra else "") + (f"unknown {', '.join(extra)}" if extra else ""))
        return {k: jnp.asarray(v, self.float_dtype) for k, v in params.items()}

    def solve(self, data: Mapping | None = None, key: int | jax.Array = 0, consts: Mapping | None = None,
              params: Mapping | None = None, solver: str | None = None, verbose: bool = False,
              on_epoch: Callable | None = None) -> Result:
        """Run the solver; see LANGUAGE.md §5-6."""
        cfg = self.solver if solver is None else solver_config(_spec(solver, "solver"))
        check_solver(self.choices, cfg)
        if cfg.name == "lbfgs" and any(c.sampler is not None or _stochastic(c) for c in self.choices.values()):
            raise VrEstimatorError("E502", "lbfgs is deterministic: every finite sum must be estimated by `full` "
                                   "and every expectation by `enum`",
                                   cfg.spec.span, "use sgd/adam with sampled estimators, or estimate ... by full")
        with self._precision():
            dims, fns, jdata, jconsts = self._bind(data, consts)
            obj = self._objective_module(fns, jdata, jconsts)
            est = self._estimator(fns, obj)
            reps = CompiledObjective(jdata, jconsts, fns["reports"]) if fns["reports"] else None
            cons = tuple((n, p.constraint, p.bounds) for n, p in self.checked.params.items() if p.constraint)
            sign = 1.0 if self.checked.sense == "minimize" else -1.0
            problem = loop.SolveProblem(est, obj, reps, cons, sign)
            p0 = self._init_params(dims)
            if params is not None:
                p0.update({k: np.asarray(v, np.float64) for k, v in self._check_params({**p0, **params}).items()})
            u0 = {n: jnp.asarray(unconstrain(self.checked.params[n].constraint, self.checked.params[n].bounds, v),
                                 self.float_dtype) for n, v in p0.items()}
            info = {"solver": str(cfg.spec), "estimators": {b: str(c.spec) for b, c in self.choices.items()}}
            lr = cfg.lr
            if lr == "auto" or lr is None:
                glm_lr = structured.glm_auto_lr(self, cfg, fns, obj, p0)  # SAGA/SVRG/L-SVRG on a GLM: the minibatch step
                if glm_lr is not None:
                    lr, note, info["lr_auto_detail"] = glm_lr
                else:
                    lr, note = _auto_lr(cfg, problem, u0, est)
                info["lr_auto"] = note
            info["lr"] = float(lr) if lr is not None else None
            max_epochs = cfg.epochs if cfg.epochs is not None else math.ceil(cfg.steps / est.steps_per_epoch)
            if cfg.steps is not None and cfg.epochs is not None:
                max_epochs = min(cfg.epochs, math.ceil(cfg.steps / est.steps_per_epoch))
            # history rows, rounded up to a power of two (fewer recompiles), at most 2^16
            capacity = 1 << min(16, max(4, int(max_epochs).bit_length()))
            fdt = self.float_dtype
            limits = {"epochs": jnp.asarray(max_epochs, jnp.int32),
                      "steps": jnp.asarray(cfg.steps if cfg.steps is not None else np.iinfo(np.int32).max, jnp.int32),
                      "tol": jnp.asarray(cfg.tol if cfg.tol is not None else -1.0, fdt),
                      "time": jnp.asarray(cfg.time if cfg.time is not None else np.inf, jnp.float32)}
            hyper = {k: jnp.asarray(v, fdt) for k, v in cfg.hyper().items()}
            k = jax.random.PRNGKey(key) if isinstance(key, (int, np.integer)) else key
            cb = on_epoch
            if verbose and cb is None:
                cb = _print_epoch
            out = loop.run(problem, u0, k, lr if lr is not None else 0.0, hyper, limits, solver=cfg.name,
                           memory=cfg.memory, capacity=capacity, on_epoch=cb)
            u = {n: jnp.asarray(v) for n, v in out["u"].items()}
            final = {n: np.asarray(v) for n, v in jax.device_get(problem.to_params(u)).items()}
        nrec = int(out["records"])
        h = np.asarray(out["history"])[:nrec]
        history = {"epoch": np.arange(nrec), "objective": h[:, 0], "grad_norm": h[:, 1], "grad_evals": h[:, 2],
                   "time": h[:, 3]}
        for j, name in enumerate(self.checked.reports):
            history[name] = h[:, 4 + j]
        status = Status(int(out["status"]))
        return Result(final, history, status.label, status.message(cfg.tol), int(out["epochs"]), int(out["steps"]), info)

    def module(self, name: str, params: Mapping):
        """The equinox module of the trainable extern ``name`` with the weights in ``params`` (e.g. ``res.params``)."""
        if name not in self.trainables:
            raise KeyError(f"`{name}` is not a trainable extern of this program (trainable: "
                           f"{', '.join(self.trainables) or 'none'}; wrap the module with vrlang.trainable)")
        return self.trainables[name].bind(params, name)

    def explain(self, stage: str | None = None) -> str:
        from vrlang.explain import explain
        return explain(self, stage)


_VR_FAMILIES = frozenset({"lsvrg", "saga", "sarah", "spider", "page", "storm"})


class _KeyedEstimator:
    """Wraps a runtime estimator so that keys may be given as ints, as LANGUAGE.md §6 shows."""

    def __init__(self, est, x64):
        self.module, self.x64 = est, x64
        self.unbiased = est.unbiased
        self.steps_per_epoch, self.evals_per_step = est.steps_per_epoch, est.evals_per_step

    def _ctx(self):
        return jax.enable_x64(True) if self.x64 else contextlib.nullcontext()

    def _key(self, key):
        return jax.random.PRNGKey(key) if isinstance(key, (int, np.integer)) else key

    def _params(self, params):
        fdt = jnp.float64 if self.x64 else jnp.float32
        return {k: jnp.asarray(v, fdt) for k, v in params.items()}

    def init(self, params, key=0):
        with self._ctx():
            return _jit_init(self.module, self._params(params), self._key(key))

    def estimate(self, params, state, key):
        with self._ctx():
            return _jit_estimate(self.module, self._params(params), state, self._key(key))


@jax.jit
def _jit_estimate(module, params, state, key):
    return module.estimate(params, state, key)


@jax.jit
def _jit_init(module, params, key):  # an init may solve inner problems (binder state): compiled, not op by op
    return module.init(params, key)


def _print_epoch(epoch, obj, gnorm, t):
    print(f"epoch {epoch:5d}  objective {obj: .8e}  grad norm {gnorm:.3e}  time {t:7.3f}s", flush=True)


def _size(d, dims) -> int:
    return d if isinstance(d, int) else dims[d]


def _count(node: N.Node, sizes: dict, memo: dict) -> int:
    """Component evaluations of one evaluation of ``node`` (products along nested sums)."""
    if id(node) in memo:
        return 0  # a shared `let` is evaluated once
    memo[id(node)] = True
    if isinstance(node, N.Sum):
        return sizes.get(node.binder, 1) * max(1, _count(node.body, sizes, memo))
    return sum(_count(c, sizes, memo) for c in node.children())


_AUTO_TRACES = [0]


def _auto_lr(cfg: SolverConfig, problem, u0, est) -> tuple[float | None, str]:
    if cfg.name == "lbfgs":
        return None, "lbfgs uses a zoom line search (no step size)"
    if cfg.name == "adam":
        return 1e-2, "adam: lr = auto is 0.01 (no smoothness-based rule for Adam)"
    L = float(_power_iteration(problem, u0))
    if not np.isfinite(L) or L <= 0:
        return 1e-3, f"power iteration gave L = {L:.3g}; falling back to lr = 0.001"
    if isinstance(est, FullGradient):
        return 1.0 / L, f"1/L with L = {L:.4g} (power iteration on the Hessian at the initial point)"
    return 1.0 / (4.0 * L), (f"1/(4L) with L = {L:.4g} (power iteration on the full Hessian at the initial point; "
                             "the factor 4 is a safety margin for minibatch noise)")


@jax.jit
def _power_iteration(problem, u0):
    _AUTO_TRACES[0] += 1
    f = problem.solver_objective
    leaves, tdef = jax.tree_util.tree_flatten(u0)
    # a random start (fixed key): an all-ones start can be nearly orthogonal to the top eigenvector
    keys = jax.random.split(jax.random.PRNGKey(20261126), max(len(leaves), 1))
    v = jax.tree_util.tree_unflatten(tdef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])

    def hvp(v):
        return jax.jvp(jax.grad(f), (u0,), (v,))[1]

    def norm(t):
        return jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(t)))

    def body(_, carry):
        v, lam = carry
        v = jax.tree_util.tree_map(lambda x: x / jnp.maximum(norm(v), 1e-30), v)
        hv = hvp(v)
        return hv, norm(hv)

    _, lam = jax.lax.fori_loop(0, 50, body, (v, jnp.zeros((), jnp.result_type(float))))
    return lam


# --------------------------------------------------------------------- compile()


def _spec(text: str, what: str) -> Spec:
    if isinstance(text, Spec):
        return text
    return to_spec(parse_spec(text, what))


def _merge_consts(cp: CheckedProgram, base: dict, overrides: Mapping | None) -> dict:
    out = dict(base)
    for k, v in (overrides or {}).items():
        decl = cp.consts.get(k)
        if decl is None:
            raise VrTypeError("E292", f"`{k}` is not a const of this program", None,
                              "consts: " + (", ".join(cp.consts) or "none"))
        try:
            a = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            raise VrTypeError("E293", f"const `{k}` must be a number or an array of numbers, got {v!r}") from None
        want = tuple(decl.type.shape)
        if a.shape != want:
            raise VrTypeError("E293", f"const `{k}` is {decl.type}, the value given has shape {a.shape}", decl.span)
        if decl.type.base == "int" and not np.all(a == np.round(a)):
            raise VrTypeError("E293", f"const `{k}` is int, got {v!r}", decl.span)
        if decl.baked_at is not None and not np.array_equal(a, decl.value):
            raise VrTypeError("E293", f"const `{k}` cannot be overridden: it is used at line {decl.baked_at.line} as a "
                              "range end, box bound, initial value or in another const, which are fixed when the "
                              "program is compiled", decl.span, "edit the program instead of overriding this const")
        out[k] = a
    return out


def _is_file(path: str) -> bool:
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def _read_source(src: str | os.PathLike) -> tuple[str, str | None]:
    if isinstance(src, os.PathLike):
        p = Path(src)
    elif isinstance(src, str) and "\n" not in src and src.strip().endswith(".vr") and (
            " " not in src.strip() or _is_file(src.strip())):  # a one-line program such as `minimize 1 # a.vr` is text
        p = Path(src.strip())
    else:
        return str(src), None
    try:
        if not p.is_file():
            raise VrDataError("E400", f"no such program file: {p}")
        return p.read_text(), str(p)
    except UnicodeDecodeError:
        raise VrDataError("E400", f"cannot read the program file {p}: it is not UTF-8 text") from None
    except OSError as err:  # e.g. a name too long for the file system, or no permission
        raise VrDataError("E400", f"cannot read the program file {p}: {err.strerror or err}") from None


def front_end(src: str | os.PathLike):
    """Stages parse and check: returns (source, file, AST, CheckedProgram)."""
    text, file = _read_source(src)
    prog = parse_program(text, file)
    return text, file, prog, check(prog)


def compile(src: str | os.PathLike, *, consts: Mapping | None = None, externs: Mapping | None = None,
            estimators: Mapping[str, str] | None = None, solver: str | None = None, x64: bool = False) -> Program:
    """Compile a vrlang program (a path to a ``.vr`` file or the source text itself)."""
    text, file, prog, cp = front_end(src)
    try:
        externs, trainables = attach_trainable(cp, externs)  # a trainable extern's weights become params
        for b, s in (estimators or {}).items():
            if b not in cp.binders:
                raise VrEstimatorError("E250", f"no binder named `{b}`", None,
                                       "binders: " + (", ".join(cp.binders) or "none"))
            cp.binders[b].spec = parse_spec(s, f"estimate {b}")
        if solver is not None:
            scfg = solver_config(_spec(solver, "solver"))
        elif cp.solver_spec is not None:
            scfg = solver_config(to_spec(cp.solver_spec))
        else:
            scfg = solver_config(_spec(DEFAULT_SOLVER, "solver"))
        choices = {}
        switched: list[VrWarning] = []
        sizes = _symbolic_sizes(cp)
        const_values = {k: c.value for k, c in cp.consts.items()}
        for b, info in cp.binders.items():
            spec = to_spec(info.spec) if info.spec is not None else default(info)
            choices[b] = choose(info, spec, sizes, const_values)
            if (solver is not None and scfg.name == "lbfgs" and info.kind == "index"
                    and b not in (estimators or {}) and choices[b].sampler is not None):
                # a deterministic solver asked for from outside the file: the file's minibatching gives way
                switched.append(VrWarning("W502", f"lbfgs is deterministic: `{b}` is estimated by full instead of "
                                          f"{spec} (from the program's `estimate` statement)", info.spec_span,
                                          f"pass estimators={{'{b}': ...}} / --estimate {b}=... to choose otherwise"))
                choices[b] = choose(info, Spec("full", {}), sizes, const_values)
        resolve_finite_sums(cp, prog, choices, sizes)  # weights(expr), GLM structure, lipschitz, SAGA's table
        cv_warnings = resolve_control_variates(cp, prog, choices)  # cv(g, mean, coef): typed; W303
        base_consts = {k: c.value for k, c in cp.consts.items()}
        merged = _merge_consts(cp, base_consts, consts)
        externs = dict(externs or {})
        for name, decl in cp.externs.items():
            if name not in externs:
                raise VrEstimatorError("E310", f"extern `{name}` was declared but not supplied", decl.span,
                                       f"pass externs={{'{name}': fn}} to vrlang.compile")
            if not callable(externs[name]):
                raise VrEstimatorError("E311", f"extern `{name}` must be callable, got {type(externs[name]).__name__}",
                                       decl.span)
        unknown_ext = sorted(set(externs) - set(cp.externs))
        if unknown_ext:
            raise VrEstimatorError("E312", f"extern `{unknown_ext[0]}` is not declared in the program", None,
                                   f"declare it: extern {unknown_ext[0]}(x: real) -> real")
        _refuse_unsupported(cp, choices)
        check_solver(choices, scfg)  # borep: normalised momentum
        sampled = {b for b, c in choices.items() if c.sampler is not None or _stochastic(c)}
        absorbing = {b for b, c in choices.items() if c.kind == "decision" and _takes_sampled_inner(c)}
        warnings = switched + cv_warnings + bias.analyse(cp.objective, sampled,
                                                         kinds={b: i.kind for b, i in cp.binders.items()},
                                                         absorbing=absorbing)
    except VrError as e:
        raise e.with_source(text, file)
    for w in warnings:
        if w.span is not None and w.span.source is None:
            VrError.with_source(w, text, file)  # same attribute layout
    return Program(cp, choices, scfg, externs, merged, x64, warnings, prog, trainables)


def _symbolic_sizes(cp: CheckedProgram) -> dict:
    out = {}
    for b, info in cp.binders.items():
        if info.kind == "index":
            node = info.nodes[0]
            out[b] = f"{node.hi}" if node.lo == 0 else f"{node.hi} - {node.lo}"
    return out


def _refuse_unsupported(cp: CheckedProgram, choices) -> None:
    saga = [b for b, c in choices.items() if c.family == "saga"]
    sampled = [b for b, c in choices.items() if c.sampler is not None]
    if saga and len(sampled) > 1:
        raise VrEstimatorError("E394", f"saga with more than one sampled sum is not supported yet "
                               f"(sampled: {', '.join(f'`{b}`' for b in sampled)})", choices[saga[0]].spec.span,
                               "estimate one binder by saga and the others by full, or use svrg/lsvrg")
    check_decisions(cp, choices)  # decision binders: stochastic inner problems (penalty only), binder state


def _takes_sampled_inner(choice: EstimatorChoice) -> bool:
    """A decision binder whose method handles minibatched sums in its inner problem (penalty, stocBiO, borep)."""
    from vrlang.estimators.borep import StochasticBoRep
    from vrlang.estimators.penalty import Penalty
    from vrlang.estimators.stochastic_implicit import StochasticImplicit
    return isinstance(choice.plan, (Penalty, StochasticImplicit, StochasticBoRep))


def _stochastic(choice: EstimatorChoice) -> bool:
    """An expectation estimated by sampling (not `enum`)."""
    from vrlang.estimators.expectation import EnumEstimate
    return choice.kind == "random" and choice.plan is not None and not isinstance(choice.plan, EnumEstimate)
