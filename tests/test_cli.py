"""The command line (LANGUAGE.md §7): run/check/explain/repl, exit codes, output files."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vrlang import cli

ROOT = Path(__file__).resolve().parent.parent
LOGREG = str(ROOT / "examples" / "logreg.vr")
RIDGE = str(ROOT / "examples" / "ridge.vr")
FAST = "sgd(lr = 0.5, epochs = 5)"


def _strict_json(path: Path) -> dict:
    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")
    return json.loads(path.read_text(), parse_constant=no_constants)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """One default run of logreg (shared by several tests)."""
    out = tmp_path_factory.mktemp("base")
    cap = io.StringIO()
    old, sys.stdout = sys.stdout, cap
    try:
        code = cli.main(["run", LOGREG, "--out", str(out), "--solve", FAST])
    finally:
        sys.stdout = old
    return code, out, cap.getvalue()


# ------------------------------------------------------------------------- run


def test_run_writes_result_params_and_plot(baseline):
    code, out, stdout = baseline
    assert code == 0
    res = _strict_json(out / "result.json")
    assert res["status"] == "max_steps"
    assert len(res["history"]["objective"]) == 6  # epoch 0 .. 5
    assert res["history"]["objective"][-1] < res["history"]["objective"][0]
    assert res["program"] == LOGREG and res["settings"]["solver"] == FAST and res["settings"]["seed"] == 0
    assert res["vrlang_version"] and res["jax"]["backend"]
    with np.load(out / "params.npz", allow_pickle=False) as z:
        assert z.files == ["w"] and z["w"].shape == (30,)
        np.testing.assert_allclose(z["w"], res["params"]["w"], rtol=1e-6)
    png = (out / "convergence.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    # progress lines (stdout is not a terminal here), the summary table, where the files went
    assert "epoch 0/5" in stdout and "epoch 5/5" in stdout
    for word in ("status", "max_steps", "objective", "grad norm", "grad evals", "report accuracy", "lr", "0.5"):
        assert word in stdout, word
    assert str(out / "result.json") in stdout


def test_set_const_changes_the_result(baseline, tmp_path, capsys):
    _, base, _ = baseline
    assert cli.main(["run", LOGREG, "--out", str(tmp_path), "--solve", FAST, "--set", "lam=0.1", "--quiet"]) == 0
    res = _strict_json(tmp_path / "result.json")
    ref = _strict_json(base / "result.json")
    assert res["settings"]["consts"] == {"lam": 0.1}
    assert res["objective"] > ref["objective"] + 0.05  # much stronger regularisation
    assert np.linalg.norm(res["params"]["w"]) < np.linalg.norm(ref["params"]["w"])
    out = capsys.readouterr().out
    assert "max_steps" in out and "epoch" not in out  # --quiet: one line, no progress


def test_estimate_full(tmp_path, capsys):
    assert cli.main(["run", LOGREG, "--out", str(tmp_path), "--estimate", "i=full",
                     "--solve", "sgd(lr = 1, epochs = 3)"]) == 0
    res = _strict_json(tmp_path / "result.json")
    assert res["info"]["estimators"]["i"] == "full"
    assert res["steps"] == 3  # one full-gradient step per epoch
    assert "i by full" in capsys.readouterr().out


def test_data_from_npz(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 5))
    y = np.sign(X @ np.arange(1.0, 6.0))
    np.savez(tmp_path / "mine.npz", X=X, y=y)
    out = tmp_path / "out"
    assert cli.main(["run", LOGREG, "--data", str(tmp_path / "mine.npz"), "--out", str(out),
                     "--solve", "sgd(lr = 0.5, epochs = 4)"]) == 0
    with np.load(out / "params.npz") as z:
        assert z["w"].shape == (5,)
    assert _strict_json(out / "result.json")["settings"]["data"] == str(tmp_path / "mine.npz")


def test_missing_data_file_is_a_user_error(tmp_path, capsys):
    assert cli.main(["run", LOGREG, "--data", str(tmp_path / "nope.npz"), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "E401" in err and "Traceback" not in err


def test_diverging_run_exits_3_and_still_writes(tmp_path, capsys):
    code = cli.main(["run", RIDGE, "--out", str(tmp_path), "--solve", "sgd(lr = 10, epochs = 40)"])
    assert code == 3
    res = _strict_json(tmp_path / "result.json")  # strict JSON even with inf/NaN around
    assert res["status"] == "diverged"
    assert (tmp_path / "params.npz").is_file() and (tmp_path / "convergence.png").is_file()
    cap = capsys.readouterr()
    assert "diverged" in cap.out and "diverged" in cap.err


# ------------------------------------------------------------------- mistakes


def test_set_without_equals_is_usage_error(capsys):
    assert cli.main(["run", LOGREG, "--set", "lam"]) == 2
    err = capsys.readouterr().err
    assert "usage: vrlang run" in err and "NAME=VALUE" in err


@pytest.mark.parametrize("text", ["lam=abc", "lam=nan", "=3", "lam=1,,2"])
def test_bad_set_values_are_usage_errors(text, capsys):
    assert cli.main(["run", LOGREG, "--set", text]) == 2
    assert "argument --set" in capsys.readouterr().err


def test_parse_value_never_evaluates():
    assert cli.parse_value("1e-3") == 1e-3
    np.testing.assert_array_equal(cli.parse_value("1, 2,3"), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(cli.parse_value("[0.5,1]"), [0.5, 1.0])
    with pytest.raises(ValueError):
        cli.parse_value("__import__('os').getcwd()")
    assert cli.parse_estimate("i=svrg(batch = 16)") == ("i", "svrg(batch = 16)")


def test_unknown_const_and_estimator_are_vr_errors(capsys):
    assert cli.main(["run", LOGREG, "--set", "nope=1"]) == 1
    assert cli.main(["run", LOGREG, "--estimate", "i=sag"]) == 1
    err = capsys.readouterr().err
    assert "`nope` is not a const" in err and "saga" in err and "Traceback" not in err


def test_missing_program_file(capsys):
    assert cli.main(["check", "no/such/file.vr"]) == 1
    assert "E400" in capsys.readouterr().err


def test_no_command_and_help(capsys):
    assert cli.main([]) == 2
    assert cli.main(["--help"]) == 0
    assert "run" in capsys.readouterr().out


# --------------------------------------------------------------- check/explain


def test_check_ok(capsys):
    assert cli.main(["check", LOGREG]) == 0
    assert capsys.readouterr().out.strip() == f"ok: {LOGREG} (1 param, 2 binders)"


BAD = """data X: real[n, d] from "x.npz"
param w: real[d]
minimize sum(w * q)
"""


def test_check_bad_program(tmp_path, capsys):
    bad = tmp_path / "bad.vr"
    bad.write_text(BAD)
    assert cli.main(["check", str(bad)]) == 1
    cap = capsys.readouterr()
    assert cap.out == ""
    assert "error[E264]: unknown name `q`" in cap.err
    assert f"{bad}:3:18" in cap.err
    assert "3 | minimize sum(w * q)" in cap.err and "|                  ^" in cap.err
    assert "Traceback" not in cap.err


def test_explain_stages(capsys):
    assert cli.main(["explain", LOGREG, "--stage", "ir"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("objective (minimize):") and "report accuracy:" in out
    assert cli.main(["explain", LOGREG, "--estimate", "i=saga(batch = 4)"]) == 0
    out = capsys.readouterr().out
    assert "binders:" in out and "saga(batch = 4)" in out
    assert cli.main(["explain", LOGREG, "--stage", "bogus"]) == 2


def test_main_reads_sys_argv(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["vrlang", "check", LOGREG])
    assert cli.main() == 0
    assert "ok:" in capsys.readouterr().out


# --------------------------------------------------------------- entry points


def test_real_entry_points(tmp_path):
    bad = tmp_path / "bad.vr"
    bad.write_text(BAD)
    script = ROOT / ".venv" / "bin" / "vrlang"
    exe = [str(script)] if script.is_file() else [sys.executable, "-m", "vrlang"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    p = subprocess.run(exe + ["check", str(bad)], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 1, p.stderr
    assert "error[E264]" in p.stderr and "^" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "-m", "vrlang", "check", LOGREG], capture_output=True, text=True,
                       timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("ok:")


# ----------------------------------------------------------------------- repl


def test_repl_scripted(monkeypatch, capsys):
    script = "\n".join([
        ":help",
        f":load {LOGREG}",
        "let z = undefined_name + 1",  # rejected; the program keeps going
        "const c: real = 2",  # accepted
        "report wn = sumsq(",  # continues on the next line
        "w)",
        ":set lam=0.01",
        ":set lam",  # a bad command: reported, not fatal
        ":estimate i=sgd(batch = 64)",
        ":frobnicate",
        ":explain",
        ":solve sgd(lr = 0.5, epochs = 2)",
        ":params",
        ":show",
        ":quit",
        ":help",  # never read
    ]) + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    assert cli.main(["repl"]) == 0
    cap = capsys.readouterr()
    out, err = cap.out, cap.err
    assert "loaded" in out and "(1 param, 2 binders)" in out
    assert "unknown name `undefined_name`" in err and "Traceback" not in err
    assert "unknown command `:frobnicate`" in err
    assert out.count("ok") >= 2
    assert "sgd(batch = 64)" in out and "lam = 0.01" in out
    assert "report wn" in out and "max_steps" in out  # solved with the statement added in the repl
    assert "w: real[d] = [" in out
    shown = out[out.index("   1  "):]
    assert "const c: real = 2" in shown and "undefined_name" not in shown
    assert out.count("commands:") == 1  # stopped at :quit


def test_repl_without_file_and_eof(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("param w: real[2]\n:solve\n:params\n"))
    assert cli.main(["repl"]) == 0
    cap = capsys.readouterr()
    assert "ok (no objective yet)" in cap.out
    assert "no objective yet" in cap.err
