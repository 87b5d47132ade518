"""Golden tests of error messages: each ``tests/golden/bad/NAME.vr`` holds one mistake and
``NAME.expected`` the exact ``VrError.render()`` output (code, message, location, source
line, caret, hint).

Programs are compiled by their path relative to the repository root, from the repository
root, so the file name in the message is machine independent.  After a deliberate change
of wording, run ``pytest tests/test_golden.py --update-golden`` and review the diff.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import vrlang

ROOT = Path(__file__).resolve().parent.parent
BAD = Path("tests") / "golden" / "bad"
CASES = sorted(p.stem for p in (ROOT / BAD).glob("*.vr"))


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def _error(name: str) -> vrlang.VrError:
    path = (BAD / f"{name}.vr").as_posix()
    with pytest.raises(vrlang.VrError) as info:
        vrlang.compile(path)
    return info.value


def test_there_are_enough_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", CASES)
def test_golden_message(name, request):
    err = _error(name)
    got = err.render() + "\n"
    expected = ROOT / BAD / f"{name}.expected"
    if request.config.getoption("--update-golden"):
        expected.write_text(got)
        return
    assert expected.is_file(), f"no golden file {expected}; run pytest --update-golden and review it"
    assert got == expected.read_text(), (
        f"the message for {name}.vr changed (run pytest --update-golden if that is intended):\n{got}")


@pytest.mark.parametrize("name", CASES)
def test_golden_error_has_code_and_location(name):
    err = _error(name)
    assert re.fullmatch(r"E\d{3}", err.code), err.code
    assert isinstance(err.line, int) and err.line >= 1, err.render()
    assert isinstance(err.column, int) and err.column >= 1, err.render()
    assert err.file == (BAD / f"{name}.vr").as_posix()
    source_lines = (ROOT / BAD / f"{name}.vr").read_text().split("\n")
    assert err.line <= len(source_lines)
    # the caret line sits under the quoted source line
    rendered = err.render().split("\n")
    assert f"--> {err.file}:{err.line}:{err.column}" in rendered[1]
    assert rendered[3].endswith(source_lines[err.line - 1].expandtabs(1)) and rendered[4].lstrip(" |").startswith("^")


def test_no_stray_golden_files():
    names = set(CASES)
    stray = [p.name for p in (ROOT / BAD).glob("*.expected") if p.stem not in names]
    assert not stray, f"golden files without a program: {stray}"
