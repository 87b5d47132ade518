"""Solve status: an enumeration with a human message (as optimistix's RESULTS)."""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    RUNNING = 0
    CONVERGED = 1
    MAX_ITERATIONS = 2
    TIME_LIMIT = 3
    DIVERGED = 4

    @property
    def label(self) -> str:
        return {0: "running", 1: "converged", 2: "max_steps", 3: "time_limit", 4: "diverged"}[int(self)]

    def message(self, tol=None) -> str:
        return {
            Status.RUNNING: "the solve did not finish",
            Status.CONVERGED: f"converged: full-gradient norm below tol = {tol}",
            Status.MAX_ITERATIONS: "stopped at the epoch/step limit",
            Status.TIME_LIMIT: "stopped at the time limit",
            Status.DIVERGED: "stopped: a NaN or inf appeared; the last good parameters are returned",
        }[self]
