"""Progress for long work that also reads well in a log file.

On a terminal this is rich's live bar. Elsewhere (CI logs, `nohup respi-edge train ... > train.log`) a live bar draws
nothing until the end and Python block-buffers stdout, so an hour of training showed an empty log: there the same
calls write plain, flushed lines to stderr instead — a task's start, every tenth of it, and its end.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

LOG_STEP = 0.1  # a log line every tenth of a task


def progress_bar(label: str | None = None, *, transient: bool = False, disable: bool = False,
                 stream: IO[str] | None = None) -> Progress | LogProgress:
    """A rich Progress on a terminal, else a LogProgress; `label` stands for each task's description if given."""
    if not disable and not Console().is_terminal:
        return LogProgress(label, stream=stream)
    return Progress(TextColumn(label or "{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), transient=transient, disable=disable)


class _LineConsole:
    """`progress.console.print(...)` for LogProgress: one flushed line."""

    def __init__(self, write) -> None:
        self._write = write

    def print(self, *objects: Any, **_: Any) -> None:
        self._write(" ".join(str(o) for o in objects))


class LogProgress:
    """The part of rich.progress.Progress that respi-edge uses, as log lines."""

    def __init__(self, label: str | None = None, stream: IO[str] | None = None) -> None:
        self.label = label
        self.stream = stream
        self.console = _LineConsole(self._write)
        self._tasks: dict[int, dict] = {}

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _write(self, line: str) -> None:
        out = self.stream or sys.stderr
        out.write(line + "\n")
        out.flush()

    def add_task(self, description: str, total: float | None = None, **_: Any) -> int:
        tid = len(self._tasks)
        self._tasks[tid] = {"description": self.label or description, "total": total, "completed": 0.0,
                            "shown": -1, "t0": time.monotonic()}
        if total:
            self._tasks[tid]["shown"] = 0
            self._write(f"{self._tasks[tid]['description']}: 0/{_count(total)}")
        return tid

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, description: str | None = None, **_: Any) -> None:
        t = self._tasks[task_id]
        if description is not None and not self.label:
            t["description"] = description
        if total is not None:
            t["total"] = total
        if completed is not None:
            t["completed"] = completed
        if advance is not None:
            t["completed"] += advance
        if not t["total"]:
            return
        tenth = int(min(t["completed"] / t["total"], 1.0) / LOG_STEP + 1e-9)
        if tenth > t["shown"] and t["completed"] > 0:
            t["shown"] = tenth
            self._write(f"{t['description']}: {_count(t['completed'])}/{_count(t['total'])} "
                        f"({100 * t['completed'] / t['total']:.0f} %, {time.monotonic() - t['t0']:.0f} s)")


def _count(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"
