"""What `vrlang run` shows and writes: progress, the summary table, and the output files.

* :class:`EpochProgress` -- the ``on_epoch`` callback of :meth:`Program.solve`: a live
  ``rich`` bar on a terminal, a plain line every ~10% of the epochs otherwise (CI logs);
* :func:`summary_table` -- a two-column ``rich`` table of a :class:`~vrlang.Result`;
* :func:`write_outputs` -- ``result.json``, ``params.npz`` (``np.savez``, never pickled)
  and ``convergence.png`` (matplotlib's Agg canvas; pyplot's global state is not touched).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

BASE_HISTORY = ("epoch", "objective", "grad_norm", "grad_evals", "time")


# ---------------------------------------------------------------------- progress


class EpochProgress:
    """Progress over epochs, fed by ``Program.solve(on_epoch=...)``.

    ``total`` is the epoch limit (``None`` when only ``steps``/``time`` bound the solve:
    the bar is then indeterminate).  ``live=None`` picks the live bar exactly when the
    console is a terminal.  Use as a context manager; call :meth:`finish` with the
    result's history so that the last epoch is always shown.
    """

    def __init__(self, total: int | None, console=None, live: bool | None = None, enabled: bool = True):
        from rich.console import Console

        self.total = total
        self.console = console if console is not None else Console(file=sys.stdout)
        self.enabled = enabled
        self.live = self.console.is_terminal if live is None else live
        self._progress = None
        self._task = None
        self._last_printed: int | None = None

    # -- context manager
    def __enter__(self) -> "EpochProgress":
        if self.enabled and self.live:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn)

            self._progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("objective {task.fields[obj]}"), TextColumn("grad norm {task.fields[gnorm]}"),
                TimeElapsedColumn(), console=self.console, transient=False)
            self._progress.start()
            self._task = self._progress.add_task("compiling", total=self.total, obj="-", gnorm="-")
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # -- the callback
    def __call__(self, epoch: int, objective: float, grad_norm: float, time: float) -> None:
        if not self.enabled:
            return
        try:
            if self._progress is not None:
                self._progress.update(self._task, completed=epoch, description="epoch",
                                      obj=f"{objective:.6g}", gnorm=f"{grad_norm:.3e}")
            elif self._due(epoch):
                self._line(epoch, objective, grad_norm, time)
        except Exception:  # progress must never break a solve
            pass

    def finish(self, history: Mapping[str, np.ndarray]) -> None:
        """Show the final epoch (the plain log may have skipped it)."""
        if not self.enabled or len(history.get("epoch", ())) == 0:
            return
        last = len(history["epoch"]) - 1
        if self._progress is not None:
            total = self.total if self.total is not None else last
            self._progress.update(self._task, completed=last, total=max(total, last), description="done")
        elif self._last_printed is None or last > self._last_printed:
            self._line(last, float(history["objective"][-1]), float(history["grad_norm"][-1]),
                       float(history["time"][-1]))

    def _due(self, epoch: int) -> bool:
        if self._last_printed is None or epoch == 0:
            return True
        if self.total:
            return epoch >= self.total or (epoch * 10) // self.total > (self._last_printed * 10) // self.total
        # unknown length: 1, 2, 5, 10, 20, 50, ...
        mag = 10 ** int(math.log10(epoch))
        return epoch // mag in (1, 2, 5) and epoch % mag == 0

    def _line(self, epoch, objective, grad_norm, time) -> None:
        width = len(str(self.total)) if self.total else 5
        of = f"/{self.total}" if self.total else ""
        print(f"epoch {epoch:>{width}d}{of}  objective {objective:.8g}  grad norm {grad_norm:.3e}  "
              f"time {time:.3f}s", file=self.console.file, flush=True)
        self._last_printed = epoch


# ---------------------------------------------------------------------- summary


def _fmt(x: float, spec: str) -> str:
    return "nan" if x is None or not np.isfinite(x) else format(x, spec)


def summary_rows(res) -> list[tuple[str, str]]:
    """(label, value) rows describing a result."""
    h = res.history
    rows = [("status", res.status), ("message", res.message),
            ("objective", _fmt(float(h["objective"][-1]), ".10g")),
            ("grad norm", _fmt(float(h["grad_norm"][-1]), ".3e")),
            ("epochs", str(res.epochs)), ("steps", str(res.steps)),
            ("grad evals", str(int(h["grad_evals"][-1]))),
            ("time", f"{float(h['time'][-1]):.3f} s")]
    for k, v in h.items():
        if k not in BASE_HISTORY:
            rows.append((f"report {k}", _fmt(float(v[-1]), ".6g")))
    info = res.info or {}
    if "solver" in info:
        rows.append(("solver", str(info["solver"])))
    ests = estimator_text(info.get("estimators", {}))
    if ests:
        rows.append(("estimators", ests))
    if info.get("lr") is not None:
        lr = f"{info['lr']:.6g}"
        if info.get("lr_auto"):
            lr += f"  (auto: {info['lr_auto']})"
        rows.append(("lr", lr))
    elif info.get("lr_auto"):
        rows.append(("lr", str(info["lr_auto"])))
    return rows


def estimator_text(estimators: Mapping[str, str]) -> str:
    return ", ".join(f"{b} by {s}" for b, s in estimators.items())


def summary_table(res, title: str | None = None):
    from rich import box
    from rich.table import Table

    style = {"converged": "green", "max_steps": "yellow", "time_limit": "yellow", "diverged": "bold red"}
    t = Table(title=title, box=box.SIMPLE_HEAD, show_header=False, title_justify="left")
    t.add_column("", style="bold", no_wrap=True)
    t.add_column("", overflow="fold")
    for k, v in summary_rows(res):
        t.add_row(k, v, style=style.get(v) if k == "status" else None)
    return t


# ---------------------------------------------------------------------- outputs


def _jsonable(x: Any) -> Any:
    """Plain JSON: numpy scalars/arrays converted, non-finite floats written as null."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    if x is None or isinstance(x, str):
        return x
    return str(x)


def result_dict(res, *, program: str | None = None, settings: Mapping | None = None) -> dict:
    """``res.to_dict()`` plus provenance: program, settings, versions, JAX backend."""
    import jax

    import vrlang

    try:
        backend = jax.default_backend()
        devices = [str(d) for d in jax.devices()]
    except Exception:  # pragma: no cover - a broken backend must not lose the result
        backend, devices = None, []
    out = {"program": program,
           "program_path": str(Path(program).resolve()) if program else None,
           "settings": dict(settings or {}),
           **res.to_dict(),
           "vrlang_version": vrlang.__version__,
           "jax": {"version": jax.__version__, "backend": backend, "devices": devices}}
    return _jsonable(out)


def write_json(res, path: Path, **kw) -> Path:
    path.write_text(json.dumps(result_dict(res, **kw), indent=2, allow_nan=False) + "\n")
    return path


def write_params(params: Mapping[str, Any], path: Path) -> Path:
    with open(path, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in params.items()})
    return path


def plot_convergence(res, path: Path, title: str = "") -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h = res.history
    ep = np.asarray(h["epoch"], dtype=float)
    obj = np.asarray(h["objective"], dtype=float)
    gn = np.asarray(h["grad_norm"], dtype=float)
    fig = Figure(figsize=(7, 6.5), dpi=110)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    ok = np.isfinite(obj)
    ax1.plot(ep[ok], obj[ok], marker="o" if ok.sum() < 30 else None, ms=3, color="tab:blue")
    ax1.set_ylabel("objective")
    ax1.grid(alpha=0.3)
    ok = np.isfinite(gn) & (gn > 0)
    ax2.plot(ep[ok], gn[ok], marker="o" if ok.sum() < 30 else None, ms=3, color="tab:red")
    if ok.any():
        ax2.set_yscale("log")
    ax2.set_ylabel("grad norm")
    ax2.set_xlabel("epoch")
    ax2.grid(alpha=0.3, which="both")
    if res.status == "diverged":
        ax1.set_title("diverged: a NaN or inf appeared", color="tab:red", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_title(program: str | None, info: Mapping) -> str:
    name = Path(program).name if program else "<source>"
    sampled = {b: s for b, s in info.get("estimators", {}).items() if s != "full"}
    est = estimator_text(sampled) if sampled else "exact gradients"
    return f"{name}\n{est}; solve by {info.get('solver', '?')}"


def write_outputs(res, out_dir: str | Path, *, program: str | None = None,
                  settings: Mapping | None = None) -> dict[str, Path]:
    """Write result.json, params.npz and convergence.png into ``out_dir`` (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {"result": write_json(res, out / "result.json", program=program, settings=settings),
            "params": write_params(res.params, out / "params.npz"),
            "plot": plot_convergence(res, out / "convergence.png", plot_title(program, res.info or {}))}
