"""Per-window quality gates: a window that fails is reported with its reason, never scored as if it were fine."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SILENCE_DBFS = -70.0  # RMS below this: no signal (a disconnected or muted input)
CLIP_LEVEL = 0.999  # |x| at or above this counts as clipped
CLIP_FRACTION = 0.01  # more than 1 % clipped samples: the dB reference of the front end is wrecked (golden a7)


@dataclass(frozen=True)
class Quality:
    ok: bool
    flags: tuple[str, ...]
    rms_dbfs: float
    clipped_fraction: float


def rms_dbfs(x: np.ndarray) -> float:
    r = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0
    return 20 * np.log10(max(r, 1e-12))


def check(window: np.ndarray, *, filled: bool = True) -> Quality:
    """Flags: 'warming-up' (the ring is not yet full of live audio), 'non-finite', 'silence', 'clipping'."""
    flags = []
    if not filled:
        flags.append("warming-up")
    if not np.all(np.isfinite(window)):
        return Quality(False, (*flags, "non-finite"), float("nan"), 0.0)
    level = rms_dbfs(window)
    clipped = float(np.mean(np.abs(window) >= CLIP_LEVEL)) if len(window) else 0.0
    if level < SILENCE_DBFS or not np.any(window):
        flags.append("silence")
    if clipped > CLIP_FRACTION:
        flags.append("clipping")
    return Quality(not flags, tuple(flags), level, clipped)
