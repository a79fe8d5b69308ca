"""Live screening: `screen(...)` wires a source, the windowing loop, the inference worker and the outputs."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from ..info import DISCLAIMER
from .session import Counters, StreamConfig, run_stream
from .sources import FileSource, MicSource
from .view import JsonlSink, render

__all__ = ["screen", "StreamConfig", "Counters", "MicSource", "FileSource"]


class AudioSaver:
    """Writes the 16 kHz mono stream to a WAV file (only with --save-audio: audio is not kept otherwise)."""

    def __init__(self, folder: str):
        import soundfile as sf

        Path(folder).mkdir(parents=True, exist_ok=True)
        self.path = Path(folder) / time.strftime("respi-edge-%Y%m%d-%H%M%S.wav")
        self.f = sf.SoundFile(str(self.path), "w", samplerate=16000, channels=1, subtype="FLOAT")

    def write(self, y) -> None:
        self.f.write(y)

    def close(self) -> None:
        self.f.close()


def screen(session, *, device=None, file: str | None = None, realtime: bool = True, jsonl: str | None = None,
           cfg: StreamConfig | None = None, live: bool = False, echo_json: bool = False,
           save_audio: str | None = None, stop: threading.Event | None = None) -> dict:
    """Screen live audio (or a replayed file) in 8.18-s windows every hop; returns the session summary.

    live: draw the rich live view (the caller decides: the CLI does on a terminal); echo_json: JSON lines to
    stdout as well as to `jsonl`."""
    cfg = cfg or StreamConfig()
    source = FileSource(file, realtime=realtime) if file else MicSource(device)
    sink = JsonlSink(jsonl, echo=sys.stdout if echo_json else None)
    saver = AudioSaver(save_audio) if save_audio else None
    model = session.model
    device_info = model.device
    title = f"{session.task.id} | {model.info.name} | {device_info}"
    sink({"type": "event", "event": "session_start", "task": session.task.id, "model": model.info.name,
          "untrained": model.info.untrained, "caveats": model.info.caveats, "threshold": session.threshold,
          "compute": device_info, "hop_s": cfg.hop, "disclaimer": DISCLAIMER,
          "wall_time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    t0 = time.monotonic()
    try:
        if live:
            from rich.live import Live

            with Live(render_empty(title), refresh_per_second=4, transient=False) as lv:
                counters = run_stream(session, source, sink, cfg, on_tick=lambda st: lv.update(
                    render(st, title, model.info.untrained)), save_audio=saver, stop=stop)
        else:
            counters = run_stream(session, source, sink, cfg, save_audio=saver, stop=stop)
    finally:
        if saver:
            saver.close()
    summary = {"type": "summary", "seconds": round(time.monotonic() - t0, 1), **vars(counters),
               "saved_audio": str(saver.path) if saver else None, "disclaimer": DISCLAIMER}
    sink(summary)
    sink.close()
    return summary


def render_empty(title: str):
    from rich.text import Text

    return Text(f"{title}: starting capture…")
