"""The live screening loop: source → mono 16 kHz → ring buffer → every hop, the latest 8.18-s window → worker.

    PortAudio callback ──copy──► queue ──► [main loop] mixdown + soxr stream ──► ring buffer (130 880 samples)
                                                │ every hop (default 2 s)
                                                ▼
                                 quality gates ──fail──► "rejected" line (reason)
                                                │ ok
                                    worker busy? ──yes──► "skipped" line (counted; the callback never waits)
                                                │ no
                                    [worker thread] log-mel ► encoder ► LLM on the cached prefix ► P(condition)

What differs from the file path (`predict`): the window is the last 8.18 s of live audio as it is — no silence
trimming and no first-window selection or cyclic padding; windows overlap by 8.18 s − hop. A window is scored
only once the ring holds 8.18 s of live audio.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .. import contract as C
from ..audio import AudioError, spec_from_window
from ..errors import DeviceError
from . import quality
from .buffers import RingBuffer, ToMono16k


@dataclass
class Counters:
    windows: int = 0
    scored: int = 0
    rejected: int = 0
    skipped: int = 0
    device_lost: int = 0
    device_restored: int = 0
    overflows: int = 0
    dropped_blocks: int = 0


@dataclass
class Job:
    index: int
    window: np.ndarray
    end_sample: int  # 16 kHz samples of live audio up to the window's end
    captured: float  # monotonic time the window's last block arrived
    emitted: float  # monotonic time the window was cut
    q: quality.Quality


@dataclass
class StreamConfig:
    hop: float = 2.0
    duration: float | None = None
    stall_seconds: float = 1.5
    backoff: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    slow_inference: float = 0.0  # testing: extra seconds per scored window (forces overload)
    history: int = 8


class Worker(threading.Thread):
    """Scores one window at a time; `offer` hands a window over only if the worker is idle."""

    def __init__(self, session, emit: Callable[[dict], None], slow: float = 0.0):
        super().__init__(name="inference", daemon=True)
        self.session, self.emit, self.slow = session, emit, slow
        self.job: Job | None = None
        self.cv = threading.Condition()
        self.busy = False
        self.stopping = False

    def offer(self, job: Job) -> bool:
        with self.cv:
            if self.busy:
                return False
            self.job, self.busy = job, True
            self.cv.notify()
            return True

    def stop(self) -> None:
        with self.cv:
            self.stopping = True
            self.cv.notify()

    def run(self) -> None:
        while True:
            with self.cv:
                while self.job is None and not self.stopping:
                    self.cv.wait()
                if self.job is None:
                    return
                job = self.job
            try:
                self.emit(self.score(job))
            finally:
                with self.cv:
                    self.job, self.busy = None, False

    def score(self, job: Job) -> dict:
        t0 = time.monotonic()
        model = self.session.model
        rec = window_record(job)
        try:
            spec = spec_from_window(job.window, name=f"window {job.index}")
        except AudioError as e:
            rec.update(status="rejected", reason=str(e))
            return rec
        t1 = time.monotonic()
        emb = model.embed_audio(spec)
        t2 = time.monotonic()
        logits = model.score(self.session.prefix, emb)[0]
        t3 = time.monotonic()
        if self.slow:
            time.sleep(self.slow)
        p = self.session.prediction(logits, f"window {job.index}")
        rec.update(status="scored", prob=p.prob, decision=p.decision, positive=p.positive, threshold=p.threshold,
                   logits=p.logits)
        rec["latency_ms"] = {"capture_to_window": 1000 * (job.emitted - job.captured),
                             "queue": 1000 * (t0 - job.emitted), "front_end": 1000 * (t1 - t0),
                             "encoder": 1000 * (t2 - t1), "llm_and_head": 1000 * (t3 - t2),
                             "total": 1000 * (time.monotonic() - job.captured)}
        return rec


def window_record(job: Job) -> dict:
    t_end = job.end_sample / C.SAMPLE_RATE
    return {"type": "window", "window": job.index, "t_end_s": round(t_end, 3),
            "t_start_s": round(t_end - C.WINDOW_SECONDS, 3), "end_sample": job.end_sample,
            "wall_time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime()),
            "flags": list(job.q.flags), "rms_dbfs": round(job.q.rms_dbfs, 1)}


@dataclass
class LiveState:
    level_dbfs: float = -120.0
    recent: deque = field(default_factory=lambda: deque(maxlen=8))
    counters: Counters = field(default_factory=Counters)
    events: deque = field(default_factory=lambda: deque(maxlen=4))
    source: str = ""
    device: str = ""
    stream_seconds: float = 0.0


def run_stream(session, source, emit: Callable[[dict], None], cfg: StreamConfig,
               on_tick: Callable[[LiveState], None] | None = None, save_audio=None,
               stop: threading.Event | None = None) -> Counters:
    """Run until `cfg.duration` stream seconds, the end of a file source, `stop`, or Ctrl-C; returns the counters."""
    stop = stop or threading.Event()
    state = LiveState(source=source.name)
    lock = threading.Lock()

    def emit_locked(rec: dict) -> None:
        with lock:
            if rec.get("status") == "scored":
                state.counters.scored += 1
            elif rec.get("status") == "rejected":
                state.counters.rejected += 1
            if rec.get("type") == "window":
                state.recent.append(rec)
            else:
                state.events.append(rec)
            emit(rec)

    worker = Worker(session, emit_locked, cfg.slow_inference)
    worker.start()
    ring = RingBuffer()
    to16k = ToMono16k(source.rate)
    hop = int(round(cfg.hop * C.SAMPLE_RATE))
    since_hop = 0
    source.open()
    emit_locked({"type": "event", "event": "capture_started", "device": source.name, "rate": source.rate,
                 "channels": source.channels, "wall_time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    last_tick = 0.0
    try:
        while not stop.is_set():
            try:
                block = source.queue.get(timeout=0.1)
            except Exception:  # queue.Empty
                block = None
            if block is not None:
                y = to16k(block.data)
                if save_audio is not None:
                    save_audio.write(y)
                ring.write(y)
                state.level_dbfs = quality.rms_dbfs(block.data.reshape(-1))
                since_hop += len(y)
                while since_hop >= hop:
                    since_hop -= hop
                    state.counters.windows += 1
                    idx = state.counters.windows
                    win = ring.latest()
                    q = quality.check(win, filled=ring.full)
                    job = Job(idx, win, ring.total, block.t, time.monotonic(), q)
                    if not q.ok:
                        rec = window_record(job)
                        rec.update(status="rejected", reason=", ".join(q.flags))
                        emit_locked(rec)
                    elif not worker.offer(job):
                        state.counters.skipped += 1
                        rec = window_record(job)
                        rec.update(status="skipped", reason="inference slower than the hop")
                        emit_locked(rec)
            state.stream_seconds = ring.total / C.SAMPLE_RATE
            state.counters.overflows = source.overflows
            state.counters.dropped_blocks = source.dropped_blocks
            if cfg.duration is not None and state.stream_seconds >= cfg.duration:
                break
            if not source.alive(cfg.stall_seconds):
                if hasattr(source, "finished"):  # end of a replayed file
                    break
                if recover(source, state, emit_locked, cfg, stop):
                    ring, to16k, since_hop = RingBuffer(), ToMono16k(source.rate), 0  # no window spans the gap
            now = time.monotonic()
            if on_tick and now - last_tick > 0.25:
                last_tick = now
                on_tick(state)
    except KeyboardInterrupt:
        pass
    finally:
        source.close()
        worker.stop()
        worker.join(timeout=30)
    state.counters.overflows = source.overflows
    state.counters.dropped_blocks = source.dropped_blocks
    if on_tick:
        on_tick(state)
    return state.counters


def recover(source, state: LiveState, emit: Callable[[dict], None], cfg: StreamConfig,
            stop: threading.Event) -> bool:
    """Device lost: report it, then reopen by name with backoff until it is back (or we are told to stop)."""
    state.counters.device_lost += 1
    emit({"type": "event", "event": "device_lost", "device": source.name,
          "wall_time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    source.close()
    attempt = 0
    while not stop.is_set():
        time.sleep(cfg.backoff[min(attempt, len(cfg.backoff) - 1)])
        attempt += 1
        before = source.callbacks
        try:
            source.reopen()
        except DeviceError:
            continue
        time.sleep(0.5)  # a stream that opens but delivers nothing is still lost
        if source.callbacks > before and source.alive(cfg.stall_seconds):
            state.counters.device_restored += 1
            emit({"type": "event", "event": "device_restored", "device": source.name, "attempts": attempt,
                  "wall_time": time.strftime("%Y-%m-%dT%H:%M:%S")})
            return True
    return False
