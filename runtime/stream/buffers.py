"""Ring buffer and streaming mono/resampling stage of the live path (pure, thread-free, testable)."""
from __future__ import annotations

import numpy as np

from .. import contract as C


class RingBuffer:
    """The latest `capacity` samples of a 16 kHz mono stream, plus how many were ever written."""

    def __init__(self, capacity: int = C.WINDOW_SAMPLES):
        self.buf = np.zeros(capacity, dtype=np.float32)
        self.capacity = capacity
        self.total = 0

    def write(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32)
        if len(x) == 0:
            return
        if len(x) >= self.capacity:
            self.buf[:] = x[-self.capacity:]
        else:
            self.buf = np.roll(self.buf, -len(x))
            self.buf[-len(x):] = x
        self.total += len(x)

    @property
    def full(self) -> bool:
        return self.total >= self.capacity

    def latest(self) -> np.ndarray:
        return self.buf.copy()


class ToMono16k:
    """Mean over channels, then soxr HQ streaming resampling to 16 kHz (the front end's resampler, §1.1).

    Streaming soxr keeps its filter state across blocks, so a live stream is resampled like one long file."""

    def __init__(self, rate: int):
        import soxr

        self.rate = int(rate)
        self.stream = None if self.rate == C.SAMPLE_RATE else soxr.ResampleStream(
            self.rate, C.SAMPLE_RATE, 1, dtype="float32", quality=C.RESAMPLE_QUALITY)

    def __call__(self, block: np.ndarray) -> np.ndarray:
        x = np.asarray(block, dtype=np.float32)
        if x.ndim == 2:
            x = x.mean(axis=1, dtype=np.float32)
        if self.stream is None:
            return x
        return self.stream.resample_chunk(x)
