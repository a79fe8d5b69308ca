"""Augmented training views of a recording: event-guided 8.18-s crops and SpecAugment, as pure numpy functions.

A record label says nothing about *where* in a 9.2- or 15.4-s file its adventitious sounds are, so a positive
recording's crops are chosen to hold its annotated adventitious events (`events.csv`); a negative's crops are
uniform. Gain is not an augmentation here: the front end's min-max normalisation of the log-mel removes it.
View 0 is always the reference's own input (the first window, no augmentation), the one scoring uses.
"""
from __future__ import annotations

import csv
import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from respi_edge.runtime import audio as fe
from respi_edge.runtime import contract as C

VIEWS_VERSION = 1  # bump when crops or masks change: it keys the feature cache


@dataclass(frozen=True)
class Event:
    start_s: float
    end_s: float
    adventitious: bool


def read_events(path: str | os.PathLike) -> dict[str, list[Event]]:
    """`events.csv` (path,start_ms,end_ms,type) → events per audio file, keyed by absolute path."""
    base = Path(path).parent
    out: dict[str, list[Event]] = defaultdict(list)
    with open(path, newline="", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            key = str((base / rec["path"]).resolve())
            out[key].append(Event(int(rec["start_ms"]) / 1000, int(rec["end_ms"]) / 1000, rec["type"] != "Normal"))
    return dict(out)


def view_rng(seed: int, path: str, view: int) -> np.random.Generator:
    """Deterministic per (seed, recording, view), so a resumed cache draws the same views."""
    digest = hashlib.sha256(f"{seed}|{os.path.basename(path)}|{view}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def crop_offset(n_samples: int, events: list[Event], positive: bool, rng: np.random.Generator,
                trim_start: int = 0) -> int:
    """Start sample of an 8.18-s crop in the trimmed signal: covering adventitious events when positive."""
    room = n_samples - C.WINDOW_SAMPLES
    if room <= 0:
        return 0
    candidates = np.arange(0, room + 1, C.SAMPLE_RATE // 10)  # every 0.1 s
    adv = [e for e in events if e.adventitious]
    if positive and adv:
        win = C.WINDOW_SAMPLES / C.SAMPLE_RATE
        t0 = (candidates + trim_start) / C.SAMPLE_RATE
        cover = np.zeros(len(candidates))
        for e in adv:
            cover += np.clip(np.minimum(t0 + win, e.end_s) - np.maximum(t0, e.start_s), 0, None)
        best = cover.max()
        if best > 0:
            candidates = candidates[cover >= 0.9 * best]
    return int(rng.choice(candidates))


def spec_augment(spec: np.ndarray, rng: np.random.Generator, *, time_masks: int = 2, time_width: int = 24,
                 freq_masks: int = 2, freq_width: int = 8) -> np.ndarray:
    """SpecAugment masks (time and mel bands) filled with the spectrogram's mean."""
    out = spec.copy()
    fill = float(spec.mean())
    t, f = spec.shape
    for _ in range(time_masks):
        w = int(rng.integers(0, time_width + 1))
        s = int(rng.integers(0, t - w + 1))
        out[s:s + w, :] = fill
    for _ in range(freq_masks):
        w = int(rng.integers(0, freq_width + 1))
        s = int(rng.integers(0, f - w + 1))
        out[:, s:s + w] = fill
    return out


def views(path: str, n_views: int, *, positive: bool, events: list[Event], seed: int) -> list[np.ndarray]:
    """`n_views` (256, 64) spectrograms: view 0 = `audio.spectrogram(path)`; the others cropped and masked."""
    first = fe.spectrogram(path)
    out = [first]
    if n_views <= 1:
        return out
    y = fe.load(path)
    start, end = fe.trim_index(y)
    y = y[start:end]
    for v in range(1, n_views):
        rng = view_rng(seed, path, v)
        o = crop_offset(len(y), events, positive, rng, trim_start=start)
        seg = y[o:o + C.WINDOW_SAMPLES] if len(y) > C.WINDOW_SAMPLES else fe.window(y)
        try:
            spec = fe.log_mel(seg)
        except fe.SilentAudioError:
            spec = first
        out.append(spec_augment(spec, rng))
    return out
