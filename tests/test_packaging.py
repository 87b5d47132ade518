"""The wheel ships the grammar and the standard library, and an installed copy finds them."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_grammar_and_stdlib_and_works_when_installed(tmp_path):
    hatchling = pytest.importorskip("hatchling.builders.wheel")
    builder = hatchling.WheelBuilder(str(ROOT))
    wheel = Path(next(builder.build(directory=str(tmp_path / "dist"), versions=["standard"])))
    names = zipfile.ZipFile(wheel).namelist()
    assert "vrlang/grammar/vrlang.lark" in names
    assert "vrlang/stdlib/std/losses.vr" in names
    assert "vrlang/stdlib/std/regularizers.vr" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # run from an unrelated folder with only the unpacked wheel on the path: resources must resolve inside it
    code = ("import vrlang, vrlang.resources as r; "
            "assert str(r.grammar_path()).startswith(%r), r.grammar_path(); "
            "p = vrlang.compile('use std.losses\\nparam w: real[3]\\nminimize sum(w * w) + logistic(w[0])'); "
            "print(p.objective({'w': [0.0, 1.0, 2.0]}))") % str(site)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert abs(float(out.stdout.strip()) - (5.0 + 0.6931471805599453)) < 1e-5


def test_grammar_names_every_terminal():
    text = (ROOT / "grammar" / "vrlang.lark").read_text()
    body = [ln for ln in text.splitlines() if not ln.lstrip().startswith("//")]
    rules = [ln for ln in body if ln and ln[0].islower() or ln.startswith(("?", " ", "\t"))]
    # anonymous string terminals inside rules would show up as __ANON in messages
    assert not any('"' in ln for ln in rules), [ln for ln in rules if '"' in ln]
