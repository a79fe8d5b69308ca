"""bench/listening_limits: the scored window in file time, event overlap, the probe's learning curve."""
from __future__ import annotations

import numpy as np

from conftest import shared_path
from respi_edge.bench.listening_limits import learning_curve, mel_features, scored_window, window_holds_event
from respi_edge.runtime import audio as fe
from respi_edge.runtime import contract as C
from respi_edge.runtime.manifest import read_manifest
from respi_edge.train.views import Event

DATA = shared_path("data", "sprsound2022")


def test_scored_window_starts_at_the_first_non_silent_frame():
    for row in read_manifest(DATA / "train.csv").rows[:3]:
        start, end = scored_window(row.path)
        assert start == fe.trim_index(fe.load(row.path))[0] / C.SAMPLE_RATE
        assert abs(end - start - C.WINDOW_SECONDS) < 1e-9


def test_only_adventitious_events_inside_the_scored_window_count():
    path = read_manifest(DATA / "train.csv").rows[0].path
    start, end = scored_window(path)
    assert window_holds_event(path, [Event(end - 0.5, end + 1.0, True)])  # overlaps the window's last half second
    assert not window_holds_event(path, [Event(end + 0.1, end + 2.0, True)])  # after the window
    assert not window_holds_event(path, [Event(start, end, False)])  # a normal breath cycle is no adventitious sound
    assert not window_holds_event(path, [])


def test_mel_features_are_per_band_mean_and_std():
    spec = np.tile(np.arange(64, dtype=np.float32), (256, 1))
    spec[::2, 0] += 1.0
    f = mel_features(spec)
    assert f.shape == (128,)
    assert np.allclose(f[:64], np.arange(64) + np.r_[0.5, np.zeros(63)]) and np.isclose(f[64], 0.5)
    assert np.allclose(f[65:], 0.0)


def test_learning_curve_draws_patient_subsets():
    rng = np.random.default_rng(0)
    patients = [f"p{i // 4}" for i in range(200)]  # 50 patients, 4 recordings each
    y = np.array([i // 4 % 2 for i in range(200)])
    x = rng.normal(size=(200, 3)) + 3.0 * y[:, None]  # separable: every fraction ranks the dev set well
    y_dev = np.array([0, 1] * 20)
    x_dev = rng.normal(size=(40, 3)) + 3.0 * y_dev[:, None]
    curve = learning_curve(x, y, patients, x_dev, y_dev, draws=3)
    assert [c["fraction"] for c in curve] == [0.25, 0.5, 0.75, 1.0]
    assert [c["draws"] for c in curve] == [3, 3, 3, 1] and [c["patients"] for c in curve] == [12, 25, 38, 50]
    assert all(c["min"] > 0.95 for c in curve)
    noise = learning_curve(rng.normal(size=(200, 3)), y, patients, rng.normal(size=(40, 3)), y_dev, draws=3)
    assert abs(noise[-1]["mean"] - 0.5) < 0.2  # features that carry no label give no ranking
