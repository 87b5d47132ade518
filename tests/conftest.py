"""Shared pytest configuration.  Keep additions small and append below."""

from __future__ import annotations


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite tests/golden/**/*.expected from the current output instead of comparing")
