"""Audio sources for the live path: a sounddevice input stream, or a file replayed through the same queue.

The PortAudio callback only copies the block into a bounded queue (never blocks, never allocates beyond the
copy); everything else happens off the callback. Device loss (ENVIRONMENT.md §2): callbacks stop and
`stream.active` turns False without an exception, so the source is watched for both.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from ..errors import DependencyError, DeviceError

MAX_CHANNELS = 2  # a stethoscope or mic has 1–2; ALSA's 'pulse'/'default' devices report 32 virtual channels


@dataclass
class Block:
    data: np.ndarray  # (frames, channels) float32 at the source's native rate
    t: float  # time.monotonic() when it arrived


def sounddevice():
    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:  # OSError: PortAudio library not found
        raise DependencyError(f"live audio needs sounddevice and PortAudio ({e}): pip install 'respi-edge[audio]' "
                              f"and install libportaudio2 (Debian/Ubuntu: apt install libportaudio2)") from None
    return sd


def resolve_device(device: str | int | None) -> dict:
    """sounddevice's description of an input device given by index, (part of) its name, or None = default."""
    sd = sounddevice()
    try:
        if isinstance(device, str) and device.isdigit():
            device = int(device)
        info = sd.query_devices(device, "input")
    except (ValueError, sd.PortAudioError) as e:
        raise DeviceError(f"no input device {device!r} ({e}); list them with `respi-edge devices`") from None
    return dict(info)


class MicSource:
    """Capture from an input device at its native rate and channel count (capped at 2)."""

    def __init__(self, device: str | int | None = None, block_seconds: float = 0.1, max_queue: int = 200):
        self.device = device
        self.block_seconds = block_seconds
        self.queue: queue.Queue[Block] = queue.Queue(maxsize=max_queue)
        self.overflows = 0  # PortAudio input overflows (audio lost by the driver)
        self.dropped_blocks = 0  # blocks the consumer did not take in time (queue full)
        self.stream = None
        self.info = resolve_device(device)
        self.name = self.info["name"]
        self.rate = int(self.info["default_samplerate"])
        self.channels = max(1, min(int(self.info["max_input_channels"]), MAX_CHANNELS))
        self.last_block = 0.0
        self.callbacks = 0

    def _callback(self, indata, frames, time_info, status) -> None:  # PortAudio thread: copy and return
        if status.input_overflow:
            self.overflows += 1
        self.callbacks += 1
        self.last_block = time.monotonic()
        try:
            self.queue.put_nowait(Block(indata.copy(), self.last_block))
        except queue.Full:
            self.dropped_blocks += 1

    def open(self) -> None:
        sd = sounddevice()
        try:
            self.stream = sd.InputStream(device=self.name if self.device is not None else None,
                                         samplerate=self.rate, channels=self.channels, dtype="float32",
                                         blocksize=int(self.rate * self.block_seconds), callback=self._callback)
            self.stream.start()
        except sd.PortAudioError as e:
            self.stream = None
            raise DeviceError(f"cannot open input device {self.name!r}: {e}") from None
        self.last_block = time.monotonic()

    def alive(self, stall_seconds: float = 1.5) -> bool:
        """False once the stream stopped by itself or no block came for `stall_seconds` (device unplugged)."""
        return bool(self.stream is not None and self.stream.active
                    and time.monotonic() - self.last_block < stall_seconds)

    def close(self) -> None:
        if self.stream is not None:
            try:
                self.stream.stop()
                self.stream.close()
            except Exception:  # noqa: BLE001 - a lost device may refuse; nothing left to release
                pass
            self.stream = None

    def reopen(self) -> None:
        self.close()
        self.open()


class FileSource:
    """Replay a recording through the live pipeline, at real-time pace or as fast as the consumer takes it."""

    def __init__(self, path: str, realtime: bool = True, block_seconds: float = 0.1, max_queue: int = 200):
        from ..audio import decode

        data, self.rate = decode(path)
        self.data = data.astype(np.float32)
        self.channels = self.data.shape[1]
        self.name = f"file:{path}"
        self.realtime = realtime
        self.block = max(1, int(self.rate * block_seconds))
        self.queue: queue.Queue[Block] = queue.Queue(maxsize=max_queue)
        self.overflows = self.dropped_blocks = self.callbacks = 0
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_block = time.monotonic()

    def _run(self) -> None:
        t0 = time.monotonic()
        for i in range(0, len(self.data), self.block):
            if self._stop.is_set():
                break
            blk = self.data[i:i + self.block]
            if self.realtime:
                delay = t0 + (i + len(blk)) / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                try:
                    self.queue.put_nowait(Block(blk.copy(), time.monotonic()))
                except queue.Full:
                    self.dropped_blocks += 1
            else:
                self.queue.put(Block(blk.copy(), time.monotonic()))
            self.callbacks += 1
            self.last_block = time.monotonic()
        self.finished.set()

    def open(self) -> None:
        self._thread = threading.Thread(target=self._run, name="file-source", daemon=True)
        self._thread.start()

    def alive(self, stall_seconds: float = 1.5) -> bool:
        return not self.finished.is_set() or not self.queue.empty()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def reopen(self) -> None:  # a file cannot be unplugged
        raise DeviceError("a file source cannot be reopened")
