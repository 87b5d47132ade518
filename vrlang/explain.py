"""`explain`: the transformed program in words -- binders, estimators, bias, cost, solver.

``stage`` selects an intermediate form instead: ``ast`` (the parsed statements),
``ir`` (the typed IR of the objective and reports) or ``transformed`` (the default).
"""

from __future__ import annotations

from vrlang.ir.nodes import pretty
from vrlang.transforms import KIND_TEXT

STAGES = ("ast", "ir", "transformed")


def explain(program, stage: str | None = None) -> str:
    stage = stage or "transformed"
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    cp = program.checked
    if stage == "ast":
        return "\n".join(repr(s) for s in program.ast.statements)
    if stage == "ir":
        parts = [f"objective ({cp.sense}):", pretty(cp.objective, 1)]
        for name, node in cp.reports.items():
            parts += [f"report {name}:", pretty(node, 1)]
        return "\n".join(parts)
    out = [f"program {cp.file or '<source>'}", ""]
    out.append("data:")
    for d in cp.data.values():
        out.append(f"  {d.name}: {d.type}" + (f"  from {d.source}" if d.source else ""))
    if cp.consts:
        out.append("consts (overridable without recompiling):")
        for name, v in program.consts.items():
            out.append(f"  {name} = {v.tolist() if v.ndim else float(v):g}" if v.ndim == 0
                       else f"  {name} = {v.tolist()}")
    out.append("params:")
    for p in cp.params.values():
        c = "" if p.constraint is None else (f" in [{p.bounds[0]:g}, {p.bounds[1]:g}]" if p.constraint == "box"
                                             else f" in {p.constraint}")
        out.append(f"  {p.name}: {p.type}{c}")
    if not cp.params and cp.externs:
        out.append("  (none declared; the weights of externs passed as vrlang.trainable(module) are params too)")
    out.append(f"objective: {cp.sense} (scalar)")
    out.append("")
    out.append("binders:")
    if not program.choices:
        out.append("  (none: the objective is deterministic)")
    for b, c in program.choices.items():
        out.append(f"  {b}  [{KIND_TEXT[c.kind]}]")
        out.append(f"    estimator : {c.spec}")
        out.append(f"    unbiased  : {'yes' if c.unbiased else 'NO'}")
        out.append(f"    cost      : {c.cost}" + (" component gradients" if c.kind == "index" else ""))
        out.append(f"    memory    : {c.memory}")
        if c.note:
            out.append(f"    how       : {c.note}")
        st = c.options.get("structure") if c.kind == "index" and c.sampler is not None else None
        if st is not None:  # GLM detection (vrlang.check.structure): what SAGA's table and lr = auto use
            out.append(f"    structure : {st.describe() if st else 'not a generalised linear model: ' + st.reason}")
    s = program.solver
    out.append("")
    out.append(f"solver: {s.spec}")
    if s.name in ("sgd", "adam"):
        out.append(f"  lr       : {s.lr if s.lr != 'auto' else 'auto (resolved when data arrive; see Result.info)'}")
        from vrlang.backend.structured import explain_lr
        rule = explain_lr(program)
        if rule:
            out.append(f"  lr rule  : {rule}")
    stops = [f"{k} = {getattr(s, k)}" for k in ("epochs", "steps", "tol", "time") if getattr(s, k) is not None]
    out.append(f"  stopping : {', '.join(stops)} (first reached)")
    if cp.reports:
        out.append("reports: " + ", ".join(cp.reports))
    if program.warnings:
        out.append("")
        out.append("warnings:")
        for w in program.warnings:
            out.append("  " + w.render().replace("\n", "\n  "))
    return "\n".join(out)
