"""Front end against golden/mel (intermediates too) and the named errors for bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from conftest import shared_path
from respi_edge.runtime import audio as A
from respi_edge.runtime import contract as C

STEMS = ["a1_breath_cough_16k_mono_float_9s5", "a2_speech_cough_44k1_stereo_int16", "a3_lung_8k_mono_int16",
         "a4_cough_48k_flac24", "a5_breath_16k_int16_4s", "a6_lead_silence_16k_int16",
         "a7_click_clipping_16k_int16", "a8_very_short_16k_int16_0s15"]


def golden(stem):
    return np.load(shared_path("golden", "mel", f"{stem}.npz"))


def audio_file(stem):
    man = json.loads(shared_path("golden", "mel", "manifest.json").read_text())
    name = next(k for k in man["files"] if k.rsplit(".", 1)[0] == stem)
    return shared_path("golden", "mel", "inputs", name)


@pytest.mark.parametrize("stem", STEMS)
def test_load_is_bit_exact(stem):
    y = A.load(audio_file(stem))
    g = golden(stem)["y_load"]
    assert y.dtype == np.float32 and y.shape == g.shape
    np.testing.assert_allclose(y, g, atol=1e-6, rtol=0)


@pytest.mark.parametrize("stem", STEMS + ["a9_all_zero_16k_int16_0s5"])
def test_trim_index_exact(stem):
    g = golden(stem)
    assert A.trim_index(g["y_load"]) == tuple(int(i) for i in g["trim_index"])


@pytest.mark.parametrize("stem", STEMS)
def test_window_bit_exact(stem):
    g = golden(stem)
    s, e = g["trim_index"]
    np.testing.assert_array_equal(A.window(g["y_load"][s:e]), g["window"])


@pytest.mark.parametrize("stem", STEMS)
def test_spec_from_golden_window_and_end_to_end(stem):
    g = golden(stem)
    np.testing.assert_allclose(A.log_mel(g["window"]), g["spec"], atol=1e-5, rtol=0)
    spec = A.spectrogram(audio_file(stem))
    assert spec.shape == C.SPEC_SHAPE and spec.dtype == np.float32
    np.testing.assert_allclose(spec, g["spec"], atol=1e-5, rtol=0)


def test_every_window_of_a_long_clip():
    g = golden("a1_breath_cough_16k_mono_float_9s5")
    s, e = g["trim_index"]
    ws = A.windows(g["y_load"][s:e])
    assert len(ws) == len(g["specs_all"]) == 2
    for w, want in zip(ws, g["specs_all"]):
        np.testing.assert_allclose(A.log_mel(w), want, atol=1e-5, rtol=0)


def test_array_input_equals_file_input():
    y, sr = sf.read(audio_file("a2_speech_cough_44k1_stereo_int16"), dtype="float32")
    np.testing.assert_allclose(A.spectrogram(y, sr=sr), golden("a2_speech_cough_44k1_stereo_int16")["spec"],
                               atol=1e-5, rtol=0)


def test_all_zero_golden_is_rejected_as_silence():
    with pytest.raises(A.SilentAudioError, match="digital silence"):
        A.spectrogram(audio_file("a9_all_zero_16k_int16_0s5"))
    # the reference's degenerate branch: a constant spectrogram (no normalisation)
    assert bool(json.loads(shared_path("golden", "mel", "manifest.json").read_text())
                ["files"]["a9_all_zero_16k_int16_0s5.wav"]["degenerate_spec_branch"])


def _write(tmp_path, name, y, sr=16000, subtype=None):
    p = tmp_path / name
    sf.write(p, y, sr, subtype=subtype)
    return p


def test_error_cases(tmp_path):
    rng = np.random.default_rng(0)
    with pytest.raises(A.UnreadableAudioError, match="not found"):
        A.spectrogram(tmp_path / "missing.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(rng.bytes(5000))
    with pytest.raises(A.UnreadableAudioError, match="not a readable audio file"):
        A.spectrogram(junk)
    text = tmp_path / "notes.wav"
    text.write_text("patient 12, left lung\n")
    with pytest.raises(A.UnreadableAudioError):
        A.spectrogram(text)
    with pytest.raises(A.EmptyAudioError):
        A.spectrogram(_write(tmp_path, "empty.wav", np.zeros(0, dtype=np.int16), subtype="PCM_16"))
    nan = rng.standard_normal(16000).astype(np.float32) * 0.1
    nan[500] = np.nan
    with pytest.raises(A.NonFiniteAudioError):
        A.spectrogram(_write(tmp_path, "nan.wav", nan, subtype="FLOAT"))
    inf = rng.standard_normal(16000).astype(np.float32) * 0.1
    inf[7] = np.inf
    with pytest.raises(A.NonFiniteAudioError):
        A.spectrogram(_write(tmp_path, "inf.wav", inf, subtype="FLOAT"))
    with pytest.raises(A.SilentAudioError):
        A.spectrogram(_write(tmp_path, "zeros.wav", np.zeros(32000, dtype=np.int16), subtype="PCM_16"))
    with pytest.raises(A.TooShortAudioError, match="at least 0.1 s"):
        A.spectrogram(_write(tmp_path, "short.wav", 0.1 * rng.standard_normal(800), subtype="PCM_16"))
    for e in (A.UnreadableAudioError, A.EmptyAudioError, A.NonFiniteAudioError, A.SilentAudioError,
              A.TooShortAudioError):
        assert issubclass(e, A.AudioError)


def test_stereo_mixdown_and_resampled_real_recording(tmp_path):
    rec = shared_path("data", "sprsound2022", "audio", "40138127_14.7_0_p3_139.flac")
    y, sr = sf.read(rec, dtype="float32")
    assert sr == 8000
    stereo = np.stack([y, 0.5 * y], axis=1)
    p = _write(tmp_path, "stereo.wav", stereo, sr=sr, subtype="FLOAT")
    np.testing.assert_allclose(A.load(p), A.resample(0.75 * y, sr), atol=1e-6)
    spec = A.spectrogram(rec)
    assert spec.shape == (256, 64) and spec.min() == 0.0 and spec.max() == 1.0


def test_live_window_path():
    g = golden("a3_lung_8k_mono_int16")
    np.testing.assert_allclose(A.spec_from_window(g["window"]), g["spec"], atol=1e-5, rtol=0)
    with pytest.raises(A.AudioError, match="130880"):
        A.spec_from_window(g["window"][:1000])
    with pytest.raises(A.SilentAudioError):
        A.spec_from_window(np.zeros(C.WINDOW_SAMPLES, dtype=np.float32))


# -- bounded file reading (issue 17 item 7): the streamed reader equals the whole-file path ------------------

def _whole_file_head(path):
    """What window 0 needs, computed the simple way: decode and resample everything, trim, slice."""
    y = A.load(path)
    s, e = A.trim_index(y)
    return y[s:min(e, s + C.WINDOW_SAMPLES)], (s, e), len(y)


def _assert_bounded_equals_whole(path, blocks=(A.READ_BLOCK, 4096)):
    want, trim, n = _whole_file_head(path)
    for block in blocks:
        src = A.read_first_window_source(path, block)
        assert (src.trim, src.n) == (trim, n), (path, block)
        assert src.head.dtype == np.float32
        np.testing.assert_array_equal(src.head, want, err_msg=f"{path} block {block}")
    return src


@pytest.mark.parametrize("stem", STEMS)
def test_bounded_reader_bit_exact_on_goldens(stem):
    _assert_bounded_equals_whole(audio_file(stem))
    g = golden(stem)
    assert A.read_first_window_source(audio_file(stem)).trim == tuple(int(i) for i in g["trim_index"])


def test_bounded_reader_bit_exact_on_sprsound():
    files = sorted(shared_path("data", "sprsound2022", "audio").iterdir())
    long = [f for f in files if sf.info(f).frames > 12 * 8000]
    picked = files[::25] + long[::25]
    assert len(picked) > 100 and len(long) > 100
    for f in picked:
        _assert_bounded_equals_whole(f, blocks=(A.READ_BLOCK,))
    for f in picked[:10]:
        _assert_bounded_equals_whole(f, blocks=(1000,))


def _noise(rng, n, amp):
    return (amp * rng.standard_normal(n)).astype(np.float32)


def test_bounded_reader_bit_exact_on_hard_cases(tmp_path):
    """Cases where the trim depends on audio far from the start: the streamed reader must still agree."""
    rng = np.random.default_rng(17)
    N = C.WINDOW_SAMPLES
    cases = {
        # quiet noise, then 30 s later a burst 80 dB louder: the trim start moves past the samples first kept
        "late_loud_burst": (np.concatenate([_noise(rng, 8000 * 40, 1e-4), _noise(rng, 8000 * 2, 0.9),
                                            _noise(rng, 8000 * 5, 1e-4)]), 8000),
        # 3 s of sound after 20 s of near-silence, then 20 s of near-silence: a short clip, cyclically padded
        "short_sound_in_silence": (np.concatenate([_noise(rng, 16000 * 20, 1e-6), _noise(rng, 16000 * 3, 0.3),
                                                   _noise(rng, 16000 * 20, 1e-6)]), 16000),
        # steady sound with a click in the last 50 ms: the reference level is set at the very end
        "click_at_the_end": (np.concatenate([_noise(rng, 48000 * 20, 1e-3), np.full(2400, 0.99, np.float32)]),
                             48000),
        # a slow crescendo over 60 dB: the running trim start moves again and again
        "crescendo": (_noise(rng, 44100 * 30, 1.0) * np.logspace(-4, 0, 44100 * 30).astype(np.float32), 44100),
    }
    reread = {}
    for name, (y, sr) in cases.items():
        p = _write(tmp_path, f"{name}.wav", np.stack([y, 0.5 * y], axis=1), sr=sr, subtype="FLOAT")
        src = _assert_bounded_equals_whole(p, blocks=(A.READ_BLOCK, 4096, 999))
        reread[name] = src.reread
        assert len(src.head) <= N
    assert reread["late_loud_burst"]  # the second, bounded read was exercised
    want_short = A.spectrogram(_write(tmp_path, "s.wav", cases["short_sound_in_silence"][0], 16000, "FLOAT"))
    assert want_short.shape == C.SPEC_SHAPE


def test_long_file_is_scored_with_bounded_memory(tmp_path):
    """30 min of 8 kHz noise: peak Python-tracked memory stays far below the decoded file (115 MB at 16 kHz)."""
    import tracemalloc

    rng = np.random.default_rng(3)
    p = tmp_path / "long.wav"
    with sf.SoundFile(p, "w", 8000, 1, subtype="PCM_16") as f:
        for _ in range(30):
            f.write(_noise(rng, 8000 * 60, 0.1))
    tracemalloc.start()
    try:
        spec = A.spectrogram(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert spec.shape == C.SPEC_SHAPE
    # the envelope keeps 4 bytes per 800 samples (0.3 MB here); blocks, head and STFT a few MB
    assert peak < 16 * 2 ** 20, f"peak {peak / 2 ** 20:.1f} MiB"
    # and the result is the whole-file one: same trim, same first window
    want, trim, _ = _whole_file_head(p)
    src = A.read_first_window_source(p)
    assert src.trim == trim
    np.testing.assert_array_equal(src.head, want)


def test_a_directory_is_not_reported_as_missing(tmp_path):
    with pytest.raises(A.UnreadableAudioError, match="is a directory"):
        A.spectrogram(tmp_path)
    with pytest.raises(A.UnreadableAudioError, match="file not found"):
        A.spectrogram(tmp_path / "nope.wav")
