"""`vrlang repl`: a small interactive loop over one growing program.

A line that does not start with ``:`` is a statement: it is appended to the current
program text and the whole program is re-checked (compiled).  A statement that fails
is reported and dropped, so the program text never loses what it had; a statement cut
at an open bracket continues on the next line (an empty line abandons it).  The loop
reads with :func:`input`, so it also runs with a pipe on stdin (and is tested that way);
no mistake ends it -- only ``:quit`` or the end of the input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import vrlang
from vrlang.cli import _console, counts, parse_estimate, parse_setting, solve_with_progress
from vrlang.errors import VrError

HELP = """\
commands:
  :load FILE              load a program (replaces the current one)
  :explain [STAGE]        show the program; STAGE is ast, ir or transformed (default)
  :solve [SPEC]           solve, optionally with a solver spec, e.g. :solve adam(lr = 0.1, steps = 200)
  :set NAME=VALUE         override a const (a number or comma-separated numbers)
  :estimate BINDER=SPEC   choose the estimator of a binder, e.g. :estimate i=saga(batch = 8)
  :params                 the params (their values after a solve)
  :show                   the current program text
  :help                   this text
  :quit                   leave (also :q, :exit, or end of input)
any other line is a statement added to the program, e.g.  const lam: real = 0.1"""


def _err(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


class Repl:
    def __init__(self):
        self.text = ""  # the program so far (always ends with a newline when non-empty)
        self.file: str | None = None  # the file loaded: `from` sources resolve next to it
        self.file_text: str | None = None
        self.consts: dict = {}
        self.estimators: dict[str, str] = {}
        self.prog = None  # the compiled program (None while there is no objective)
        self.result = None
        self.console = None

    # ------------------------------------------------------------------ loop
    def run(self, file: str | None = None) -> int:
        self.console = _console()
        interactive = sys.stdin is not None and sys.stdin.isatty()
        if interactive:
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:  # pragma: no cover
                pass
            print(f"vrlang {vrlang.__version__} repl -- :help for commands, :quit to leave")
        if file:
            self.guard(self.load, file)
        pending = ""
        while True:
            try:
                line = input(("...> " if pending else "vr> ") if interactive else "")
            except EOFError:
                break
            except KeyboardInterrupt:
                print()
                pending = ""
                continue
            stripped = line.strip()
            if stripped.startswith(":"):
                if pending:
                    _err("(the unfinished statement was dropped)")
                    pending = ""
                if self.guard(self.command, stripped) == "quit":
                    break
            elif pending or stripped:
                pending = self.guard(self.statement, pending + line + "\n", not stripped) or ""
        return 0

    def guard(self, fn, *args):
        """Run one action; report every error, never end the loop."""
        try:
            return fn(*args)
        except VrError as e:
            _err(e.render())
        except (argparse.ArgumentTypeError, ValueError, OSError) as e:
            _err(f"error: {e}")
        except KeyboardInterrupt:
            _err("interrupted")
        except Exception as e:  # an internal error: report it and keep the session alive
            _err(f"internal error: {type(e).__name__}: {e}")
        return None

    # ------------------------------------------------------------ compiling
    def compile(self, text: str, consts: dict, estimators: dict):
        kw = dict(consts=consts or None, estimators=estimators or None)
        if self.file is not None and text == self.file_text:
            return vrlang.compile(self.file, **kw)  # diagnostics name the file
        prog = vrlang.compile(text, **kw)
        if self.file is not None:
            prog.checked.file = self.file  # so that `from "data/..."` resolves next to the loaded file
        return prog

    def _adopt(self, text: str, prog) -> None:
        old = {w.render() for w in self.prog.warnings} if self.prog is not None else set()
        self.text, self.prog, self.result = text, prog, None
        if prog is not None:
            for w in prog.warnings:
                if w.render() not in old:
                    _err(w.render())

    def _need_program(self):
        if self.prog is None:
            raise ValueError("no program yet: :load FILE, or type statements including `minimize ...`"
                             if not self.text else "the program has no objective yet: add `minimize ...`")
        return self.prog

    # ------------------------------------------------------------ statements
    def statement(self, chunk: str, final: bool = False) -> str:
        """Append ``chunk`` and re-check; returns the unfinished text to continue, or ''."""
        new = self.text + chunk
        try:
            prog = self.compile(new, self.consts, self.estimators)
        except VrError as e:
            if e.code == "E232":  # everything checked; only the objective is missing so far
                self._adopt(new, None)
                print("ok (no objective yet)", flush=True)
                return ""
            if e.code == "E100" and e.message == "unexpected end of file" and not final:
                return chunk  # an open bracket: read on
            raise
        self._adopt(new, prog)
        print("ok", flush=True)
        return ""

    # -------------------------------------------------------------- commands
    def command(self, line: str):
        name, _, rest = line[1:].partition(" ")
        rest = rest.strip()
        fn = {"load": self.load, "explain": self.explain, "solve": self.solve, "set": self.set,
              "estimate": self.estimate, "params": self.params, "show": self.show, "help": self.help,
              "quit": None, "q": None, "exit": None}
        if name not in fn:
            raise ValueError(f"unknown command `:{name}`; :help lists the commands")
        if fn[name] is None:
            return "quit"
        return fn[name](rest)

    def load(self, path: str):
        if not path:
            raise ValueError("usage: :load FILE")
        prog = vrlang.compile(path)  # a missing file is E400
        self.file, self.file_text = path, Path(path).read_text()
        if not self.file_text.endswith("\n"):
            self.file_text += "\n"
        self.consts, self.estimators, self.prog = {}, {}, None
        self._adopt(self.file_text, prog)
        print(f"loaded {path} ({counts(prog)})", flush=True)

    def explain(self, stage: str):
        print(self._need_program().explain(stage or None), flush=True)

    def solve(self, spec: str):
        from vrlang.report import summary_table

        prog = self._need_program()
        res = solve_with_progress(prog, self.console, solver=spec or None)
        self.result = res
        self.console.print(summary_table(res))

    def set(self, arg: str):
        name, value = parse_setting(arg)
        self._need_program()
        consts = {**self.consts, name: value}
        prog = self.compile(self.text, consts, self.estimators)
        self.consts = consts
        self._adopt(self.text, prog)
        print(f"{name} = {np.asarray(value).tolist()}", flush=True)

    def estimate(self, arg: str):
        binder, spec = parse_estimate(arg)
        self._need_program()
        estimators = {**self.estimators, binder: spec}
        prog = self.compile(self.text, self.consts, estimators)
        self.estimators = estimators
        self._adopt(self.text, prog)
        print(f"estimate {binder} by {prog.choices[binder].spec}", flush=True)

    def params(self, _=""):
        prog = self._need_program()
        for name, p in prog.checked.params.items():
            if self.result is not None:
                v = np.asarray(self.result.params[name])
                print(f"{name}: {p.type} = {np.array2string(v, precision=4, threshold=12, separator=', ')}")
            else:
                print(f"{name}: {p.type}" + ("" if p.constraint is None else f" in {p.constraint}"))
        if self.result is None:
            print("(not solved yet: :solve)")
        sys.stdout.flush()

    def show(self, _=""):
        for k, line in enumerate(self.text.splitlines(), 1):
            print(f"{k:4d}  {line}")
        sys.stdout.flush()

    def help(self, _=""):
        print(HELP, flush=True)
