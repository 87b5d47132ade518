"""Source text -> AST, with Lark (LALR, strict, positions propagated, cached).

Lark's exceptions are translated into :class:`~vrlang.errors.VrSyntaxError` with a
caret and, for common mistakes, a hint saying how to fix the program.
"""

from __future__ import annotations

import difflib
import functools
import re

import lark
from lark import Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from vrlang.errors import Span, VrError, VrSyntaxError
from vrlang.resources import grammar_path
from vrlang.syntax import ast

STATEMENT_KEYWORDS = ("use", "data", "const", "param", "extern", "def", "let", "minimize",
                      "maximize", "estimate", "solve", "report")
_STATEMENT_TERMINALS = {k.upper() for k in STATEMENT_KEYWORDS}

TERMINAL_TEXT = {
    "USE": "`use`", "DATA": "`data`", "FROM": "`from`", "CONST": "`const`", "PARAM": "`param`",
    "EXTERN": "`extern`", "DEF": "`def`", "LET": "`let`", "MINIMIZE": "`minimize`",
    "MAXIMIZE": "`maximize`", "ESTIMATE": "`estimate`", "SOLVE": "`solve`", "BY": "`by`",
    "REPORT": "`report`", "IN": "`in`", "AND": "`and`", "OR": "`or`", "NOT": "`not`",
    "REAL": "`real`", "INTTYPE": "`int`", "BOOLTYPE": "`bool`", "ARROW": "`->`",
    "DOTDOT": "`..`", "DOT": "`.`", "COLON": "`:`", "COMMA": "`,`", "LPAR": "`(`",
    "RPAR": "`)`", "LSQB": "`[`", "RSQB": "`]`", "TILDE": "`~`", "CARET": "`^`",
    "COMPOP": "a comparison", "EQ": "`=`", "ADDOP": "`+` or `-`", "MULOP": "`*`, `/` or `@`",
    "NAME": "a name", "FLOAT": "a number", "INT": "an integer", "STRING": "a string",
    "$END": "the end of the file",
}


@functools.lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    return lark.Lark(
        grammar_path().read_text(),
        parser="lalr",
        start=["program", "spec"],
        strict=True,
        propagate_positions=True,
        maybe_placeholders=True,
        cache=False,
    )


def _span(obj, source: str | None = None, file: str | None = None) -> Span | None:
    if isinstance(obj, Token):
        if obj.line is None:
            return None
        return Span(obj.line, obj.column, obj.end_line or obj.line, obj.end_column or obj.column + 1, source, file)
    meta = getattr(obj, "meta", obj)
    if getattr(meta, "empty", True):
        return None
    return Span(meta.line, meta.column, meta.end_line, meta.end_column, source, file)


def _toks(children, *types):
    return [c for c in children if isinstance(c, Token) and c.type in types]


def _nontok(children):
    return [c for c in children if not isinstance(c, Token) and c is not None]


class _ToAst(Transformer):
    """Lark tree -> frozen AST dataclasses."""

    def __init__(self, source: str, file: str | None):
        super().__init__()
        self.source, self.file = source, file

    def sp(self, x):
        return _span(x, self.source, self.file)

    # ---- statements
    @v_args(meta=True)
    def program(self, meta, children):
        return tuple(children)

    @v_args(meta=True)
    def spec(self, meta, children):
        return children[0]

    @v_args(meta=True)
    def use_module(self, meta, ch):
        return ast.Use(ch[1], None, span=self.sp(meta))

    @v_args(meta=True)
    def use_file(self, meta, ch):
        return ast.Use(None, ch[1][1:-1], span=self.sp(meta))

    def dotted_name(self, ch):
        return ".".join(str(t) for t in _toks(ch, "NAME"))

    @v_args(meta=True)
    def data_stmt(self, meta, ch):
        src = ch[5]
        return ast.Data(str(ch[1]), ch[3], src[1:-1] if src is not None else None, span=self.sp(meta))

    @v_args(meta=True)
    def const_stmt(self, meta, ch):
        return ast.Const(str(ch[1]), ch[3], ch[5], span=self.sp(meta))

    @v_args(meta=True)
    def param_stmt(self, meta, ch):
        constraint = init = None
        for kind, value, span in ch[4:]:
            if kind == "constraint":
                if constraint is not None:
                    raise VrSyntaxError("E106", "a `param` takes at most one constraint", span)
                constraint = value
            else:
                if init is not None:
                    raise VrSyntaxError("E106", "a `param` takes at most one initial value", span)
                init = value
        return ast.Param(str(ch[1]), ch[3], constraint, init, span=self.sp(meta))

    @v_args(meta=True)
    def param_constraint(self, meta, ch):
        return ("constraint", ch[1], self.sp(meta))

    @v_args(meta=True)
    def param_init(self, meta, ch):
        return ("init", ch[1], self.sp(meta))

    @v_args(meta=True)
    def named_constraint(self, meta, ch):
        return ast.Constraint(str(ch[0]), span=self.sp(meta))

    @v_args(meta=True)
    def box_constraint(self, meta, ch):
        return ast.Constraint("box", ch[1], ch[3], span=self.sp(meta))

    @v_args(meta=True)
    def extern_stmt(self, meta, ch):
        args = tuple(c for c in ch if isinstance(c, ast.Arg))
        return ast.Extern(str(ch[1]), args, ch[-1], span=self.sp(meta))

    @v_args(meta=True)
    def def_stmt(self, meta, ch):
        args = tuple(c for c in ch if isinstance(c, ast.Arg))
        result = ch[-3]
        return ast.Def(str(ch[1]), args, result, ch[-1], span=self.sp(meta))

    @v_args(meta=True)
    def typed_arg(self, meta, ch):
        return ast.Arg(str(ch[0]), ch[2], span=self.sp(meta))

    @v_args(meta=True)
    def def_arg(self, meta, ch):
        return ast.Arg(str(ch[0]), ch[2], span=self.sp(meta))

    @v_args(meta=True)
    def let_stmt(self, meta, ch):
        return ast.Let(str(ch[1]), ch[3], span=self.sp(meta))

    @v_args(meta=True)
    def minimize(self, meta, ch):
        return ast.Objective("minimize", ch[1], span=self.sp(meta))

    @v_args(meta=True)
    def maximize(self, meta, ch):
        return ast.Objective("maximize", ch[1], span=self.sp(meta))

    @v_args(meta=True)
    def estimate_stmt(self, meta, ch):
        return ast.Estimate(str(ch[1]), ch[3], binder_span=self.sp(ch[1]), span=self.sp(meta))

    @v_args(meta=True)
    def solve_stmt(self, meta, ch):
        return ast.Solve(ch[2], span=self.sp(meta))

    @v_args(meta=True)
    def report_stmt(self, meta, ch):
        return ast.Report(str(ch[1]), ch[3], span=self.sp(meta))

    # ---- types
    @v_args(meta=True)
    def type_expr(self, meta, ch):
        dims = tuple(c for c in ch[1:] if not isinstance(c, Token) and c is not None)
        return ast.TypeExpr(ch[0], dims, span=self.sp(meta))

    def basetype(self, ch):
        return str(ch[0])

    def dim_int(self, ch):
        if int(ch[0]) >= 2**63:
            raise VrSyntaxError("E105", f"the dimension {int(ch[0])} is too large", self.sp(ch[0]))
        return int(ch[0])

    def dim_name(self, ch):
        return str(ch[0])

    # ---- expressions
    @v_args(meta=True)
    def number(self, meta, ch):
        tok = ch[0]
        if tok.type == "INT":
            if int(tok) >= 2**63:  # beyond int64: numpy and JAX cannot hold it
                raise VrSyntaxError("E105", f"the integer {int(tok)} is too large", self.sp(tok),
                                    "write a large number as a real, e.g. 1e20")
            return ast.Number(int(tok), True, span=self.sp(tok))
        return ast.Number(float(tok), False, span=self.sp(tok))

    @v_args(meta=True)
    def name(self, meta, ch):
        return ast.Name(str(ch[0]), span=self.sp(ch[0]))

    @v_args(meta=True)
    def binop(self, meta, ch):
        return ast.Binary(str(ch[1]), ch[0], ch[2], span=self.sp(meta))

    compare = binop

    @v_args(meta=True)
    def pow_op(self, meta, ch):
        return ast.Binary("^", ch[0], ch[2], span=self.sp(meta))

    @v_args(meta=True)
    def and_op(self, meta, ch):
        return ast.Binary("and", ch[0], ch[2], span=self.sp(meta))

    @v_args(meta=True)
    def or_op(self, meta, ch):
        return ast.Binary("or", ch[0], ch[2], span=self.sp(meta))

    @v_args(meta=True)
    def not_op(self, meta, ch):
        return ast.Unary("not", ch[1], span=self.sp(meta))

    @v_args(meta=True)
    def unary(self, meta, ch):
        return ast.Unary(str(ch[0]), ch[1], span=self.sp(meta))

    @v_args(meta=True)
    def index(self, meta, ch):
        subs = tuple(c for c in ch[1:] if not isinstance(c, Token))
        return ast.Index(ch[0], subs, span=self.sp(meta))

    @v_args(meta=True)
    def sub_expr(self, meta, ch):
        return ch[0]

    @v_args(meta=True)
    def sub_all(self, meta, ch):
        return ast.SliceAll(span=self.sp(ch[0]))

    def paren(self, ch):
        return ch[1]

    @v_args(meta=True)
    def vector(self, meta, ch):
        return ast.Vector(tuple(_nontok(ch)), span=self.sp(meta))

    @v_args(meta=True)
    def call(self, meta, ch):
        arguments = ch[2] or ()
        args = tuple(a for a in arguments if not isinstance(a, ast.Keyword))
        kwargs = tuple(a for a in arguments if isinstance(a, ast.Keyword))
        seen = set()
        for a, k in enumerate(arguments):
            if isinstance(k, ast.Keyword):
                if k.name in seen:
                    raise VrSyntaxError("E107", f"keyword argument `{k.name}` given twice", k.span)
                seen.add(k.name)
            elif seen:
                raise VrSyntaxError("E108", "a positional argument follows a keyword argument", k.span,
                                    "put positional arguments first: f(a, b, k = v)")
        return ast.Call(str(ch[0]), args, kwargs, func_span=self.sp(ch[0]), span=self.sp(meta))

    def arguments(self, ch):
        return tuple(_nontok(ch))

    @v_args(meta=True)
    def kwarg(self, meta, ch):
        return ast.Keyword(str(ch[0]), ch[2], span=self.sp(meta))

    @v_args(meta=True)
    def binder_expr(self, meta, ch):
        return ast.BinderExpr(str(ch[0]), ch[2], ch[4], op_span=self.sp(ch[0]), span=self.sp(meta))

    def binders(self, ch):
        return tuple(_nontok(ch))

    @v_args(meta=True)
    def range_binder(self, meta, ch):
        return ast.RangeVar(str(ch[0]), ch[2], ch[4], span=self.sp(meta))

    @v_args(meta=True)
    def random_binder(self, meta, ch):
        return ast.RandomVar(str(ch[0]), ch[2], span=self.sp(meta))

    @v_args(meta=True)
    def decision_binder(self, meta, ch):
        return ast.DecisionVar(str(ch[0]), ch[2], ch[4], span=self.sp(meta))


# ------------------------------------------------------------------ error messages

_TOKEN_RE = re.compile(r'\s+|#[^\n]*|"[^"\n]*"?|[A-Za-z_][A-Za-z_0-9]*|[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?|\.\.|->|==|!=|<=|>=|\*\*|&&|\|\||.', re.S)


def _tokens_before(source: str, pos: int) -> list[str]:
    toks = []
    for m in _TOKEN_RE.finditer(source[:pos]):
        t = m.group(0)
        if not t.isspace() and not t.startswith("#"):
            toks.append(t)
    return toks


def _binder_before(toks: list[str]) -> str | None:
    """If the tokens end inside `OP(binder` (no `:` yet), return the binder text."""
    depth = 0
    for k in range(len(toks) - 1, -1, -1):
        t = toks[k]
        if t in ")]":
            depth += 1
        elif t in "([":
            if depth == 0:
                inner = toks[k + 1:]
                if t == "(" and len(inner) >= 2 and inner[1] in ("in", "~") and ":" not in inner:
                    return " ".join(inner).replace(" .. ", "..").replace(" , ", ", ").replace(" [ ", "[").replace(" ]", "]")
                return None
            depth -= 1
    return None


def _unclosed(toks: list[str]) -> str | None:
    stack = []
    for t in toks:
        if t in "([":
            stack.append(t)
        elif t in ")]" and stack:
            stack.pop()
    return stack[-1] if stack else None


def _describe_expected(expected) -> str:
    names = sorted({TERMINAL_TEXT.get(e, e) for e in expected if not e.startswith("__")})
    if len(names) > 6:
        names = names[:6] + ["..."]
    return ", ".join(names)


def _syntax_error(e: UnexpectedInput, source: str, file: str | None) -> VrSyntaxError:
    line, col = getattr(e, "line", 1) or 1, getattr(e, "column", 1) or 1
    pos = getattr(e, "pos_in_stream", None)
    if pos is None:
        pos = len(source)
    toks = _tokens_before(source, pos)
    prev = toks[-1] if toks else None

    if isinstance(e, UnexpectedCharacters):
        ch = source[pos] if pos < len(source) else ""
        span = Span(line, col, line, col + 1, source, file)
        nxt = source[pos:pos + 2]
        if ch == '"':
            return VrSyntaxError("E102", "unterminated string", span, "close the string with `\"` on the same line")
        if nxt in ("&&", "||") or ch == "!":
            word = {"&&": "and", "||": "or"}.get(nxt, "not")
            if nxt in ("&&", "||"):
                span = Span(line, col, line, col + 2, source, file)
            return VrSyntaxError("E103", f"unexpected `{nxt if nxt in ('&&', '||') else ch}`", span,
                                 f"vrlang writes logical operators as words: use `{word}`")
        if ch == ";":
            return VrSyntaxError("E103", "unexpected `;`", span, "statements need no terminator: remove the `;`")
        if prev == "*" and ch == "*" or nxt == "**":
            return VrSyntaxError("E103", "unexpected `*`", span, "powers are written `x ^ 2`, not `x ** 2`")
        allowed = getattr(e, "allowed", None) or set()
        if ch == "." and "DOTDOT" in allowed:
            return VrSyntaxError("E103", "unexpected `.`", span, "a range is written `a..b` (two dots)")
        shown = ch if ch.isprintable() else repr(ch)
        return VrSyntaxError("E101", f"unexpected character `{shown}`", span)

    if isinstance(e, UnexpectedToken):
        tok = e.token
        expected = set(e.expected or ())
        text = "end of file" if tok.type == "$END" else f"`{tok}`"
        width = max(len(str(tok)), 1) if tok.type != "$END" else 1
        if tok.type == "$END":
            lines = source.rstrip("\r\n").split("\n")  # lines as Lark counts them: "\n" only
            line, col = len(lines), len(lines[-1]) + 1
        span = Span(line, col, line, col + width, source, file)
        msg = f"unexpected {text}"
        hint = None
        binder = _binder_before(toks)
        if "DOTDOT" in expected and str(tok) == ":":
            hint = "a range is written `a..b`, e.g. `i in 0..n`"
        elif "DOTDOT" in expected and tok.type == "DOT":
            hint = "a range is written `a..b` (two dots), e.g. `i in 0..n`"
        elif prev == "*" and str(tok) == "*" and pos > 0 and source[pos - 1] == "*":
            msg, span = "unexpected `**`", Span(line, col - 1, line, col + 1, source, file)
            hint = "powers are written `x ^ 2`, not `x ** 2`"
        elif binder and "COLON" in expected:
            hint = f"expected `:` after the binder `{binder}`"
        elif prev == "*" and str(tok) == "*":
            hint = "powers are written `x ^ 2`, not `x ** 2`"
        elif tok.type == "EQ" and "COMPOP" not in expected and prev is not None and prev not in ("=",):
            hint = "to compare, write `==`; `=` only binds names and keyword arguments"
        elif tok.type == "$END":
            opener = _unclosed(toks)
            if opener:
                hint = f"a `{opener}` is never closed: add `{')' if opener == '(' else ']'}`"
            else:
                hint = "the program ends in the middle of a statement"
        elif expected == {"COLON"} and len(toks) >= 2 and toks[-2] in ("data", "param"):
            hint = f"`{toks[-2]} {toks[-1]}` needs a type: write e.g. `{toks[-2]} {toks[-1]}: real[n]`"
        elif expected & _STATEMENT_TERMINALS and tok.type == "NAME":
            close = difflib.get_close_matches(str(tok), STATEMENT_KEYWORDS, n=1, cutoff=0.6)
            if close:
                hint = f"did you mean `{close[0]}`?"
            else:
                hint = "every statement starts with a keyword: " + ", ".join(STATEMENT_KEYWORDS)
        elif expected & _STATEMENT_TERMINALS:
            hint = "every statement starts with a keyword: " + ", ".join(STATEMENT_KEYWORDS)
        if hint is None:
            hint = f"expected {_describe_expected(expected)}"
        return VrSyntaxError("E100", msg, span, hint)

    if isinstance(e, UnexpectedEOF):  # pragma: no cover - LALR reports $END as UnexpectedToken
        lines = source.splitlines() or [""]
        span = Span(len(lines), len(lines[-1]) + 1, len(lines), len(lines[-1]) + 2, source, file)
        return VrSyntaxError("E100", "unexpected end of file", span)
    return VrSyntaxError("E100", str(e).splitlines()[0], None)  # pragma: no cover


def parse_program(source: str, file: str | None = None) -> ast.Program:
    """Parse a whole ``.vr`` source text into an :class:`ast.Program`."""
    tree = _parse(source, "program", file)
    try:
        stmts = _ToAst(source, file).transform(tree)
    except VisitError as e:  # unwrap errors raised inside the transformer
        if isinstance(e.orig_exc, VrError):
            raise e.orig_exc.with_source(source, file) from None
        if isinstance(e.orig_exc, RecursionError):
            raise _too_deep(tree, source, file) from None
        raise
    except RecursionError:
        raise _too_deep(tree, source, file) from None
    return ast.Program(tuple(stmts), source, file)


def parse_spec(text: str, what: str = "spec") -> ast.Expr:
    """Parse an estimator/solver spec such as ``saga(batch = 4)``."""
    tree = _parse(text, "spec", f"<{what}>")
    try:
        return _ToAst(text, f"<{what}>").transform(tree)
    except VisitError as e:
        if isinstance(e.orig_exc, VrError):
            raise e.orig_exc.with_source(text, f"<{what}>") from None
        if isinstance(e.orig_exc, RecursionError):
            raise _too_deep(tree, text, f"<{what}>") from None
        raise
    except RecursionError:
        raise _too_deep(tree, text, f"<{what}>") from None


def _too_deep(tree, source: str, file: str | None) -> VrSyntaxError:
    """E104 at the most deeply nested statement (found without recursion)."""
    best, where = 0, None
    stack = [(c, 1, c) for c in getattr(tree, "children", ())]
    while stack:
        t, d, top = stack.pop()
        if d > best:
            best, where = d, top
        if isinstance(t, lark.Tree):
            stack.extend((c, d + 1, top) for c in t.children)
    span = _span(where, source, file) if isinstance(where, (lark.Tree, Token)) else None
    return VrSyntaxError("E104", "expression nested too deeply", span, "split the expression with `let` or `def`")


def _parse(source: str, start: str, file: str | None):
    if not isinstance(source, str):
        raise VrSyntaxError("E100", f"expected program text, got {type(source).__name__}")
    try:
        return _parser().parse(source, start=start)
    except UnexpectedInput as e:
        raise _syntax_error(e, source, file) from None
    except RecursionError:
        raise VrSyntaxError("E104", "expression nested too deeply", None,
                            "split the expression with `let` or `def`") from None
