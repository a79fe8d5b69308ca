"""Statistics against hand-computed values and their defining properties."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from respi_edge.runtime import stats


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


def _delong_pairwise(y, a, b):
    """DeLong from its definition: the O(m·n) Mann-Whitney kernel table, with numpy only (test oracle)."""
    y = np.asarray(y).astype(bool)
    out = []
    for p in (np.asarray(a, float), np.asarray(b, float)):
        pos, neg = p[y][:, None], p[~y][None, :]
        psi = (pos > neg) + 0.5 * (pos == neg)
        out.append((psi.mean(1), psi.mean(0)))
    m, n = y.sum(), (~y).sum()
    var = sum(np.var(v[0] - w[0], ddof=1) / m + np.var(v[1] - w[1], ddof=1) / n
              for v, w in [(out[0], out[1])])
    diff = out[0][0].mean() - out[1][0].mean()
    return diff, diff / math.sqrt(var)


def test_fast_delong_equals_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 300)
    a = np.round(y * 0.3 + rng.random(300), 1)  # rounded: many ties within and across classes
    b = np.round(y * 0.1 + rng.random(300), 2)
    d, z, p = stats.delong_test(y, a, b)
    d_ref, z_ref = _delong_pairwise(y, a, b)
    assert d == pytest.approx(d_ref, abs=1e-12) and z == pytest.approx(z_ref, rel=1e-9)
    assert d == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b), abs=1e-12)
    assert p == pytest.approx(math.erfc(abs(z_ref) / math.sqrt(2)), rel=1e-9)


def test_delong_is_nan_without_two_of_each_class():
    assert all(math.isnan(v) for v in stats.delong_test([1, 0, 0], [0.9, 0.1, 0.2], [0.8, 0.3, 0.2]))


def test_delong_false_positive_rate_is_near_nominal():
    """Two equally good, independent-noise scorers: p < 0.05 in about 5 % of draws (the test is calibrated)."""
    rng = np.random.default_rng(11)
    hits = 0
    for _ in range(400):
        y = rng.integers(0, 2, 120)
        hits += stats.delong_test(y, y + rng.normal(0, 1, 120), y + rng.normal(0, 1, 120))[2] < 0.05
    assert 0.02 <= hits / 400 <= 0.09


def test_grouped_bootstrap_keeps_the_patient_count_and_uses_every_patient():
    patients = ["a"] * 5 + ["b"] + ["c"] * 3 + ["d"] * 2
    seen = set()
    for idx in stats.grouped_bootstrap_indices(patients, n_boot=200, seed=0):
        drawn = [patients[i] for i in idx]
        # 4 patients drawn per resample: recordings = sum of the drawn patients' sizes
        assert sum(drawn.count(p) // {"a": 5, "b": 1, "c": 3, "d": 2}[p] for p in set(drawn)) == 4
        seen.update(drawn)
    assert seen == {"a", "b", "c", "d"}


def test_ece_kl_and_drift_summaries_on_hand_values():
    # bins [0.1, 0.2) and [0.8, 0.9), two recordings each: |0.125 - 0.5| / 2 + |0.825 - 0.5| / 2 = 0.35
    assert stats.ece([0, 1, 0, 1], [0.1, 0.15, 0.8, 0.85]) == pytest.approx(0.35)
    # one recording per bin: the mean |p - y| = (0.1 + 0.8 + 0.8 + 0.1) / 4
    assert stats.ece([0, 1, 0, 1], [0.1, 0.2, 0.8, 0.9]) == pytest.approx(0.45)
    # a probability of exactly 1.0 falls in the last bin, not past it
    assert stats.ece([1, 1], [1.0, 1.0]) == 0
    # KL(0.5 || 0.9) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1)
    assert stats.mean_kl([0.5], [0.9]) == pytest.approx(0.5 * math.log(5 / 9) + 0.5 * math.log(5))
    assert stats.flip_rate([0.2, 0.5, 0.7, 0.9], [0.3, 0.49, 0.7, 0.1], 0.5) == 0.5  # >= threshold is positive
    s = stats.abs_dp_summary([0.1, 0.2, 0.3, 0.4, 0.5], [0.1, 0.25, 0.3, 0.4, 0.9])
    assert s["median"] == 0 and s["max"] == pytest.approx(0.4) and 0.05 < s["p95"] <= 0.4
    assert s["mean"] == pytest.approx(0.45 / 5)


def test_thresholds_reach_their_targets():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    p = np.clip(0.3 * y + 0.7 * rng.random(500), 0, 1)
    for target in (0.8, 0.9, 0.95):
        t = stats.threshold_for_sensitivity(y, p, target)
        sens, _ = stats.sens_spec(y, p, t)
        assert sens >= target
        # the largest such threshold: any higher cut-off on these scores misses the target
        higher = p[p > t]
        if len(higher):
            assert stats.sens_spec(y, p, higher.min())[0] < target
    t = stats.youden_threshold(y, p)
    j = sum(stats.sens_spec(y, p, t)) - 1
    assert all(sum(stats.sens_spec(y, p, c)) - 1 <= j + 1e-12 for c in np.unique(p))
