"""Audio front end (REFERENCE.md §1) as small pure numpy functions: decode → mono → 16 kHz → trim → window → log-mel.

This reproduces OPERA's `get_split_signal_librosa(..., input_sec=8.18)` (librosa 0.10.1) without librosa: the
goldens match within 1e-5 (y_load, trim indices and windows bit-exact). soxr HQ is part of the contract: other
resamplers change the spectrogram by up to 0.3. Files are streamed (`read_first_window_source`): memory stays
bounded for any length while the result equals that of the whole decoded file.
"""
from __future__ import annotations

import dataclasses
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

def _readable_path(path: str | os.PathLike) -> str:
    """The path as a string, or a named error saying why it is not an audio file we can open."""
    p = os.fspath(path)
    if os.path.isdir(p):
        raise UnreadableAudioError(f"{p}: is a directory, not an audio file; pass the recording's file path")
    if not os.path.exists(p):
        raise UnreadableAudioError(f"{p}: file not found")
    if not os.path.isfile(p):
        raise UnreadableAudioError(f"{p}: not a regular file; pass a WAV, FLAC or OGG recording")
    if not os.access(p, os.R_OK):
        raise UnreadableAudioError(f"{p}: permission denied; make the file readable")
    return p


def _unreadable(p: str, e: Exception) -> UnreadableAudioError:
    return UnreadableAudioError(f"{p}: not a readable audio file ({e}); use WAV, FLAC or OGG")


_SF_ERRORS = (sf.LibsndfileError, RuntimeError, TypeError, ValueError)


def decode(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(samples float32 (frames, channels), native rate) via libsndfile, which detects the content type."""
    p = _readable_path(path)
    try:
        y, sr = sf.read(p, dtype="float32", always_2d=True)
    except _SF_ERRORS as e:
        raise _unreadable(p, e) from None
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

def _rms_of_frames(yp: np.ndarray, frame: int = C.TRIM_FRAME, hop: int = C.TRIM_HOP) -> np.ndarray:
    """RMS of every full frame of an already padded signal (frame i = yp[hop·i : hop·i + frame])."""
    frames = np.lib.stride_tricks.sliding_window_view(yp, frame)[::hop]
    return np.sqrt(np.mean(np.abs(frames) ** 2, axis=-1, dtype=np.float32))


def frame_rms(y: np.ndarray, frame: int = C.TRIM_FRAME, hop: int = C.TRIM_HOP) -> np.ndarray:
    """librosa.feature.rms with center=True and zero padding: one value per hop."""
    return _rms_of_frames(np.pad(np.asarray(y, dtype=np.float32), frame // 2), frame, hop)


def nonsilent_frames(rms: np.ndarray, ref) -> np.ndarray:
    """Which frames lie within 60 dB of the reference RMS `ref` (librosa.effects.trim's test, float32)."""
    power = np.square(rms)
    db = 10.0 * np.log10(np.maximum(C.TRIM_AMIN ** 2, power)) - 10.0 * np.log10(np.maximum(C.TRIM_AMIN ** 2, ref ** 2))
    return db > -C.TRIM_TOP_DB


def trim_from_rms(rms: np.ndarray, n: int) -> tuple[int, int]:
    """[start, end) from the frame RMS envelope of an n-sample signal; the reference is its loudest frame."""
    if n == 0 or len(rms) == 0:
        return 0, 0
    nonsilent = np.flatnonzero(nonsilent_frames(rms, np.max(rms)))
    if nonsilent.size == 0:
        return 0, 0
    return int(nonsilent[0] * C.TRIM_HOP), int(min(n, (nonsilent[-1] + 1) * C.TRIM_HOP))


def trim_index(y: np.ndarray) -> tuple[int, int]:
    """[start, end) of the non-silent part: frames within 60 dB of the loudest frame (librosa.effects.trim)."""
    if len(y) == 0:
        return 0, 0
    return trim_from_rms(frame_rms(y), len(y))


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


# -- bounded file reading: window 0 without holding the whole file (§1.1–1.3 streamed) ------------------
#
# Window 0 depends on the whole file only through the trim (§1.2): its reference level is the loudest RMS frame
# anywhere in the file, and the trimmed clip's end matters when the sound is shorter than the window. So one
# streaming pass decodes, mixes and resamples the file block by block (soxr's streaming output is bit-identical
# to its one-shot output, whatever the block sizes), keeps the RMS envelope (one float per 800 samples) and the
# window's worth of samples after the running trim start; the audio itself is never held whole.

READ_BLOCK = 1 << 16  # native frames per read: ~4 MiB of float32 for 8 channels


def blocks_16k(path: str | os.PathLike, block: int = READ_BLOCK):
    """Yield `load(path)` in consecutive pieces (mono float32, 16 kHz); their concatenation equals `load(path)`.

    Non-finite samples raise at once; an empty file raises EmptyAudioError. The piece sizes are unspecified."""
    p = _readable_path(path)
    try:
        f = sf.SoundFile(p)
    except _SF_ERRORS as e:
        raise _unreadable(p, e) from None
    with f:
        sr = int(f.samplerate)
        rs = None if sr == C.SAMPLE_RATE else soxr.ResampleStream(sr, C.SAMPLE_RATE, 1, dtype="float32",
                                                                   quality=C.RESAMPLE_QUALITY)
        n_in = n_out = 0
        while True:
            try:
                y = f.read(block, dtype="float32", always_2d=True)
            except _SF_ERRORS as e:
                raise _unreadable(p, e) from None
            if len(y) == 0:
                break
            if not np.all(np.isfinite(y)):
                raise NonFiniteAudioError(f"{p}: contains NaN or infinite samples; the file or decoder is broken")
            n_in += len(y)
            y = to_mono(y)
            if rs is not None:
                y = rs.resample_chunk(y)
            n_out += len(y)
            yield y
    if n_in == 0:
        raise EmptyAudioError(f"{p}: the file holds no audio samples")
    if rs is not None:  # flush, then fix_length to ceil(n · 16000 / sr) like librosa.load
        want = -(-n_in * C.SAMPLE_RATE // sr)
        tail = rs.resample_chunk(np.zeros(0, dtype=np.float32), last=True)[:max(0, want - n_out)]
        if n_out > want:
            raise AssertionError("soxr returned more samples before its flush than the signal's length")
        yield np.pad(tail, (0, want - n_out - len(tail))).astype(np.float32, copy=False)


class RmsEnvelope:
    """`frame_rms` of a signal fed in pieces: the same frames, the same float32 values (one per 800 samples)."""

    def __init__(self) -> None:
        self._pending = np.zeros(C.TRIM_FRAME // 2, dtype=np.float32)  # center=True: 800 zeros before
        self._env = np.zeros(1024, dtype=np.float32)
        self.n = 0  # samples pushed
        self.count = 0  # frames computed

    @property
    def values(self) -> np.ndarray:
        """The frames computed so far (a view)."""
        return self._env[:self.count]

    def _frames(self, buf: np.ndarray) -> np.ndarray:
        k = 0 if len(buf) < C.TRIM_FRAME else 1 + (len(buf) - C.TRIM_FRAME) // C.TRIM_HOP
        r = _rms_of_frames(buf[:(k - 1) * C.TRIM_HOP + C.TRIM_FRAME]) if k else np.zeros(0, np.float32)
        self._pending = buf[k * C.TRIM_HOP:].copy()
        if self.count + k > len(self._env):
            self._env = np.concatenate([self._env, np.zeros(max(k, len(self._env)), np.float32)])
        self._env[self.count:self.count + k] = r
        self.count += k
        return r

    def push(self, y: np.ndarray) -> np.ndarray:
        """Add samples; returns the frames they completed."""
        self.n += len(y)
        return self._frames(np.concatenate([self._pending, y]))

    def finish(self) -> np.ndarray:
        """The whole envelope (1 + n // 800 frames), after the 800 zeros that pad the end."""
        self._frames(np.concatenate([self._pending, np.zeros(C.TRIM_FRAME // 2, np.float32)]))
        self._pending = np.zeros(0, np.float32)
        return self.values


@dataclasses.dataclass(frozen=True)
class FirstWindowSource:
    """What window 0 needs from a file: `head` = y_trim[:130880] (all of y_trim when shorter)."""
    head: np.ndarray
    trim: tuple[int, int]  # trim_index of the whole y_load
    n: int  # len(y_load)
    reread: bool  # the head had to be read a second time (the trim start moved past the kept samples)


class _Head:
    """y_load[lo : lo + N] after the running trim start `lo`, collected while the file streams by.

    `buf` always holds the true samples y_load[lo : lo + len(buf)]; it stops growing once samples past its cap
    were dropped and the start moved on (then a second, shorter read may be needed)."""

    def __init__(self) -> None:
        self.lo = 0
        self.buf = np.zeros(0, np.float32)
        self.seen = 0  # samples streamed so far
        self.contiguous = True  # buf ends at `seen` or at its cap lo + N, with nothing dropped in between

    def add(self, pos: int, y: np.ndarray) -> None:
        """Samples y_load[pos : pos + len(y)], in order."""
        cap = self.lo + C.WINDOW_SAMPLES
        if self.contiguous and pos < cap:
            self.buf = np.concatenate([self.buf, y[:cap - pos]])
        self.seen = pos + len(y)

    def move_to(self, lo: int) -> None:
        """The trim start is now at least `lo`: drop what lies before it."""
        if lo <= self.lo:
            return
        if self.lo + len(self.buf) < self.seen:
            self.contiguous = False  # samples past the old cap were not kept
        self.buf = self.buf[lo - self.lo:].copy()
        self.lo = lo

    def slice(self, start: int, stop: int) -> np.ndarray | None:
        """y_load[start:stop] when held, else None."""
        if self.lo <= start and stop <= self.lo + len(self.buf):
            return self.buf[start - self.lo:stop - self.lo]
        return None


def read_first_window_source(path: str | os.PathLike, block: int = READ_BLOCK) -> FirstWindowSource:
    """Stream a file once (bounded memory) and return what window 0 needs, equal to slicing `load(path)`.

    Rejects empty, non-finite and all-zero audio like `validate`."""
    env, head = RmsEnvelope(), _Head()
    ref = np.float32(0.0)
    first = 0  # first frame not yet known to be silent for good (the running trim start)
    pos, any_sound = 0, False
    for y in blocks_16k(path, block):
        any_sound = any_sound or bool(np.any(y))
        r = env.push(y)
        head.add(pos, y)
        pos += len(y)
        if len(r) and r.max() > ref:
            ref = r.max()
            first = _first_nonsilent(env, first, ref)
            head.move_to(first * C.TRIM_HOP)
    rms = env.finish()
    p = os.fspath(path)
    if not any_sound:
        raise SilentAudioError(f"{p}: all samples are zero (digital silence); check that the microphone or "
                               f"stethoscope is connected and unmuted")
    start, end = trim_from_rms(rms, pos)
    stop = min(end, start + C.WINDOW_SAMPLES)
    kept = head.slice(start, stop)
    if kept is not None:
        return FirstWindowSource(kept, (start, end), pos, False)
    return FirstWindowSource(_read_span(path, start, stop, block), (start, end), pos, True)


def _first_nonsilent(env: RmsEnvelope, first: int, ref) -> int:
    """The first frame at or after `first` that is within 60 dB of `ref` (or the frame count if none yet)."""
    hit = np.flatnonzero(nonsilent_frames(env.values[first:], ref))
    return first + int(hit[0]) if hit.size else env.count


def _read_span(path: str | os.PathLike, start: int, stop: int, block: int) -> np.ndarray:
    """y_load[start:stop], streaming the file again only as far as `stop`."""
    out, pos = [], 0
    for y in blocks_16k(path, block):
        a, b = max(start - pos, 0), min(stop - pos, len(y))
        if a < b:
            out.append(y[a:b])
        pos += len(y)
        if pos >= stop:
            break
    return np.concatenate(out) if out else np.zeros(0, np.float32)


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
    """The model input (256, 64) for a file path or an array (at `sr`, default 16 kHz), first window.

    A file is streamed (`read_first_window_source`): memory stays bounded for any length, the result is the
    same as for the whole decoded file."""
    if isinstance(source, (str, os.PathLike)):
        name = name or os.fspath(source)
        src = read_first_window_source(source)
        (start, end), head = src.trim, src.head
    else:
        name = name or "audio"
        arr = np.asarray(source, dtype=np.float32)
        validate(arr, name)
        y = validate(resample(to_mono(arr), sr or C.SAMPLE_RATE), name)
        start, end = trim_index(y)
        head = y[start:min(end, start + C.WINDOW_SAMPLES)]
    if end - start < C.MIN_AUDIO_SECONDS * C.SAMPLE_RATE:
        raise TooShortAudioError(f"{name}: only {(end - start) / C.SAMPLE_RATE:.3f} s of sound after trimming "
                                 f"silence; at least {C.MIN_AUDIO_SECONDS} s is needed")
    try:
        return log_mel(window(head))
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
