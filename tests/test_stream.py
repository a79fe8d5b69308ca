"""Live screening through a real audio stack: PulseAudio virtual microphone → PortAudio → respi-edge.

Real SPRSound recordings are played into the virtual mic; the live windows are compared with offline scoring of
the same samples; the device is unplugged mid-session; inference is slowed down to force skipped windows.
`.ci/run` installs and starts the virtual mic; if it is not up, these tests fail (they never skip).
"""
from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import shared_path
from respi_edge.runtime import api
from respi_edge.runtime import contract as C
from respi_edge.runtime.audio import load, spec_from_window
from respi_edge.runtime.load import load_model
from respi_edge.runtime.stream import StreamConfig, screen
from respi_edge.runtime.stream.buffers import RingBuffer, ToMono16k
from respi_edge.runtime.stream.quality import check

RECORDINGS = ["40638274_9.7_1_p2_1684.flac", "40138127_14.7_0_p3_139.flac"]


def vmic(*args, check_rc=True):
    tool = shared_path("tools", "virtual-mic.sh")
    r = subprocess.run([str(tool), *args], capture_output=True, text=True, timeout=60)
    if check_rc and r.returncode != 0:
        pytest.fail(f"virtual-mic.sh {' '.join(args)} failed ({r.returncode}): {r.stdout}{r.stderr}\n"
                    "Run `../shared/tools/virtual-mic.sh install && ../shared/tools/virtual-mic.sh start` "
                    "(.ci/run does).", pytrace=False)
    return r


@pytest.fixture(scope="module")
def mic():
    if vmic("status", check_rc=False).returncode != 0:
        vmic("start")
    vmic("status")
    return "virtmic"


@pytest.fixture(scope="module")
def session(tiny_ckpt, tiny_llm):
    model = load_model(tiny_ckpt, tiny_llm)
    return api.Session(model, "S7", gender="F", age="9.7", location="p2")


def play(files, delay=0.5, after: Path | None = None):
    """Play recordings into the virtual mic from a thread; with `after` (a session's JSONL), only once that
    session's capture has started, so that no recording begins before the capture does (a loaded machine can
    take seconds to open the device)."""
    def run():
        if after is not None:
            t_end = time.monotonic() + 60
            while time.monotonic() < t_end and not (after.exists() and '"capture_started"' in after.read_text()):
                time.sleep(0.05)
        time.sleep(delay)
        for f in files:  # an unplug kills the player's stream: not an error here
            vmic("play", str(shared_path("data", "sprsound2022", "audio", f)), check_rc=False)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def align(captured: np.ndarray, src: np.ndarray) -> tuple[int, float]:
    """(lag, ncc): where `src` starts in `captured` (may be negative), searched over the whole capture.

    A 2-s probe from inside the recording, matched by normalised cross-correlation (a loud click at playback
    start must not outweigh the match itself); FFT correlation, so any lag is found, however late playback or
    capture started."""
    from scipy.signal import correlate

    p0 = 2 * C.SAMPLE_RATE
    probe = src[p0:p0 + 2 * C.SAMPLE_RATE].astype(np.float64)
    x = captured.astype(np.float64)
    num = correlate(x, probe, mode="valid", method="fft")
    energy = np.concatenate([[0.0], np.cumsum(x ** 2)])
    den = np.sqrt(energy[len(probe):] - energy[:-len(probe)]) * np.linalg.norm(probe) + 1e-9
    ncc = num / den
    k = int(np.argmax(ncc))
    return k - p0, float(ncc[k])


def lines(path):
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def test_ring_buffer_and_streaming_resampler_match_the_file_path():
    y, sr = sf.read(shared_path("data", "sprsound2022", "audio", RECORDINGS[0]), dtype="float32")
    conv, ring = ToMono16k(sr), RingBuffer()
    out = [conv(y[i:i + 800]) for i in range(0, len(y), 800)]
    stream = np.concatenate(out)
    whole = load(shared_path("data", "sprsound2022", "audio", RECORDINGS[0]))
    n = len(stream)
    # streaming soxr equals one-shot soxr up to its filter delay tail
    assert np.abs(stream[:n - 2000] - whole[:n - 2000]).max() < 1e-4
    for chunk in out:
        ring.write(chunk)
    assert ring.full and np.array_equal(ring.latest(), stream[-C.WINDOW_SAMPLES:])
    assert check(np.zeros(C.WINDOW_SAMPLES, np.float32)).flags == ("silence",)
    assert "clipping" in check(np.ones(C.WINDOW_SAMPLES, np.float32)).flags
    assert check(stream[-C.WINDOW_SAMPLES:]).ok


def test_prefix_reuse_in_the_session_equals_the_full_forward(session):
    spec = np.load(shared_path("golden", "mel", "a3_lung_8k_mono_int16.npz"))["spec"]
    cached = session.logits(spec, reuse_prefix=True)
    full = session.logits(spec, reuse_prefix=False)
    assert (cached - full).abs().max().item() <= 1e-5


def test_live_windows_equal_offline_scoring(mic, session, tmp_path):
    """Checks only what machine load cannot change: skipped windows, late playback or a late capture start move
    which windows are scored and where the recordings sit in the capture, not the numbers compared."""
    jsonl = tmp_path / "live.jsonl"
    player = play(RECORDINGS, after=jsonl)
    summary = screen(session, device=mic, jsonl=str(jsonl), cfg=StreamConfig(hop=1.0, duration=19.0), live=False,
                     save_audio=str(tmp_path / "audio"))
    player.join(timeout=30)
    recs = lines(jsonl)
    windows = [r for r in recs if r["type"] == "window"]
    scored = [r for r in windows if r["status"] == "scored"]
    assert summary["overflows"] == 0 and summary["dropped_blocks"] == 0
    assert recs[-1]["type"] == "summary" and recs[0]["event"] == "session_start"
    # 19 s of audio at a 1-s hop is 19 windows whatever the load. How many are scored depends on the load (a
    # window that comes while inference is busy is skipped: 2 of 11 on a 2-core machine at load 10), but the
    # first window that passes the quality gate finds the worker idle, so it is always scored
    assert len(windows) >= 17, len(windows)
    assert summary["scored"] == len(scored) and summary["skipped"] == sum(r["status"] == "skipped" for r in windows)
    offered = sorted((r for r in windows if r["status"] != "rejected"), key=lambda r: r["window"])
    assert offered and offered[0]["status"] == "scored", [(r["window"], r["status"], r.get("reason")) for r in windows]
    assert all(r["status"] == "scored" or r["reason"] == "inference slower than the hop" for r in offered)
    # 1. every live window's probability equals offline scoring of the very samples it saw (the saved stream)
    captured, sr = sf.read(summary["saved_audio"], dtype="float32")
    assert sr == 16000
    worst = 0.0
    for r in scored:
        end = r["end_sample"]
        win = captured[end - C.WINDOW_SAMPLES:end]
        p = torch.softmax(session.logits(spec_from_window(win)), -1)[1].item()
        worst = max(worst, abs(p - r["prob"]))
    assert worst <= 1e-4, worst
    # 2. the captured audio is the recording itself (PulseAudio resampling aside), found anywhere in the capture
    src = load(shared_path("data", "sprsound2022", "audio", RECORDINGS[0]))
    lag, ncc = align(captured, src)
    start = max(0, -lag)  # src's first `start` samples were played before capture began (never, with `after`)
    seg = captured[lag + start:lag + len(src)]
    corr = np.corrcoef(seg, src[start:start + len(seg)])[0, 1]
    assert ncc > 0.9 and corr > 0.95, (lag, ncc, corr)
    # 3. so scoring the capture is scoring the recording: every window position inside the first recording
    # (every 0.25 s, not only the ones the scheduler happened to score) gives the source file's probability;
    # PulseAudio's 8 k -> 48 k -> 44.1 k resampling chain differs from soxr, which moves P by a few hundredths
    ends = range(lag + max(start, 0) + C.WINDOW_SAMPLES, min(lag + len(src), len(captured)) + 1, C.SAMPLE_RATE // 4)
    diffs = []
    for end in ends:
        live_like = torch.softmax(session.logits(spec_from_window(captured[end - C.WINDOW_SAMPLES:end])), -1)[1]
        offline = torch.softmax(session.logits(spec_from_window(src[end - lag - C.WINDOW_SAMPLES:end - lag])), -1)[1]
        diffs.append(abs(live_like.item() - offline.item()))
    assert len(diffs) >= 4 and max(diffs) <= 0.05, (lag, diffs)


def test_device_loss_is_reported_results_kept_and_capture_recovers(mic, session, tmp_path):
    jsonl = tmp_path / "loss.jsonl"
    stop = threading.Event()

    def chaos():
        time.sleep(4)
        assert any(r["type"] == "window" for r in lines(jsonl))  # flushed before the loss
        vmic("unplug")
        time.sleep(3)
        vmic("replug")
        time.sleep(6)
        stop.set()

    player = play(RECORDINGS * 2, delay=0.2)
    t = threading.Thread(target=chaos, daemon=True)
    t.start()
    summary = screen(session, device=mic, jsonl=str(jsonl), cfg=StreamConfig(hop=1.0, duration=40), live=False,
                     stop=stop)
    t.join(timeout=5)
    vmic("replug", check_rc=False)
    vmic("status")
    recs = lines(jsonl)
    events = [r["event"] for r in recs if r["type"] == "event"]
    assert summary["device_lost"] >= 1 and summary["device_restored"] >= 1, events
    i_lost, i_back = events.index("device_lost"), events.index("device_restored")
    assert i_lost < i_back
    back_at = next(i for i, r in enumerate(recs) if r.get("event") == "device_restored")
    assert any(r["type"] == "window" for r in recs[:back_at])
    assert any(r["type"] == "window" for r in recs[back_at:])  # capture goes on after the device came back
    player.join(timeout=1)


def test_overload_skips_windows_and_never_overflows(mic, session, tmp_path):
    jsonl = tmp_path / "slow.jsonl"
    player = play(RECORDINGS)
    cfg = StreamConfig(hop=0.5, duration=14.0, slow_inference=2.0)
    summary = screen(session, device=mic, jsonl=str(jsonl), cfg=cfg, live=False)
    player.join(timeout=30)
    windows = [r for r in lines(jsonl) if r["type"] == "window"]
    assert summary["skipped"] >= 3 and summary["skipped"] == sum(r["status"] == "skipped" for r in windows)
    assert summary["overflows"] == 0 and summary["dropped_blocks"] == 0
    assert summary["scored"] >= 1
