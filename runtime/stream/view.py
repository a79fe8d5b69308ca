"""Outputs of a live session: JSON lines flushed per window, and a rich live terminal view."""
from __future__ import annotations

import json
import os
from typing import TextIO

from ..info import DISCLAIMER_SHORT
from .session import LiveState


class JsonlSink:
    """One JSON object per line, flushed and fsynced as produced: a crash loses at most the line being written."""

    def __init__(self, path: str | os.PathLike | None, echo: TextIO | None = None):
        self.f = open(path, "a", buffering=1) if path else None
        self.echo = echo

    def __call__(self, rec: dict) -> None:
        line = json.dumps(rec)
        if self.f:
            self.f.write(line + "\n")
            self.f.flush()
            os.fsync(self.f.fileno())
        if self.echo:
            self.echo.write(line + "\n")
            self.echo.flush()

    def close(self) -> None:
        if self.f:
            self.f.close()


def meter(dbfs: float, width: int = 30) -> str:
    frac = min(max((dbfs + 80) / 80, 0.0), 1.0)
    n = int(frac * width)
    return "█" * n + "·" * (width - n) + f" {dbfs:6.1f} dBFS"


def render(state: LiveState, title: str, untrained: bool):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    c = state.counters
    head = Text(f"{title}  |  input {state.source}  |  {state.stream_seconds:6.1f} s\n", style="bold")
    head.append(f"level {meter(state.level_dbfs)}\n")
    head.append(f"windows {c.windows}  scored {c.scored}  rejected {c.rejected}  skipped {c.skipped}  "
                f"overflows {c.overflows}  dropped blocks {c.dropped_blocks}  device lost {c.device_lost}\n")
    t = Table(show_header=True, header_style="bold", expand=False)
    for col in ("window", "time (s)", "P(class 1)", "decision", "flags", "front/enc/LLM ms"):
        t.add_column(col)
    for r in list(state.recent)[-8:]:
        lat = r.get("latency_ms")
        lat_s = f"{lat['front_end']:.0f}/{lat['encoder']:.0f}/{lat['llm_and_head']:.0f}" if lat else ""
        p = f"{r['prob']:.3f}" if r.get("prob") is not None else "—"
        decision = r.get("decision") or r.get("status")
        t.add_row(str(r["window"]), f"{r['t_start_s']:.1f}–{r['t_end_s']:.1f}", p, decision,
                  ",".join(r.get("flags", [])) or r.get("reason", ""), lat_s)
    foot = Text(f"\n{DISCLAIMER_SHORT}" + ("  —  UNTRAINED MODEL: probabilities are meaningless" if untrained else "")
                + "  —  Ctrl-C to stop", style="dim")
    for e in state.events:
        foot.append(f"\n{e.get('wall_time', '')} {e.get('event', '')} {e.get('device', '')}", style="yellow")
    return Group(head, t, foot)
