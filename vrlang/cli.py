"""The `vrlang` command line (LANGUAGE.md §7).

::

    vrlang run FILE [--data F.npz] [--set NAME=VALUE]... [--estimate BINDER=SPEC]...
                    [--solve SPEC] [--seed N] [--out DIR] [--x64] [--quiet]
    vrlang check FILE     # parse + type/shape + estimator checks; exit 1 with diagnostics
    vrlang explain FILE [--stage ast|ir|transformed]
    vrlang variance FILE [--data F.npz] [--params F.npz] [--draws N] [--alt BINDER=SPEC]... [--json]
    vrlang repl [FILE]

Exit codes: 0 success (``converged``, ``max_steps``, ``time_limit``); 1 a user's mistake
(a :class:`vrlang.VrError`, rendered with its caret, never a traceback); 2 bad usage of
the command line; 3 the solve diverged (the outputs are still written); 130 interrupted.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

_NAME = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$", re.S)


# ----------------------------------------------------------------- option values


def parse_value(text: str):
    """A const value from the command line: a number, or comma-separated numbers (never eval'd)."""
    s = text.strip()
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1]
    try:
        if "," in s:
            v = np.array([float(p) for p in s.split(",")], dtype=np.float64)
        else:
            v = float(s)
    except ValueError:
        raise ValueError(f"`{text}` is not a number or a comma-separated list of numbers") from None
    if not np.all(np.isfinite(v)):
        raise ValueError(f"`{text}` is not finite")
    return v


def parse_setting(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` for ``--set`` (argparse type)."""
    m = _NAME.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got `{text}`")
    try:
        return m.group(1), parse_value(m.group(2))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{m.group(1)}: {e}") from None


def parse_estimate(text: str) -> tuple[str, str]:
    """``BINDER=SPEC`` for ``--estimate`` (argparse type); the spec itself is checked by the compiler."""
    m = _NAME.match(text)
    if not m or not m.group(2).strip():
        raise argparse.ArgumentTypeError(f"expected BINDER=SPEC (e.g. i=saga(batch = 8)), got `{text}`")
    return m.group(1), m.group(2).strip()


def _draws(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got `{text}`") from None
    if n < 4:
        raise argparse.ArgumentTypeError(f"at least 4 draws are needed, got {n}")
    return n


# ---------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    import vrlang

    p = argparse.ArgumentParser(prog="vrlang", description="vrlang: stochastic optimisation programs compiled to JAX.")
    p.add_argument("--version", action="version", version=f"vrlang {vrlang.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def compile_options(sp):
        sp.add_argument("--set", dest="consts", metavar="NAME=VALUE", action="append", type=parse_setting,
                        default=[], help="override a const (a number, or comma-separated numbers)")
        sp.add_argument("--estimate", dest="estimators", metavar="BINDER=SPEC", action="append", type=parse_estimate,
                        default=[], help="estimator of a binder, e.g. i=saga(batch = 8)")
        sp.add_argument("--solve", dest="solver", metavar="SPEC", help="the solver, e.g. 'adam(lr = 0.1, steps = 100)'")
        sp.add_argument("--x64", action="store_true", help="compute in float64")

    r = sub.add_parser("run", help="compile and solve a program; write result.json, params.npz, convergence.png",
                       description="Compile and solve a program, show progress and a summary, and write "
                                   "result.json, params.npz and convergence.png into --out.")
    r.add_argument("file", metavar="FILE")
    r.add_argument("--data", metavar="F.npz", help="an .npz whose keys are data names (default: the `from` sources)")
    compile_options(r)
    r.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    r.add_argument("--out", metavar="DIR", help="output folder (default out/<stem of FILE>)")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress and no table: one line of result")

    c = sub.add_parser("check", help="parse, type/shape and estimator checks (exit 1 with diagnostics)")
    c.add_argument("file", metavar="FILE")
    compile_options(c)

    e = sub.add_parser("explain", help="show the program at a stage: binders, estimators, bias, costs")
    e.add_argument("file", metavar="FILE")
    e.add_argument("--stage", choices=("ast", "ir", "transformed"), default="transformed")
    compile_options(e)

    v = sub.add_parser("variance", help="empirical variance of the gradient estimate, per binder and estimator",
                       description="Measure, at the params, the variance of the gradient estimate for each random "
                                   "or sampled binder, with its estimator and the alternatives that apply "
                                   "(skipped ones with the reason), their cost and time per estimate.")
    v.add_argument("file", metavar="FILE")
    v.add_argument("--data", metavar="F.npz", help="an .npz whose keys are data names (default: the `from` sources)")
    v.add_argument("--params", metavar="F.npz", help="the params to measure at (e.g. a run's params.npz; "
                                                     "default: the declared initial values)")
    compile_options(v)
    v.add_argument("--draws", type=_draws, default=1000, metavar="N", help="gradient estimates per estimator "
                   "(default 1000; rounded up to whole chunks)")
    v.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    v.add_argument("--alt", dest="alts", metavar="BINDER=SPEC", action="append", type=parse_estimate, default=[],
                   help="an extra estimator to compare for a binder, e.g. "
                        "'z=importance(proposal = Normal(0, 2), samples = 4)'")
    v.add_argument("--no-alternatives", dest="alternatives", action="store_false",
                   help="measure the program's own estimators only")
    v.add_argument("--binder", dest="binders", metavar="BINDER", action="append", default=None,
                   help="only this binder (repeatable)")
    v.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")

    rp = sub.add_parser("repl", help="interactive exploration (:help inside)")
    rp.add_argument("file", metavar="FILE", nargs="?")
    return p


# --------------------------------------------------------------------- helpers


def _err(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def _console():
    from rich.console import Console

    return Console(file=sys.stdout, highlight=False)


def print_warnings(prog) -> None:
    for w in prog.warnings:
        _err(w.render())


def _compile(args, stub_externs: bool = False):
    import vrlang

    externs = None
    if stub_externs:  # check/explain: externs are Python functions the command line cannot supply
        from vrlang.program import front_end

        externs = {name: _unsupplied(name) for name in front_end(args.file)[3].externs}
    prog = vrlang.compile(args.file, consts=dict(args.consts) or None, estimators=dict(args.estimators) or None,
                          solver=args.solver, x64=args.x64, externs=externs)
    print_warnings(prog)
    return prog


def _unsupplied(name: str):
    def fn(*_):
        from vrlang.errors import VrEstimatorError
        raise VrEstimatorError("E310", f"extern `{name}` is not supplied on the command line",
                               None, f"pass externs={{'{name}': fn}} to vrlang.compile")
    return fn


def _load_data(prog, path: str | None):
    if path is None:
        return None
    from vrlang.data import load_npz

    arrays = load_npz(path)
    declared = set(prog.checked.data)
    known = {k: v for k, v in arrays.items() if k in declared}
    if not known:
        return arrays  # nothing matches: let the compiler name the first unknown array (E405)
    extra = sorted(set(arrays) - declared)
    if extra:
        _err(f"note: ignoring arrays of {path} that the program does not declare: {', '.join(extra)}")
    return known


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def counts(prog) -> str:
    """``N params, M binders``."""
    return f"{_plural(len(prog.checked.params), 'param')}, {_plural(len(prog.checked.binders), 'binder')}"


def _settings(args, argv) -> dict:
    return {"argv": list(argv) if argv is not None else sys.argv[1:], "data": args.data,
            "consts": {k: np.asarray(v).tolist() for k, v in args.consts},
            "estimators": dict(args.estimators), "solver": args.solver, "seed": args.seed, "x64": args.x64}


def solve_with_progress(prog, console, *, quiet: bool = False, **solve_kw):
    """``prog.solve`` with a progress bar (live on a terminal, plain lines otherwise)."""
    from vrlang.report import EpochProgress

    total = prog.solver.epochs
    if solve_kw.get("solver") is not None:
        from vrlang.program import _spec
        from vrlang.solvers.spec import solver_config

        total = solver_config(_spec(solve_kw["solver"], "solver")).epochs
    with EpochProgress(total, console, enabled=not quiet) as bar:
        res = prog.solve(on_epoch=bar, **solve_kw)
        bar.finish(res.history)
    return res


# -------------------------------------------------------------------- commands


def cmd_run(args, argv) -> int:
    from vrlang.report import summary_table, write_outputs

    prog = _compile(args)
    data = _load_data(prog, args.data)
    console = _console()
    if not args.quiet:
        console.print(f"solving {args.file}: {prog.solver.spec}", highlight=False)
    res = solve_with_progress(prog, console, quiet=args.quiet, data=data, key=args.seed)
    out = Path(args.out) if args.out else Path("out") / Path(args.file).stem
    try:
        files = write_outputs(res, out, program=args.file, settings=_settings(args, argv))
    except OSError as e:
        _err(f"error: cannot write the outputs into {out}: {e}")
        return EXIT_ERROR
    if args.quiet:
        print(f"{res.status}: objective {res.objective:.10g}; wrote {out}/", flush=True)
    else:
        console.print(summary_table(res, title=f"{Path(args.file).name}"))
        console.print(f"wrote {', '.join(str(f) for f in files.values())}", highlight=False, soft_wrap=True)
    if res.status == "diverged":
        _err(f"error: the solve diverged (a NaN or inf appeared); {out} holds the last good parameters. "
             "Try a smaller lr.")
        return EXIT_DIVERGED
    return EXIT_OK


def cmd_check(args, argv) -> int:
    prog = _compile(args, stub_externs=True)
    nw = len(prog.warnings)
    print(f"ok: {args.file} ({counts(prog)})" + (f", {_plural(nw, 'warning')}" if nw else ""), flush=True)
    return EXIT_OK


def cmd_explain(args, argv) -> int:
    prog = _compile(args, stub_externs=True)
    print(prog.explain(args.stage), flush=True)
    return EXIT_OK


def cmd_variance(args, argv) -> int:
    import json

    prog = _compile(args)
    data = _load_data(prog, args.data)
    params = None
    if args.params is not None:
        from vrlang.data import load_npz

        params = load_npz(args.params)
    extra: dict = {}
    for b, spec in args.alts:
        extra.setdefault(b, []).append(spec)
    report = prog.estimator_variance(data=data, params=params, draws=args.draws, key=args.seed,
                                     alternatives=args.alternatives, extra=extra, binders=args.binders)
    if args.json:
        out = {**report.to_dict(), "settings": {**_settings(args, argv), "draws": args.draws,
                                                "params": args.params, "alternatives": args.alternatives,
                                                "alts": [f"{b}={s}" for b, s in args.alts],
                                                "binders": args.binders}}
        print(json.dumps(out, indent=2, allow_nan=False), flush=True)
        return EXIT_OK
    from rich.console import Console

    console = Console(file=sys.stdout, highlight=False, width=None if sys.stdout.isatty() else 160)
    for t in report.tables():
        console.print(t)
    return EXIT_OK


def cmd_repl(args, argv) -> int:
    from vrlang.repl import Repl

    return Repl().run(args.file)


COMMANDS = {"run": cmd_run, "check": cmd_check, "explain": cmd_explain, "variance": cmd_variance, "repl": cmd_repl}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (the console script passes it to ``sys.exit``)."""
    from vrlang.errors import VrError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors (argparse has printed the message)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        return COMMANDS[args.command](args, argv)
    except VrError as e:
        _err(e.render())
        return EXIT_ERROR
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
