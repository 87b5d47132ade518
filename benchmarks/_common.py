"""What the benchmark scripts share: the machine record and the RESULTS.md section writer.

Each script writes one section of ``benchmarks/RESULTS.md`` between ``<!-- NAME:start -->``
and ``<!-- NAME:end -->`` and records the machine it measured on (CPU, cores, memory,
versions, ``jax.devices()``, the commit and the load average), so that every figure there
says where it came from.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = ("# Benchmark results\n\nEvery number below was measured by the script named in its section; "
          "see `benchmarks/README.md`.\n\n")


def _first(path: str, prefix: str):
    try:
        for line in open(path):
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_info(watched: tuple[str, ...] = ("vrlang",), **versions) -> dict:
    """The machine and software a measurement ran on; ``versions``: extra package versions to record.

    ``commit`` notes uncommitted changes under ``watched``; ``$VRLANG_COMMIT`` overrides it (a
    copy of the tree without ``.git``, e.g. on a remote machine)."""
    import jax
    import numpy as np

    mem = _first("/proc/meminfo", "MemTotal")
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        affinity = os.cpu_count()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", *watched], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
        commit += f" ({', '.join(watched)}: uncommitted changes)" if dirty else ""
    except OSError:
        commit = "unknown"
    commit = os.environ.get("VRLANG_COMMIT", commit)
    return {"cpu": _first("/proc/cpuinfo", "model name") or "unknown", "cores": os.cpu_count(),
            "usable_cores": affinity, "ram_gib": int(mem.split()[0]) / 1024 / 1024 if mem else None,
            "python": platform.python_version(), "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": str(jax.devices()), "numpy": np.__version__, **versions, "commit": commit,
            "load_avg_start": list(os.getloadavg())}


def write_section(path: Path, name: str, section: str) -> None:
    """Put ``section`` (which starts and ends with its markers) in place of section ``name`` of ``path``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if path.exists():
        text = path.read_text()
        a, b = text.find(start), text.find(end)
        if a >= 0 and b >= 0:
            text = text[:a] + section + text[b + len(end) + 1:]
        else:
            text = text.rstrip("\n") + "\n\n" + section
    else:
        text = HEADER + section
    path.write_text(text)
