"""Names, types and shapes: the errors the checker (and data binding) report.

Each case pins the exception class, the stable code, the line and column of the
offending sub-expression, and checks that ``render()`` puts a caret under exactly that
sub-expression.  Data errors (E4xx) are raised when data arrive, before any JAX work.
"""

from __future__ import annotations

import numpy as np
import pytest

import vrlang
from vrlang.errors import VrDataError, VrEstimatorError, VrTypeError


def _caret_text(err: vrlang.VrError) -> str:
    """The source text that ``render()`` underlines with carets (checks the layout too)."""
    lines = err.render().splitlines()
    assert lines[0].startswith(f"error[{err.code}]: ")
    assert any(f":{err.line}:{err.column}" in ln for ln in lines), "render() names line:column"
    (k,) = [k for k, ln in enumerate(lines) if ln.lstrip().startswith(f"{err.line} | ")]
    src_line = lines[k].split(" | ", 1)[1]
    caret_line = lines[k + 1]
    bar = caret_line.index("|")
    marks = caret_line[bar + 2:]
    assert set(marks.strip()) == {"^"}, caret_line
    start = len(marks) - len(marks.lstrip())
    assert start == err.column - 1
    return src_line[start:start + len(marks.strip())]


def _compile_error(src: str, cls=VrTypeError, **kw) -> vrlang.VrError:
    with pytest.raises(cls) as ei:
        vrlang.compile(src, **kw)
    assert isinstance(ei.value, vrlang.VrError)
    return ei.value


# ------------------------------------------------------- errors at a sub-expression

# (id, source, class, code, line, column, underlined text, words the message must contain)
CASES = [
    ("shape_mismatch_add",
     "data X: real[n, d]\ndata Z: real[m, k]\nparam w: real[k]\nminimize mean(i in 0..n: sumsq(X[i] + w))",
     VrTypeError, "E211", 4, 32, "X[i] + w", ["[d]", "[k]", "`+`"]),
    ("shape_mismatch_literal",
     "param w: real[3]\nparam v: real[2]\nminimize sumsq(w * v) + 1",
     VrTypeError, "E211", 3, 16, "w * v", ["[3]", "[2]"]),
    ("matmul_inner_dims",
     "data X: real[n, d]\nparam w: real[n]\nminimize sum(X @ w)",
     VrTypeError, "E212", 3, 14, "X @ w", ["[n, d]", "[n]"]),
    ("dot_inner_dims",
     "data X: real[n, d]\nparam w: real[d]\nparam v: real[n]\nminimize dot(w, v)",
     VrTypeError, "E212", 4, 10, "dot(w, v)", ["[d]", "[n]"]),
    ("unknown_name_did_you_mean",
     "data X: real[n, d]\nparam weights: real[d]\nminimize sumsq(X @ weight)",
     VrTypeError, "E264", 3, 20, "weight", ["`weight`"]),
    ("unknown_function_did_you_mean",
     "param w: real[3]\nminimize 2 * sumsqr(w)",
     VrTypeError, "E274", 2, 14, "sumsqr", ["`sumsqr`"]),
    ("unknown_function",
     "param w: real[3]\nminimize frobnicate(w)",
     VrTypeError, "E274", 2, 10, "frobnicate", ["`frobnicate`"]),
    ("builtin_arity",
     "param w: real[3]\nminimize 1 + dot(w)",
     VrTypeError, "E213", 2, 14, "dot(w)", ["`dot`", "2", "1"]),
    ("def_missing_argument",
     "def f(a: real, b: real) = a * b\nparam w: real\nminimize f(w)",
     VrTypeError, "E213", 3, 10, "f(w)", ["`f`", "b"]),
    ("def_too_many_arguments",
     "def f(a: real, b: real) = a * b\nparam w: real\nminimize w + f(w, w, w)",
     VrTypeError, "E213", 3, 14, "f(w, w, w)", ["`f`", "2", "3"]),
    ("def_argument_shape",
     "data X: real[n, d]\nparam w: real[d]\ndef f(v: real[d], x: real[d]) = dot(v, x)\nminimize f(w, X)",
     VrTypeError, "E278", 4, 15, "X", ["`x`", "real[n, d]"]),
    ("binder_used_twice",
     "data X: real[n, d]\nparam w: real[d]\nminimize mean(i in 0..n: dot(X[i], w)) + sum(i in 0..n: X[i, 0])",
     VrTypeError, "E280", 3, 46, "i in 0..n", ["`i`", "twice"]),
    ("binder_shadows_param",
     "data X: real[n, d]\nparam w: real[d]\nminimize mean(w in 0..n: X[w, 0])",
     VrTypeError, "E283", 3, 15, "w in 0..n", ["`w`"]),
    ("estimate_names_a_param",
     "data X: real[n, d]\nparam w: real[d]\nminimize mean(i in 0..n: dot(X[i], w) ^ 2)\nestimate w by sgd(batch = 2)",
     VrTypeError, "E250", 4, 10, "w", ["`w`", "not a binder"]),
    ("estimate_misspelled_binder",
     "data X: real[n, d]\nparam w: real[d]\nminimize mean(item in 0..n: dot(X[item], w) ^ 2)\n"
     "estimate itm by sgd(batch = 2)",
     VrTypeError, "E250", 4, 10, "itm", ["`itm`"]),
    ("objective_not_scalar",
     "data X: real[n, d]\nparam w: real[d]\nminimize X @ w",
     VrTypeError, "E233", 3, 10, "X @ w", ["real[n]"]),
    ("objective_is_a_comparison",
     "param w: real\nminimize w < 2",
     VrTypeError, "E233", 2, 10, "w < 2", ["bool"]),
    ("two_objectives",
     "param w: real\nminimize w ^ 2\nmaximize w",
     VrTypeError, "E231", 3, 1, "maximize w", ["objective"]),
    ("const_shape_mismatch",
     "const lam: real[2] = [1, 2, 3]\nparam w: real\nminimize lam[0] * w ^ 2",
     VrTypeError, "E206", 1, 22, "[1, 2, 3]", ["real[2]", "[3]"]),
    ("const_int_not_integer",
     "const k: int = 2.5\nparam w: real\nminimize w ^ 2",
     VrTypeError, "E206", 1, 16, "2.5", ["int"]),
    ("init_outside_positive",
     "param s: real in positive = -1\nminimize s",
     VrTypeError, "E209", 1, 29, "-1", ["`s`", "positive"]),
    ("init_outside_simplex",
     "param p: real[3] in simplex = [0.5, 0.5, 0.5]\nminimize sum(p)",
     VrTypeError, "E209", 1, 31, "[0.5, 0.5, 0.5]", ["`p`", "simplex"]),
    ("init_outside_box",
     "param b: real in [0, 1] = 2\nminimize b",
     VrTypeError, "E209", 1, 27, "2", ["`b`", "box"]),
    ("init_outside_unit_interval",
     "param q: real[2] in unit_interval = 1\nminimize sum(q)",
     VrTypeError, "E209", 1, 37, "1", ["`q`", "unit_interval"]),
    ("unknown_constraint_did_you_mean",
     "param w: real in positiv\nminimize w",
     VrTypeError, "E208", 1, 18, "positiv", ["`positiv`"]),
    ("simplex_needs_vector",
     "param P: real[2, 2] in simplex\nminimize sum(P)",
     VrTypeError, "E208", 1, 24, "simplex", ["real[2, 2]"]),
    ("undeclared_shape_symbol",
     "data X: real[n, d]\nparam w: real[k]\nminimize sum(w)",
     VrTypeError, "E204", 2, 10, "real[k]", ["`k`"]),
    ("static_range_exceeds_axis",
     "param w: real[3]\nminimize sum(i in 0..4: w[i])",
     VrTypeError, "E272", 2, 27, "i", ["`i`", "4", "3"]),
    ("static_range_exceeds_axis_of_expression",
     "param w: real[3]\nminimize sum(i in 0..4: (2 * w)[i])",
     VrTypeError, "E272", 2, 33, "i", ["`i`", "4", "3"]),
    ("index_not_integer",
     "data X: real[n, d]\nminimize sum(X[0.5])",
     VrTypeError, "E271", 2, 16, "0.5", ["real"]),
    ("too_many_indices",
     "data X: real[n, d]\nminimize sum(X[0, 1, 2])",
     VrTypeError, "E270", 2, 14, "X[0, 1, 2]", ["3"]),
    ("param_called_as_function",
     "param w: real[3]\nminimize w(3)",
     VrTypeError, "E263", 2, 10, "w", ["`w`"]),
    ("bool_in_arithmetic",
     "param w: real[3]\nminimize sum((w > 0) + 1)",
     VrTypeError, "E210", 2, 15, "w > 0", ["bool"]),
    ("where_needs_condition",
     "param w: real[3]\nminimize sum(where(w, 1, 0))",
     VrTypeError, "E210", 2, 14, "where(w, 1, 0)", ["real[3]"]),
    ("duplicate_declaration",
     "param w: real\nlet w = 2\nminimize w",
     VrTypeError, "E201", 2, 1, "let w = 2", ["`w`"]),
    ("builtin_redeclared",
     "param sum: real\nminimize sum",
     VrTypeError, "E202", 1, 1, "param sum: real", ["`sum`"]),
    ("unknown_library",
     "use std.lossez\nparam w: real\nminimize w",
     VrTypeError, "E241", 1, 1, "use std.lossez", ["std.lossez"]),
    ("estimate_twice",
     "data x: real[n]\nparam w: real\nminimize mean(i in 0..n: x[i] * w)\n"
     "estimate i by sgd(batch = 2)\nestimate i by sgd(batch = 3)",
     VrTypeError, "E251", 5, 1, "estimate i by sgd(batch = 3)", ["`i`"]),
    ("unknown_estimator_did_you_mean",
     "data x: real[n]\nparam w: real\nminimize mean(i in 0..n: x[i] * w)\nestimate i by svrgg(batch = 2)",
     VrEstimatorError, "E304", 4, 15, "svrgg(batch = 2)", ["`svrgg`"]),
]


@pytest.mark.parametrize("id_, src, cls, code, line, col, text, words", CASES, ids=[c[0] for c in CASES])
def test_compile_error(id_, src, cls, code, line, col, text, words):
    err = _compile_error(src, cls)
    assert type(err) is cls
    assert (err.code, err.line, err.column) == (code, line, col), err.render()
    assert _caret_text(err) == text, err.render()
    for w in words:
        assert w in err.message, (w, err.message)
    d = err.to_dict()
    assert (d["code"], d["line"], d["column"], d["kind"]) == (code, line, col, cls.__name__)


DID_YOU_MEAN = {
    "unknown_name_did_you_mean": "`weights`",
    "unknown_function_did_you_mean": "`sumsq`",
    "estimate_misspelled_binder": "`item`",
    "unknown_constraint_did_you_mean": "`positive`",
    "unknown_library": "std.losses",
    "unknown_estimator_did_you_mean": "`svrg`",
}


@pytest.mark.parametrize("id_", sorted(DID_YOU_MEAN))
def test_did_you_mean_hints(id_):
    (src, cls) = next((c[1], c[2]) for c in CASES if c[0] == id_)
    err = _compile_error(src, cls)
    assert err.hint is not None and "did you mean" in err.hint and DID_YOU_MEAN[id_] in err.hint
    assert f"= hint: {err.hint}" in err.render()


def test_no_did_you_mean_for_unrelated_names():
    err = _compile_error("param w: real[3]\nminimize frobnicate(w)")
    assert "did you mean" not in (err.hint or "")


def test_shape_mismatch_render_shows_both_shapes_and_caret():
    src = "data X: real[n, d]\ndata Z: real[m, k]\nparam w: real[k]\nminimize mean(i in 0..n: sumsq(X[i] + w))"
    err = _compile_error(src)
    text = err.render()
    assert "[d]" in text and "[k]" in text
    assert "4 | minimize mean(i in 0..n: sumsq(X[i] + w))" in text
    caret = [ln for ln in text.splitlines() if "^" in ln]
    assert len(caret) == 1 and caret[0].endswith(" " * 31 + "^" * len("X[i] + w"))
    assert "<source>:4:32" in text


def test_binder_used_twice_hint_points_at_first():
    src = "data X: real[n, d]\nparam w: real[d]\nminimize mean(i in 0..n: dot(X[i], w))\n+ sum(i in 0..n: X[i, 0])"
    err = _compile_error(src)
    assert (err.code, err.line, err.column) == ("E280", 4, 7)
    assert "line 3" in err.hint


def test_missing_objective():
    err = _compile_error("data x: real[n]\nparam w: real\nconst c = 1\n")
    assert err.code == "E232" and "no objective" in err.message
    assert err.line == 3  # at the end of the program
    assert "minimize" in err.hint


def test_wrong_argument_to_library_def_reported_at_call_site():
    # an argument of the wrong shape is reported at the call site of the program
    err = _compile_error("use std.losses\nparam w: real[2]\nminimize logistic(w)")
    assert err.code == "E278" and err.line == 3 and _caret_text(err) == "w"


def test_const_override_checked_against_declaration():
    src = "const lam: real = 0.1\nparam w: real\nminimize lam * w ^ 2"
    with pytest.raises(VrTypeError) as ei:
        vrlang.compile(src, consts={"lam": [1.0, 2.0]})
    assert ei.value.code == "E293" and "lam" in ei.value.message
    with pytest.raises(VrTypeError) as ei:
        vrlang.compile(src, consts={"lamb": 1.0})
    assert ei.value.code == "E292" and "lamb" in ei.value.message


# ---------------------------------------------------------------- errors at data time

SRC_XY = """data X: real[n, d]
data y: real[n]
param w: real[d]
minimize mean(i in 0..n: (dot(X[i], w) - y[i]) ^ 2)
"""


@pytest.fixture(scope="module")
def prog_xy():
    return vrlang.compile(SRC_XY, x64=True)


def _data_error(fn) -> VrDataError:
    with pytest.raises(VrDataError) as ei:
        fn()
    return ei.value


def test_index_range_checked_when_data_arrive():
    src = """data X: real[n, d]
data y: real[m]
param w: real[d]
minimize mean(i in 0..m: (dot(X[i], w) - y[i]) ^ 2)
"""
    prog = vrlang.compile(src, x64=True)  # m and n are unknown until data arrive: accepted
    w = {"w": np.zeros(3)}
    err = _data_error(lambda: prog.objective(w, {"X": np.ones((4, 3)), "y": np.ones(6)}))
    assert (err.code, err.line, err.column) == ("E412", 4, 33)
    assert _caret_text(err) == "i"
    assert "`i`" in err.message and "6" in err.message and "4" in err.message and "`X`" in err.message
    # m <= n is fine
    assert prog.objective(w, {"X": np.ones((6, 3)), "y": np.ones(4)}) == pytest.approx(1.0)
    # solve checks it too
    err = _data_error(lambda: prog.solve(data={"X": np.ones((4, 3)), "y": np.ones(6)}))
    assert err.code == "E412"


def test_index_range_of_an_expression_checked_when_data_arrive():
    # JAX would clamp the out-of-range index silently: it must be refused
    src = """data X: real[n, d]
data y: real[m]
param w: real[d]
minimize mean(i in 0..m: (X @ w)[i] * y[i])
"""
    prog = vrlang.compile(src, x64=True)
    err = _data_error(lambda: prog.objective({"w": np.ones(3)}, {"X": np.ones((4, 3)), "y": np.ones(6)}))
    assert (err.code, err.line, err.column) == ("E412", 4, 34)
    assert "X @ w" in err.message


def test_nan_in_data_names_array_and_index(prog_xy):
    X = np.ones((4, 3))
    X[2, 1] = np.nan
    err = _data_error(lambda: prog_xy.objective({"w": np.zeros(3)}, {"X": X, "y": np.zeros(4)}))
    assert err.code == "E411"
    assert "`X`" in err.message and "NaN" in err.message and "[2, 1]" in err.message
    assert (err.line, err.column) == (1, 1)  # the declaration of X
    assert _caret_text(err) == "data X: real[n, d]"


def test_inf_in_data_at_solve(prog_xy):
    y = np.array([0.0, np.inf, 1.0, 2.0])
    err = _data_error(lambda: prog_xy.solve(data={"X": np.ones((4, 3)), "y": y}))
    assert err.code == "E411" and "`y`" in err.message and "inf" in err.message and "[1]" in err.message
    assert err.line == 2


def test_shape_symbol_inconsistent_between_arrays(prog_xy):
    err = _data_error(lambda: prog_xy.objective({"w": np.zeros(3)}, {"X": np.ones((4, 3)), "y": np.zeros(5)}))
    assert err.code == "E409"
    assert "`n`" in err.message and "4" in err.message and "5" in err.message
    assert "`X`" in err.message and "`y`" in err.message
    assert (err.line, err.column) == (2, 1)


def test_wrong_rank(prog_xy):
    err = _data_error(lambda: prog_xy.objective({"w": np.zeros(3)}, {"X": np.ones((4, 3)), "y": np.zeros((4, 1))}))
    assert err.code == "E408"
    assert "`y`" in err.message and "rank 1" in err.message and "rank 2" in err.message
    assert (err.line, err.column) == (2, 1)
    err = _data_error(lambda: prog_xy.objective({"w": np.zeros(3)}, {"X": np.ones(4), "y": np.zeros(4)}))
    assert err.code == "E408" and "`X`" in err.message and err.line == 1


def test_fixed_dimension_mismatch():
    prog = vrlang.compile("data x: real[3]\nparam w: real\nminimize w * sum(x)")
    err = _data_error(lambda: prog.objective({"w": 1.0}, {"x": np.ones(4)}))
    assert err.code == "E408" and "3" in err.message and "4" in err.message


def test_missing_and_unknown_data(prog_xy):
    err = _data_error(lambda: prog_xy.objective({"w": np.zeros(3)}, {"X": np.ones((4, 3))}))
    assert err.code == "E406" and "`y`" in err.message and err.line == 2
    err = _data_error(lambda: prog_xy.objective({"w": np.zeros(3)},
                                                 {"X": np.ones((4, 3)), "y": np.ones(4), "Z": np.ones(2)}))
    assert err.code == "E405" and "`Z`" in err.message


def test_int_data_must_hold_integers():
    prog = vrlang.compile("data y: int[n]\nparam w: real[3]\nminimize sum(i in 0..n: w[y[i]])")
    err = _data_error(lambda: prog.objective({"w": np.zeros(3)}, {"y": np.array([0.0, 1.5])}))
    assert err.code == "E410" and "`y`" in err.message


def test_params_must_match(prog_xy):
    data = {"X": np.ones((4, 3)), "y": np.ones(4)}
    err = _data_error(lambda: prog_xy.objective({"v": np.zeros(3)}, data))
    assert err.code == "E420" and "missing w" in err.message and "unknown v" in err.message
