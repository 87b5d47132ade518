"""Names, types and symbolic shapes: AST -> typed IR (:class:`CheckedProgram`).

One pass over the statements in order (a name must be declared before it is used, as
in Stan).  ``def`` calls are inlined with their arguments bound to IR nodes, ``let``
names become shared subtrees, ``use`` imports the ``def``/``const`` statements of a
library file.  Every error is raised at the offending sub-expression with both sides
of a mismatch in the message.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path

import numpy as np

from vrlang.check import builtins as B
from vrlang.check.distributions import DISTRIBUTIONS, type_distribution
from vrlang.check.program import (BinderInfo, BoundCheck, CheckedProgram, ConstDecl, DataDecl,
                                  ExternDecl, ParamDecl)
from vrlang.errors import Span, VrError, VrSyntaxError, VrTypeError
from vrlang.ir import nodes as N
from vrlang.ir.types import BOOL, INT, REAL, VType, broadcast, join_base, shape_str
from vrlang.resources import stdlib_dir
from vrlang.syntax import ast
from vrlang.syntax.parse import parse_program

CONSTRAINTS = ("positive", "simplex", "unit_interval")
BINDER_OPS = {"sum": "index", "mean": "index", "E": "random", "argmin": "decision",
              "argmax": "decision", "min": "decision", "max": "decision"}
ARITH = {"+": "add", "-": "sub", "*": "mul", "/": "div", "^": "pow"}
COMPARE = {"==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}
MAX_DEF_DEPTH = 64
MAX_CONST_SIZE = 10**7  # entries of a const array (larger arrays are data)


def _span_text(span: Span | None) -> str:
    """The source text of a one-line span (for messages), else a generic word."""
    if span is not None and span.source is not None and span.line == span.end_line:
        lines = span.source.splitlines()
        if 1 <= span.line <= len(lines):
            return lines[span.line - 1][span.column - 1:span.end_column - 1] or "expression"
    return "expression"


def _suggest(name: str, candidates) -> str | None:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.7)
    return f"did you mean `{close[0]}`?" if close else None


class _Scope:
    def __init__(self):
        self.frames: list[dict] = [{}]

    def lookup(self, name):
        for frame in reversed(self.frames):
            if name in frame:
                return frame[name]
        return None

    def names(self):
        out = set()
        for f in self.frames:
            out |= set(f)
        return out


class Checker:
    def __init__(self, source: str, file: str | None):
        self.source, self.file = source, file
        self.scope = _Scope()
        self.data: dict[str, DataDecl] = {}
        self.consts: dict[str, ConstDecl] = {}
        self.params: dict[str, ParamDecl] = {}
        self.externs: dict[str, ExternDecl] = {}
        self.binders: dict[str, BinderInfo] = {}
        self.bound_checks: list[BoundCheck] = []
        self.symbols: dict[str, list[tuple[str, int]]] = {}
        self.reports: dict[str, N.Node] = {}
        self.objective = None
        self.imported: set[str] = set()
        self.def_depth = 0
        self.binder_spans: dict[str, Span | None] = {}

    # ------------------------------------------------------------------ helpers
    def declare(self, name: str, entry, span: Span | None):
        prev = self.scope.frames[0].get(name)
        if prev is not None:
            raise VrTypeError("E201", f"`{name}` is already declared", span,
                              "every top-level name is declared once; rename one of them")
        if name in B.BUILTINS or name in BINDER_OPS:
            raise VrTypeError("E202", f"`{name}` is a builtin and cannot be redeclared", span,
                              "choose another name")
        self.scope.frames[0][name] = entry

    def type_of(self, t: ast.TypeExpr, *, local_symbols: bool = False) -> VType:
        for d in t.dims:
            if isinstance(d, int) and d < 1:
                raise VrTypeError("E203", f"dimensions must be positive, got {d}", t.span)
            if isinstance(d, str) and not local_symbols and d not in self.symbols:
                raise VrTypeError("E204", f"shape symbol `{d}` is not a dimension of any data", t.span,
                                  "declare data with this dimension first, or use an integer")
        return VType(t.base, tuple(t.dims))

    # --------------------------------------------------------------- statements
    def run(self, prog: ast.Program) -> CheckedProgram:
        estimates, solve, objective_stmt = [], None, None
        for st in prog.statements:
            if isinstance(st, ast.Estimate):
                estimates.append(st)
            elif isinstance(st, ast.Solve):
                if solve is not None:
                    raise VrTypeError("E230", "only one `solve` statement is allowed", st.span,
                                      f"the first `solve` is at line {solve.span.line}; keep one of them"
                                      if solve.span else None)
                solve = st
            elif isinstance(st, ast.Objective):
                if objective_stmt is not None:
                    raise VrTypeError("E231", "a program has exactly one objective; found a second one", st.span,
                                      "combine objectives into one expression, e.g. minimize f + g")
                objective_stmt = st
                self.statement(st)
            else:
                self.statement(st)
        if objective_stmt is None:
            lines = self.source.rstrip("\r\n").split("\n")  # point just after the last line of the program
            end, col = len(lines), len(lines[-1]) + 1
            raise VrTypeError("E232", "the program has no objective", Span(end, col, end, col + 1, self.source, self.file),
                              "add `minimize EXPR` or `maximize EXPR`")
        for st in estimates:
            self.estimate(st)
        return CheckedProgram(
            source=self.source, file=self.file, data=self.data, consts=self.consts, params=self.params,
            externs=self.externs, sense=objective_stmt.sense, objective=self.objective,
            objective_span=objective_stmt.expr.span, reports=self.reports, binders=self.binders,
            solver_spec=solve.spec if solve else None, solver_span=solve.span if solve else None,
            bound_checks=self.bound_checks, symbols=self.symbols,
        )

    def statement(self, st: ast.Stmt, library: bool = False):
        if library and not isinstance(st, (ast.Use, ast.Const, ast.Def, ast.Extern)):
            raise VrTypeError("E240", f"a library file may only contain use, const, def and extern statements", st.span)
        method = getattr(self, "stmt_" + type(st).__name__.lower())
        try:
            method(st)
        except RecursionError:
            raise VrSyntaxError("E104", "expression nested too deeply", st.span,
                                "split the expression with `let` or `def`") from None

    def stmt_use(self, st: ast.Use):
        if st.module is not None:
            parts = st.module.split(".")
            path = stdlib_dir().joinpath(*parts).with_suffix(".vr")
            shown = st.module
            if not path.is_file():
                avail = sorted(".".join(p.relative_to(stdlib_dir()).with_suffix("").parts)
                               for p in stdlib_dir().rglob("*.vr"))
                raise VrTypeError("E241", f"no library `{st.module}`", st.span,
                                  _suggest(st.module, avail) or f"available: {', '.join(avail)}")
        else:
            base = Path(self.file).parent if self.file and not self.file.startswith("<") else Path.cwd()
            path = base / st.path
            shown = st.path
            if not path.is_file():  # (also False for a path that the OS refuses, e.g. with a NUL byte)
                raise VrTypeError("E241", f"cannot find the file `{st.path}` (looked in {base})", st.span)
            path = path.resolve()
        key = str(path.resolve())
        if key in self.imported:
            return
        self.imported.add(key)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            why = "it is not UTF-8 text" if isinstance(err, UnicodeDecodeError) else (err.strerror or str(err))
            raise VrTypeError("E241", f"cannot read `{shown}`: {why}", st.span) from None
        lib = parse_program(text, str(path) if st.module is None else f"<{shown}>")
        outer = (self.source, self.file)
        self.source, self.file = text, lib.file
        try:
            for s in lib.statements:
                self.statement(s, library=True)
        except VrError as e:
            raise e.with_source(text, lib.file)
        finally:
            self.source, self.file = outer

    def stmt_data(self, st: ast.Data):
        t = VType(st.type.base, tuple(st.type.dims))
        for d in t.shape:
            if isinstance(d, int) and d < 1:
                raise VrTypeError("E203", f"dimensions must be positive, got {d}", st.type.span)
        self.declare(st.name, ("data", t), st.span)
        for axis, d in enumerate(t.shape):
            if isinstance(d, str):
                if d in self.scope.frames[0] and not self.symbols.get(d):
                    raise VrTypeError("E205", f"shape symbol `{d}` clashes with the declared name `{d}`", st.type.span)
                self.symbols.setdefault(d, []).append((st.name, axis))
        self.data[st.name] = DataDecl(st.name, t, st.source, st.span)

    def stmt_const(self, st: ast.Const):
        value = self.const_value(st.value)
        t = self.type_of(st.type) if st.type else VType("real", tuple(value.shape))
        if st.type is not None:
            if t.base == "int" and not np.all(np.equal(np.mod(value, 1), 0)):
                raise VrTypeError("E206", f"const `{st.name}` is declared int but its value is not an integer", st.value.span)
            want = tuple(t.shape)
            if any(isinstance(d, str) for d in want):
                raise VrTypeError("E206", "a const must have a fixed shape (integers, not shape symbols)", st.type.span)
            if value.shape != want and broadcast(value.shape, want) != want:
                raise VrTypeError("E206", f"const `{st.name}` is declared {t} but its value has shape {shape_str(value.shape)}",
                                  st.value.span)
            if math.prod(want) > MAX_CONST_SIZE:
                raise VrTypeError("E206", f"const `{st.name}` would have {math.prod(want)} entries; a const is a small "
                                  f"compile-time value (at most {MAX_CONST_SIZE})", st.type.span,
                                  "declare large arrays with `data`")
            value = np.broadcast_to(value, want).copy()
        self.declare(st.name, ("const", t), st.span)
        self.consts[st.name] = ConstDecl(st.name, t, value.astype(np.float64 if t.base == "real" else value.dtype), st.span)

    def stmt_param(self, st: ast.Param):
        t = self.type_of(st.type)
        if t.base != "real":
            raise VrTypeError("E207", f"a param must be real, got {t}", st.type.span,
                              "discrete decisions are random choices: use E(z ~ ...) instead")
        kind = bounds = None
        c = st.constraint
        if c is not None:
            if c.kind == "box":
                lo, hi = self.const_value(c.lo), self.const_value(c.hi)
                for v, sub in ((lo, c.lo), (hi, c.hi)):
                    if v.ndim != 0:
                        raise VrTypeError("E208", f"the bounds of a box must be scalars, got {shape_str(v.shape)}",
                                          sub.span, "write the box as [lo, hi] with two numbers")
                lo, hi = float(lo), float(hi)
                if not lo < hi:
                    raise VrTypeError("E208", f"empty box [{lo:g}, {hi:g}]: the lower bound must be below the upper",
                                      c.span)
                kind, bounds = "box", (lo, hi)
            elif c.kind in CONSTRAINTS:
                kind = c.kind
                if kind == "simplex" and t.rank != 1:
                    raise VrTypeError("E208", f"`simplex` needs a vector param, got {t}", c.span)
            else:
                raise VrTypeError("E208", f"unknown constraint `{c.kind}`", c.span,
                                  _suggest(c.kind, CONSTRAINTS) or "use positive, simplex, unit_interval or [lo, hi]")
        init = self.const_value(st.init) if st.init is not None else None
        if init is not None:
            if init.ndim > t.rank or broadcast(init.shape, t.shape) is None:
                raise VrTypeError("E209", f"the initial value of `{st.name}` has shape {shape_str(init.shape)}, "
                                  f"which does not fit {t}", st.init.span)
            bad = None
            if kind == "positive" and np.any(init <= 0):
                bad = "must be > 0"
            elif kind == "unit_interval" and np.any((init <= 0) | (init >= 1)):
                bad = "must lie strictly inside (0, 1)"
            elif kind == "box" and np.any((init <= bounds[0]) | (init >= bounds[1])):
                bad = f"must lie strictly inside ({bounds[0]}, {bounds[1]})"
            elif kind == "simplex" and (np.any(init <= 0) or (init.ndim == 1 and abs(init.sum() - 1) > 1e-6)):
                bad = "must be positive entries summing to 1"
            if bad:
                raise VrTypeError("E209", f"the initial value of `{st.name}` {bad} (constraint `{kind}`)", st.init.span,
                                  "leave out the initial value to start at the centre of the constraint set")
        self.declare(st.name, ("param", t), st.span)
        self.params[st.name] = ParamDecl(st.name, t, kind, bounds, init, st.span)

    def stmt_extern(self, st: ast.Extern):
        arg_types = tuple(self.type_of(a.type, local_symbols=True) for a in st.args)
        res = self.type_of(st.result, local_symbols=True)
        self.declare(st.name, ("extern", st), st.span)
        self.externs[st.name] = ExternDecl(st.name, arg_types, res, st.span)

    def stmt_def(self, st: ast.Def):
        names = [a.name for a in st.args]
        for k, a in enumerate(st.args):
            if a.name in names[:k]:
                raise VrTypeError("E201", f"argument `{a.name}` appears twice in `{st.name}`", a.span)
        self.declare(st.name, ("def", st), st.span)

    def stmt_let(self, st: ast.Let):
        node = self.expr(st.value)
        self.declare(st.name, ("let", node), st.span)

    def stmt_objective(self, st: ast.Objective):
        node = self.expr(st.expr)
        if node.type.rank != 0 or node.type.base == "bool":
            raise VrTypeError("E233", f"the objective must be a real scalar, got {node.type}", st.expr.span,
                              "reduce it, e.g. with sum(...) or mean(...)" if node.type.rank else
                              "a comparison is not a number: use where(cond, 1, 0) to turn it into one")
        self.objective = node

    def stmt_report(self, st: ast.Report):
        node = self.expr(st.expr)
        if node.type.rank != 0:
            raise VrTypeError("E234", f"a report must be a scalar, got {node.type}", st.expr.span)
        if st.name in self.reports or st.name in ("objective", "grad_norm", "grad_evals", "time", "epoch"):
            raise VrTypeError("E201", f"report name `{st.name}` is already used", st.span)
        self.reports[st.name] = node

    def estimate(self, st: ast.Estimate):
        info = self.binders.get(st.binder)
        if info is None:
            raise VrTypeError("E250", f"`estimate` names `{st.binder}`, which is not a binder of this program",
                              st.binder_span or st.span,
                              _suggest(st.binder, self.binders) or
                              ("binders are the variables of sum/mean/E/argmin/...: "
                               + (", ".join(self.binders) if self.binders else "this program has none")))
        if info.spec is not None:
            raise VrTypeError("E251", f"binder `{st.binder}` already has an estimator", st.span,
                              f"the first `estimate {st.binder}` is at line {info.spec_span.line}; keep one of them"
                              if info.spec_span else None)
        info.spec, info.spec_span = st.spec, st.span

    # ------------------------------------------------------- constant expressions
    def const_value(self, e: ast.Expr) -> np.ndarray:
        """Evaluate a compile-time constant (numbers, consts, vectors, arithmetic)."""
        if isinstance(e, ast.Number):
            return np.asarray(e.value, dtype=np.int64 if e.is_int else np.float64)
        if isinstance(e, ast.Name):
            entry = self.scope.lookup(e.id)
            if entry is not None and entry[0] == "const":
                decl = self.consts[e.id]
                decl.baked_at = decl.baked_at or e.span
                return np.asarray(decl.value)
            raise VrTypeError("E260", f"`{e.id}` is not a constant", e.span,
                              "initial values and bounds must be numbers or consts")
        if isinstance(e, ast.Unary) and e.op in "+-":
            v = self.const_value(e.operand)
            return -v if e.op == "-" else v
        if isinstance(e, ast.Vector):
            items = [self.const_value(i) for i in e.items]
            if len({i.shape for i in items}) != 1:
                raise VrTypeError("E260", "vector items must have the same shape", e.span)
            return np.stack(items).astype(np.float64)
        if isinstance(e, ast.Binary) and e.op in ARITH:
            a, b = self.const_value(e.left), self.const_value(e.right)
            if broadcast(a.shape, b.shape) is None:
                raise VrTypeError("E211", f"shapes do not broadcast: {shape_str(a.shape)} and {shape_str(b.shape)}", e.span)
            with np.errstate(all="ignore"):
                out = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.true_divide,
                       "^": np.power}[e.op](a.astype(np.float64), b.astype(np.float64))
            if not np.all(np.isfinite(out)):
                raise VrTypeError("E260", "this constant expression is not finite", e.span)
            return out
        raise VrTypeError("E260", "expected a constant (a number, a const, or a vector of them)", e.span)

    # -------------------------------------------------------------- expressions
    def expr(self, e: ast.Expr) -> N.Node:
        method = getattr(self, "ex_" + type(e).__name__.lower(), None)
        if method is None:
            if isinstance(e, ast.SliceAll):
                raise VrTypeError("E261", "`:` may only appear inside an index, as in X[:, j]", e.span)
            raise VrTypeError("E262", f"unsupported expression", e.span)  # pragma: no cover
        return method(e)

    def ex_number(self, e: ast.Number):
        return N.Lit(INT if e.is_int else REAL, e.value, span=e.span)

    def ex_name(self, e: ast.Name):
        entry = self.scope.lookup(e.id)
        if entry is None:
            if e.id in self.symbols:
                return N.Ref(INT, "dim", e.id, span=e.span)
            if e.id in B.BUILTINS or e.id in BINDER_OPS:
                raise VrTypeError("E263", f"`{e.id}` is a function; call it with arguments", e.span,
                                  f"write e.g. `{e.id}(x)`")
            visible = self.scope.names() | set(self.symbols)
            raise VrTypeError("E264", f"unknown name `{e.id}`", e.span,
                              _suggest(e.id, visible) or "declare it with data, const, param or let")
        kind, payload = entry[0], entry[1]
        if kind == "dim":
            return N.Lit(INT, payload, span=e.span) if isinstance(payload, int) else N.Ref(INT, "dim", payload, span=e.span)
        if kind in ("data", "const", "param"):
            return N.Ref(payload, kind, e.id, span=e.span)
        if kind in ("let", "alias", "var"):
            return payload
        if kind in ("def", "extern"):
            raise VrTypeError("E263", f"`{e.id}` is a function; call it with arguments", e.span)
        raise VrTypeError("E264", f"unknown name `{e.id}`", e.span)  # pragma: no cover

    def ex_unary(self, e: ast.Unary):
        x = self.expr(e.operand)
        if e.op == "not":
            if x.type.base != "bool":
                raise VrTypeError("E210", f"`not` needs a comparison (bool), got {x.type}", e.operand.span,
                                  "compare first, e.g. `not (x > 0)`")
            return N.Op(x.type, "not", (x,), span=e.span)
        if x.type.base == "bool":
            raise VrTypeError("E210", f"`{e.op}` needs a number, got {x.type}", e.operand.span)
        if e.op == "+":
            return x
        return N.Op(x.type, "neg", (x,), span=e.span)

    def ex_binary(self, e: ast.Binary):
        a, b = self.expr(e.left), self.expr(e.right)
        if e.op in ("and", "or"):
            for x, sub in ((a, e.left), (b, e.right)):
                if x.type.base != "bool":
                    raise VrTypeError("E210", f"`{e.op}` needs comparisons (bool), got {x.type}", sub.span)
            shape = B._bcast(e.op, [a.type, b.type], e.span)
            return N.Op(VType("bool", shape), e.op, (a, b), span=e.span)
        if e.op == "@":
            for x, sub in ((a, e.left), (b, e.right)):
                if x.type.base == "bool":
                    raise VrTypeError("E210", f"`@` needs numbers, got {x.type}", sub.span)
            shape = B.matmul_shape("@", a.type, b.type, e.span)
            return N.Op(VType(join_base(a.type.base, b.type.base, "int"), shape), "matmul", (a, b), span=e.span)
        for x, sub in ((a, e.left), (b, e.right)):
            if x.type.base == "bool":
                raise VrTypeError("E210", f"`{e.op}` needs numbers, got a comparison ({x.type})", sub.span,
                                  "use where(cond, 1, 0) to turn a condition into a number")
        shape = broadcast(a.type.shape, b.type.shape)
        if shape is None:
            raise VrTypeError("E211", f"shapes do not broadcast in `{e.op}`: left is {shape_str(a.type.shape)}, "
                              f"right is {shape_str(b.type.shape)}", e.span,
                              "elementwise operations need equal dimensions (or 1); for products of "
                              "vectors and matrices use dot(a, b) or a @ b")
        if e.op in COMPARE:
            return N.Op(VType("bool", shape), COMPARE[e.op], (a, b), span=e.span)
        base = "real" if e.op in ("/", "^") else join_base(a.type.base, b.type.base, "int")
        return N.Op(VType(base, shape), ARITH[e.op], (a, b), span=e.span)

    def ex_vector(self, e: ast.Vector):
        items = [self.expr(i) for i in e.items]
        shapes = {i.type.shape for i in items}
        if len(shapes) != 1:
            raise VrTypeError("E211", "vector items must have the same shape, got "
                              + ", ".join(shape_str(i.type.shape) for i in items), e.span)
        base = join_base(*(i.type.base for i in items))
        return N.Vector(VType(base, (len(items),) + items[0].type.shape), tuple(items), span=e.span)

    def ex_index(self, e: ast.Index):
        base = self.expr(e.base)
        if len(e.indices) > base.type.rank:
            raise VrTypeError("E270", f"too many indices: {base.type} has {base.type.rank} "
                              f"ax{'is' if base.type.rank == 1 else 'es'}, got {len(e.indices)} indices", e.span)
        items, out_shape = [], []
        for axis, sub in enumerate(e.indices):
            if isinstance(sub, ast.SliceAll):
                items.append(None)
                out_shape.append(base.type.shape[axis])
                continue
            idx = self.expr(sub)
            if idx.type.base != "int":
                raise VrTypeError("E271", f"an index must be an integer, got {idx.type}", sub.span,
                                  "index with a binder variable (i in 0..n) or an int")
            out_shape.extend(idx.type.shape)
            items.append(idx)
            dim = base.type.shape[axis]
            if isinstance(idx, N.Ref) and idx.kind == "var":  # any indexed value: JAX would clamp silently
                rng = self.var_ranges.get(idx.name) if hasattr(self, "var_ranges") else None
                if rng is not None:
                    lo, hi = rng
                    array = base.name if isinstance(base, N.Ref) else _span_text(e.base.span)
                    if isinstance(hi, int) and isinstance(dim, int) and hi > dim:
                        raise VrTypeError("E272", f"index `{idx.name}` runs up to {hi} but axis {axis} of "
                                          f"`{array}` has size {dim}", sub.span)
                    if hi != dim:
                        self.bound_checks.append(BoundCheck(idx.name, hi, array, axis, dim, sub.span))
        out_shape.extend(base.type.shape[len(e.indices):])
        return N.Index(VType(base.type.base, tuple(out_shape)), base, tuple(items), span=e.span)

    # ---- calls
    def ex_call(self, e: ast.Call):
        entry = self.scope.lookup(e.func)
        if entry is not None and entry[0] == "def":
            return self.call_def(entry[1], e)
        if entry is not None and entry[0] == "extern":
            return self.call_extern(entry[1], e)
        if entry is not None:
            raise VrTypeError("E263", f"`{e.func}` is a {entry[0]}, not a function", e.func_span or e.span)
        if e.func in DISTRIBUTIONS:
            raise VrTypeError("E273", f"a distribution can only follow `~` in E(z ~ {e.func}(...): ...)", e.span)
        if e.func not in B.BUILTINS:
            known = set(B.BUILTINS) | {n for n, v in self.scope.frames[0].items() if v[0] in ("def", "extern")}
            raise VrTypeError("E274", f"unknown function `{e.func}`", e.func_span or e.span,
                              _suggest(e.func, known) or "see LANGUAGE.md §3 for the builtins")
        static: dict = {}
        if e.func == "one_hot" and len(e.args) == 2:
            size = e.args[1]
            if isinstance(size, ast.Number) and size.is_int:
                static["size"] = int(size.value)
            elif isinstance(size, ast.Name) and size.id in self.symbols and self.scope.lookup(size.id) is None:
                static["size"] = size.id
            elif isinstance(size, ast.Name) and (self.scope.lookup(size.id) or ("",))[0] == "dim":
                static["size"] = self.scope.lookup(size.id)[1]
        if e.kwargs:
            raise VrTypeError("E275", f"`{e.func}` takes no keyword arguments", e.kwargs[0].span)
        args = [self.expr(a) for a in e.args]
        t = B.type_builtin(e.func, [a.type for a in args], static, e.span)
        op = e.func
        if e.func in B.PAIRWISE and len(args) == 2:
            op = "maximum" if e.func == "max" else "minimum"
        st = (static["size"],) if "size" in static else ()
        return N.Op(t, op, tuple(args), st, span=e.span)

    def _bind_args(self, fname: str, params, e: ast.Call):
        if e.kwargs:
            names = [p.name for p in params]
            for k in e.kwargs:
                if k.name not in names:
                    raise VrTypeError("E276", f"`{fname}` has no argument `{k.name}`", k.span,
                                      f"its arguments are: {', '.join(names)}")
        given = list(e.args) + [None] * (len(params) - len(e.args))
        if len(e.args) > len(params):
            raise VrTypeError("E213", f"`{fname}` takes {len(params)} argument{'s' if len(params) != 1 else ''}, "
                              f"got {len(e.args) + len(e.kwargs)}", e.span,
                              f"it is declared as {fname}({', '.join(p.name for p in params)})")
        for k in e.kwargs:
            pos = [p.name for p in params].index(k.name)
            if given[pos] is not None:
                raise VrTypeError("E277", f"argument `{k.name}` of `{fname}` given twice", k.span)
            given[pos] = k.value
        missing = [p.name for p, g in zip(params, given) if g is None]
        if missing:
            raise VrTypeError("E213", f"`{fname}` is missing argument{'s' if len(missing) > 1 else ''} "
                              f"{', '.join(missing)}", e.span,
                              f"it is declared as {fname}({', '.join(p.name for p in params)})")
        return given

    def _match(self, fname, pname, want: VType, got: N.Node, sub: ast.Expr, bound: dict):
        if want.base == "real" and got.type.base == "bool" or want.base in ("int", "bool") and got.type.base != want.base:
            raise VrTypeError("E278", f"argument `{pname}` of `{fname}` must be {want.base}, got {got.type}", sub.span)
        if want.rank != got.type.rank:
            raise VrTypeError("E278", f"argument `{pname}` of `{fname}` must be {want}, got {got.type}", sub.span)
        for w, g in zip(want.shape, got.type.shape):
            if isinstance(w, int):
                if w != g:
                    raise VrTypeError("E278", f"argument `{pname}` of `{fname}` must be {want}, got {got.type}", sub.span)
            elif w in bound and bound[w] != g:
                raise VrTypeError("E278", f"argument `{pname}` of `{fname}`: dimension `{w}` is {bound[w]} from an "
                                  f"earlier argument but {g} here", sub.span)
            else:
                bound[w] = g

    def call_def(self, d: ast.Def, e: ast.Call) -> N.Node:
        given = self._bind_args(d.name, d.args, e)
        values = [self.expr(g) for g in given]
        bound: dict = {}
        frame = {}
        for p, v, g in zip(d.args, values, given):
            if p.type is not None:
                self._match(d.name, p.name, VType(p.type.base, tuple(p.type.dims)), v, g, bound)
            frame[p.name] = ("alias", v)
        for sym, dim in bound.items():  # def-local shape symbols usable in the body (one_hot(k, K), ranges)
            if sym not in self.scope.frames[0] and sym not in frame:  # shadows a data symbol of the same name
                frame[sym] = ("dim", dim)
        if self.def_depth > MAX_DEF_DEPTH:
            raise VrTypeError("E279", "definitions nest too deeply", e.span)
        # a def sees the globals and its arguments only (no binder variables of the caller)
        saved = self.scope.frames
        self.scope.frames = [saved[0], frame]
        self.def_depth += 1
        try:
            out = self.expr(d.body)
        finally:
            self.scope.frames = saved
            self.def_depth -= 1
        if d.result is not None:
            want = VType(d.result.base, tuple(d.result.dims))
            if out.type.rank != want.rank or out.type.base != want.base and not (want.base == "real" and out.type.base == "int"):
                raise VrTypeError("E278", f"`{d.name}` is declared to return {want} but its body is {out.type}", d.body.span)
        return out

    def call_extern(self, st: ast.Extern, e: ast.Call) -> N.Node:
        given = self._bind_args(st.name, st.args, e)
        values = [self.expr(g) for g in given]
        bound: dict = {}
        for p, v, g in zip(st.args, values, given):
            self._match(st.name, p.name, VType(p.type.base, tuple(p.type.dims)), v, g, bound)
        res = VType(st.result.base, tuple(bound.get(d, d) for d in st.result.dims))
        for d in res.shape:
            if isinstance(d, str) and d not in self.symbols and d not in bound.values():
                raise VrTypeError("E204", f"the result dimension `{d}` of extern `{st.name}` is not determined "
                                  "by its arguments or the data", st.result.span)
        return N.ExternCall(res, st.name, tuple(values), span=e.span)

    # ---- binders
    def register_binder(self, name: str, kind: str, op: str, span, node):
        prev_span = self.binder_spans.get(name, "unset")
        info = self.binders.get(name)
        if info is None:
            self.binder_spans[name] = span
            self.binders[name] = info = BinderInfo(name, kind, op, span)
        elif prev_span is not None and span is not None and (prev_span.line, prev_span.column, prev_span.file) != (span.line, span.column, span.file):
            raise VrTypeError("E280", f"binder name `{name}` is used twice", span,
                              f"binder names are handles for `estimate`; the first `{name}` is at line "
                              f"{prev_span.line}, column {prev_span.column}: rename one of them")
        info.nodes.append(node)

    def ex_binderexpr(self, e: ast.BinderExpr):
        kind = BINDER_OPS.get(e.op)
        if kind is None:
            raise VrTypeError("E281", f"`{e.op}` does not bind variables", e.op_span or e.span,
                              "binders are sum, mean, E, argmin, argmax, min and max")
        for v in e.vars:
            vkind = {ast.RangeVar: "index", ast.RandomVar: "random", ast.DecisionVar: "decision"}[type(v)]
            if vkind != kind:
                form = {"index": "i in a..b", "random": "z ~ Distribution(...)", "decision": "v in real[d] = init"}[kind]
                raise VrTypeError("E282", f"`{e.op}` binds {kind} variables, written `{form}`", v.span)
            clash = self.scope.lookup(v.name)
            if clash is not None or v.name in self.symbols:
                raise VrTypeError("E283", f"binder variable `{v.name}` shadows an existing name", v.span,
                                  "choose a fresh name for the binder")
        if len(e.vars) > 1:  # op(a, b: body) == op(a: op(b: body)); E and argmin bind one at a time too
            inner = ast.BinderExpr(e.op, e.vars[1:], e.body, op_span=e.op_span, span=e.span)
            return self._binder(e, e.vars[0], inner)
        return self._binder(e, e.vars[0], e.body)

    def _with_var(self, name, node, body: ast.Expr, rng=None):
        self.scope.frames.append({name: ("var", node)})
        if not hasattr(self, "var_ranges"):
            self.var_ranges = {}
        if rng is not None:
            self.var_ranges[name] = rng
        try:
            return self.expr(body)
        finally:
            self.scope.frames.pop()
            self.var_ranges.pop(name, None)

    def _dim(self, e: ast.Expr, what: str):
        if isinstance(e, ast.Number) and e.is_int:
            return int(e.value)
        if isinstance(e, ast.Name) and e.id in self.symbols and self.scope.lookup(e.id) is None:
            return e.id
        if isinstance(e, ast.Name) and (self.scope.lookup(e.id) or ("",))[0] == "dim":
            return self.scope.lookup(e.id)[1]
        if isinstance(e, ast.Name) and self.scope.lookup(e.id) and self.scope.lookup(e.id)[0] == "const":
            c = self.consts[e.id]
            if c.type.base == "int" and c.type.rank == 0:
                c.baked_at = c.baked_at or e.span
                return int(c.value)
        raise VrTypeError("E284", f"the {what} of a range must be an integer literal or a shape symbol", e.span,
                          "write e.g. `i in 0..n` where n is a dimension of some data")

    def _binder(self, e: ast.BinderExpr, v, body: ast.Expr) -> N.Node:
        if isinstance(v, ast.RangeVar):
            lo, hi = self._dim(v.lo, "start"), self._dim(v.hi, "end")
            if isinstance(lo, int) and isinstance(hi, int) and hi <= lo:
                raise VrTypeError("E285", f"empty range {lo}..{hi}", v.span, "ranges are half-open: a..b needs a < b")
            if isinstance(lo, str) and lo == hi:
                raise VrTypeError("E285", f"empty range {lo}..{hi}", v.span)
            var = N.Ref(INT, "var", v.name, span=v.span)
            b = self._with_var(v.name, var, body, (lo, hi))
            if b.type.base == "bool":
                raise VrTypeError("E210", f"the body of `{e.op}` must be a number, got {b.type}", body.span,
                                  "use where(cond, 1, 0) to count")
            t = VType("real" if e.op == "mean" else join_base(b.type.base, "int"), b.type.shape)
            node = N.Sum(t, v.name, lo, hi, b, e.op == "mean", span=e.span)
            self.register_binder(v.name, "index", e.op, v.span, node)
            return node
        if isinstance(v, ast.RandomVar):
            dist = self.distribution(v.dist)
            var = N.Ref(dist.type, "var", v.name, span=v.span)
            b = self._with_var(v.name, var, body)
            if b.type.base == "bool":
                raise VrTypeError("E210", f"the body of `E` must be a number, got {b.type}", body.span,
                                  "for a probability write E(z ~ D: where(cond, 1, 0))")
            node = N.Expect(VType("real", b.type.shape), v.name, dist, b, span=e.span)
            self.register_binder(v.name, "random", "E", v.span, node)
            return node
        # decision variable
        t = self.type_of(v.type)
        if t.base != "real":
            raise VrTypeError("E207", f"a decision variable must be real, got {t}", v.type.span)
        init = self.expr(v.init) if v.init is not None else None
        if init is not None and (broadcast(init.type.shape, t.shape) != t.shape or init.type.base == "bool"):
            raise VrTypeError("E209", f"the initial value has type {init.type}, which does not fit {t}", v.init.span)
        var = N.Ref(t, "var", v.name, span=v.span)
        b = self._with_var(v.name, var, body)
        if b.type.rank != 0 or b.type.base == "bool":
            raise VrTypeError("E233", f"the inner objective of `{e.op}` must be a real scalar, got {b.type}", body.span)
        out_t = t if e.op in ("argmin", "argmax") else REAL
        node = N.Decision(out_t, v.name, e.op, t, init, b, span=e.span)
        self.register_binder(v.name, "decision", e.op, v.span, node)
        return node

    def distribution(self, e: ast.Expr) -> N.Dist:
        if not isinstance(e, ast.Call):
            raise VrTypeError("E290", "expected a distribution after `~`, e.g. Normal(0, 1)", e.span)
        if e.func not in DISTRIBUTIONS:
            raise VrTypeError("E291", f"unknown distribution `{e.func}`", e.func_span or e.span,
                              _suggest(e.func, DISTRIBUTIONS) or "supported: " + ", ".join(sorted(DISTRIBUTIONS)))
        args = [self.expr(a) for a in e.args]
        kwargs = {k.name: self.expr(k.value) for k in e.kwargs}
        t, order = type_distribution(e.func, [a.type for a in args], {k: v.type for k, v in kwargs.items()},
                                     e.span, {k.name: k.span for k in e.kwargs})
        values = dict(zip(order, args + list(kwargs.values())))
        return N.Dist(t, e.func, (), tuple(values.items()), span=e.span)


def check(prog: ast.Program) -> CheckedProgram:
    """Run the checker; errors carry the program's source for the caret."""
    try:
        return Checker(prog.source, prog.file).run(prog)
    except VrError as e:
        raise e.with_source(prog.source, prog.file)
    except RecursionError:
        raise VrSyntaxError("E104", "expression nested too deeply", None,
                            "split the expression with `let` or `def`") from None
