"""Statistics against hand-computed values and their defining properties."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from respi_edge.bench import stats


def test_delong_hand_computed_example():
    y = [1, 1, 0, 0]
    a = [0.9, 0.8, 0.3, 0.1]  # AUROC 1.0
    b = [0.9, 0.2, 0.3, 0.1]  # AUROC 0.75
    d, z, p = stats.delong_test(y, a, b)
    # V10_b = [1, .5], V01_b = [.5, 1]: var(ΔAUC) = .125/2 + .125/2 = .125 -> z = .25/sqrt(.125)
    assert d == pytest.approx(0.25)
    assert z == pytest.approx(0.25 / math.sqrt(0.125))
    assert p == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert stats.delong_test(y, b, a)[0] == pytest.approx(-0.25)


def test_delong_identical_and_clearly_different():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    good = y + rng.normal(0, 0.5, 400)
    bad = rng.normal(0, 1, 400)
    d, _, p = stats.delong_test(y, good, good)
    assert d == 0 and p == 1.0
    d, _, p = stats.delong_test(y, good, bad)
    assert d == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, bad)) and p < 1e-6


def test_grouped_bootstrap_draws_whole_patients():
    patients = ["a"] * 5 + ["b"] * 1 + ["c"] * 3
    for idx in stats.grouped_bootstrap_indices(patients, n_boot=50, seed=3):
        counts = {}
        for i in idx:
            counts[patients[i]] = counts.get(patients[i], 0) + 1
        sizes = {"a": 5, "b": 1, "c": 3}
        assert all(n % sizes[p] == 0 for p, n in counts.items())


def test_auroc_ci_covers_the_estimate_and_widens_with_fewer_patients():
    rng = np.random.default_rng(0)
    patient = np.repeat(np.arange(20), 15)  # 20 patients x 15 recordings, label and offset shared per patient
    y = np.repeat(rng.integers(0, 2, 20), 15)
    p = 0.5 * y + np.repeat(rng.normal(0, 0.4, 20), 15) + 0.1 * rng.random(300)
    many = stats.auroc_ci(y, p, list(range(300)), n_boot=300)  # pretending recordings are independent
    few = stats.auroc_ci(y, p, patient.tolist(), n_boot=300)
    assert many.lo <= many.value <= many.hi and few.lo <= few.value <= few.hi
    assert (few.hi - few.lo) > (many.hi - many.lo)
    assert many.value == pytest.approx(roc_auc_score(y, p))


def test_delta_ci_of_a_model_with_itself_is_zero():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    p = rng.random(100)
    c = stats.delta_auroc_ci(y, p, p, list(range(100)), n_boot=100)
    assert c.value == c.lo == c.hi == 0


def test_ece_kl_sens_spec_thresholds():
    y = np.array([0, 0, 1, 1])
    assert stats.ece(y, np.array([0.0, 0.0, 1.0, 1.0])) == 0
    assert stats.ece(y, np.array([1.0, 1.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert stats.mean_kl([0.3, 0.7], [0.3, 0.7]) == pytest.approx(0, abs=1e-12)
    assert stats.mean_kl([0.5], [0.9]) > 0
    assert stats.sens_spec(y, [0.1, 0.6, 0.7, 0.4], 0.5) == (0.5, 0.5)
    probs = np.array([0.1, 0.2, 0.8, 0.9])
    assert 0.2 < stats.youden_threshold(y, probs) <= 0.8
    assert stats.threshold_for_sensitivity(y, [0.1, 0.2, 0.3, 0.9], 1.0) == pytest.approx(0.3)
