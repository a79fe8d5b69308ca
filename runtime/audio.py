"""Audio front end (REFERENCE.md §1) as small pure numpy functions: decode → mono → 16 kHz → trim → window → log-mel.

This reproduces OPERA's `get_split_signal_librosa(..., input_sec=8.18)` (librosa 0.10.1) without librosa: the
goldens match within 1e-5 (y_load, trim indices and windows bit-exact). soxr HQ is part of the contract: other
resamplers change the spectrogram by up to 0.3.
"""
from __future__ import annotations

import functools
import os

import numpy as np
import soundfile as sf
import soxr

from . import contract as C
from .errors import AudioError


class UnreadableAudioError(AudioError):
    """Missing, corrupt or non-audio file."""


class EmptyAudioError(AudioError):
    """No samples at all."""


class NonFiniteAudioError(AudioError):
    """NaN or Inf samples (a broken decoder or a corrupt float file)."""


class SilentAudioError(AudioError):
    """Digital silence: the reference would return an un-normalised constant spectrogram."""


class TooShortAudioError(AudioError):
    """Less sound than MIN_AUDIO_SECONDS after trimming."""


# -- decode / mono / resample (§1.1) ----------------------------------------------------------------

def decode(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(samples float32 (frames, channels), native rate) via libsndfile, which detects the content type."""
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise UnreadableAudioError(f"{p}: file not found")
    try:
        y, sr = sf.read(p, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise UnreadableAudioError(f"{p}: not a readable audio file ({e}); use WAV, FLAC or OGG") from None
    if y.size == 0:
        raise EmptyAudioError(f"{p}: the file holds no audio samples")
    return y, int(sr)


def to_mono(y: np.ndarray) -> np.ndarray:
    """Arithmetic mean over channels, before resampling (librosa.to_mono)."""
    y = np.asarray(y, dtype=np.float32)
    return y.mean(axis=1, dtype=np.float32) if y.ndim == 2 else y


def resample(y: np.ndarray, sr: int) -> np.ndarray:
    """soxr HQ to 16 kHz, then exactly ceil(n · 16000 / sr) samples (librosa.resample + fix_length)."""
    y = np.asarray(y, dtype=np.float32)
    if sr == C.SAMPLE_RATE:
        return y
    n = int(np.ceil(len(y) * C.SAMPLE_RATE / sr))
    out = soxr.resample(y, sr, C.SAMPLE_RATE, quality=C.RESAMPLE_QUALITY).astype(np.float32, copy=False)
    if len(out) >= n:
        return out[:n]
    return np.pad(out, (0, n - len(out)))


def load(path: str | os.PathLike) -> np.ndarray:
    """`librosa.load(path, sr=16000)`: mono float32 at 16 kHz (golden `y_load`)."""
    y, sr = decode(path)
    return resample(to_mono(y), sr)


# -- trim (§1.2) ------------------------------------------------------------------------------------

def frame_rms(y: np.ndarray, frame: int = C.TRIM_FRAME, hop: int = C.TRIM_HOP) -> np.ndarray:
    """librosa.feature.rms with center=True and zero padding: one value per hop."""
    yp = np.pad(np.asarray(y, dtype=np.float32), frame // 2)
    frames = np.lib.stride_tricks.sliding_window_view(yp, frame)[::hop]
    return np.sqrt(np.mean(np.abs(frames) ** 2, axis=-1, dtype=np.float32))


def trim_index(y: np.ndarray) -> tuple[int, int]:
    """[start, end) of the non-silent part: frames within 60 dB of the loudest frame (librosa.effects.trim)."""
    if len(y) == 0:
        return 0, 0
    rms = frame_rms(y)
    ref = np.max(rms)
    power = np.square(rms)
    db = 10.0 * np.log10(np.maximum(C.TRIM_AMIN ** 2, power)) - 10.0 * np.log10(np.maximum(C.TRIM_AMIN ** 2, ref ** 2))
    nonsilent = np.flatnonzero(db > -C.TRIM_TOP_DB)
    if nonsilent.size == 0:
        return 0, 0
    return int(nonsilent[0] * C.TRIM_HOP), int(min(len(y), (nonsilent[-1] + 1) * C.TRIM_HOP))


# -- window (§1.3) ----------------------------------------------------------------------------------

def cyclic_pad(source: np.ndarray, tiling: np.ndarray, n: int = C.WINDOW_SAMPLES) -> np.ndarray:
    """`_duplicate_padding`, always 'source at the end': window[j] = tiling[(j - left) mod len(tiling)] before it."""
    left = n - len(source)
    out = np.empty(n, dtype=np.float32)
    out[left:] = source
    if left:
        idx = (np.arange(left) - left) % len(tiling)
        out[:left] = tiling[idx]
    return out


def windows(y_trim: np.ndarray) -> list[np.ndarray]:
    """Every 8.18-s window of `split_pad_sample` (hop N/2, padded remainder always added for long clips)."""
    n, N, hop = len(y_trim), C.WINDOW_SAMPLES, C.WINDOW_HOP
    if n == 0:
        raise EmptyAudioError("no audio left after trimming")
    if n <= N:
        return [cyclic_pad(y_trim, y_trim)]
    f = 1 + (n - N) // hop
    out = [np.asarray(y_trim[k * hop:k * hop + N], dtype=np.float32) for k in range(f)]
    out.append(cyclic_pad(y_trim[f * hop:], y_trim))
    return out


def window(y_trim: np.ndarray) -> np.ndarray:
    """Window 0, the one RespLLM uses: the first 8.18 s, or the clip cyclically padded (clip at the end)."""
    if len(y_trim) > C.WINDOW_SAMPLES:
        return np.asarray(y_trim[:C.WINDOW_SAMPLES], dtype=np.float32)
    return windows(y_trim)[0]


# -- log-mel (§1.4) ---------------------------------------------------------------------------------

def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    mels = f / f_sp
    log = f >= min_log_hz
    return np.where(log, min_log_hz / f_sp + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mels)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@functools.lru_cache(maxsize=4)
def mel_filters(sr: int = C.SAMPLE_RATE, n_fft: int = C.N_FFT, n_mels: int = C.N_MELS,
                fmin: float = C.F_MIN, fmax: float = C.F_MAX) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filters (librosa.filters.mel, htk=False, norm='slaney')."""
    fftfreqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    w = np.maximum(0.0, np.minimum(lower, upper))
    w *= (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, None]
    return w.astype(np.float32)


@functools.lru_cache(maxsize=2)
def _hann(n: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float64)  # periodic


def power_spectrogram(x: np.ndarray) -> np.ndarray:
    """|STFT|² (n_fft 1024, periodic Hann, hop 512, centred with zero padding): (513, frames)."""
    xp = np.pad(np.asarray(x, dtype=np.float64), C.N_FFT // 2)
    frames = np.lib.stride_tricks.sliding_window_view(xp, C.N_FFT)[::C.STFT_HOP]
    spec = np.fft.rfft(frames * _hann(C.N_FFT), axis=-1)
    return (spec.real ** 2 + spec.imag ** 2).T


def log_mel_db(x: np.ndarray) -> np.ndarray:
    """Mel power in dB relative to the window's maximum, floored 80 dB below it: (64, frames)."""
    mel = mel_filters().astype(np.float64) @ power_spectrogram(x)
    db = 10.0 * np.log10(np.maximum(C.DB_AMIN, mel)) - 10.0 * np.log10(max(C.DB_AMIN, float(mel.max())))
    return np.maximum(db, db.max() - C.DB_TOP)


def log_mel(x: np.ndarray) -> np.ndarray:
    """`pre_process_audio_mel_t`: min-max normalised log-mel, time-major (256, 64) float32.

    A constant-dB window (digital silence) cannot be normalised: raises SilentAudioError where the reference
    returns the un-normalised constant."""
    db = log_mel_db(x)
    lo, hi = float(db.min()), float(db.max())
    if hi == lo:
        raise SilentAudioError("the window is digital silence (constant spectrogram): check that the microphone "
                               "or stethoscope is connected and unmuted")
    return ((db - lo) / (hi - lo)).T.astype(np.float32)


# -- validation and the whole chain -----------------------------------------------------------------

def validate(y: np.ndarray, name: str = "audio") -> np.ndarray:
    """Reject what the reference cannot handle (it loops forever on empty or NaN input)."""
    y = np.asarray(y)
    if y.size == 0:
        raise EmptyAudioError(f"{name}: no audio samples")
    if not np.all(np.isfinite(y)):
        raise NonFiniteAudioError(f"{name}: contains NaN or infinite samples; the file or decoder is broken")
    if not np.any(y):
        raise SilentAudioError(f"{name}: all samples are zero (digital silence); check that the microphone or "
                               f"stethoscope is connected and unmuted")
    return y


def spectrogram(source, sr: int | None = None, name: str | None = None) -> np.ndarray:
    """The model input (256, 64) for a file path or an array (at `sr`, default 16 kHz), first window."""
    if isinstance(source, (str, os.PathLike)):
        name = name or os.fspath(source)
        y = load(source)
    else:
        name = name or "audio"
        arr = np.asarray(source, dtype=np.float32)
        validate(arr, name)
        y = resample(to_mono(arr), sr or C.SAMPLE_RATE)
    validate(y, name)
    start, end = trim_index(y)
    if end - start < C.MIN_AUDIO_SECONDS * C.SAMPLE_RATE:
        raise TooShortAudioError(f"{name}: only {(end - start) / C.SAMPLE_RATE:.3f} s of sound after trimming "
                                 f"silence; at least {C.MIN_AUDIO_SECONDS} s is needed")
    try:
        return log_mel(window(y[start:end]))
    except SilentAudioError as e:
        raise SilentAudioError(f"{name}: {e}") from None


def spec_from_window(x: np.ndarray, name: str = "window") -> np.ndarray:
    """Live path: an 8.18-s, 16 kHz window scored as it is (no trimming, no first-window selection)."""
    x = np.asarray(x, dtype=np.float32)
    if len(x) != C.WINDOW_SAMPLES:
        raise AudioError(f"{name}: a live window must be {C.WINDOW_SAMPLES} samples at 16 kHz, got {len(x)}")
    validate(x, name)
    try:
        return log_mel(x)
    except SilentAudioError as e:
        raise SilentAudioError(f"{name}: {e}") from None
