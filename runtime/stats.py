"""Statistics for screening scores: patient-grouped bootstrap CIs, paired ΔAUROC, DeLong, calibration, drift.

Recordings of one patient are correlated, so every resampling draws patients (with all their recordings),
never single recordings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score


@dataclass
class CI:
    value: float
    lo: float
    hi: float

    def to_dict(self) -> dict:
        return {"value": self.value, "ci95": [self.lo, self.hi]}

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.lo:.3f}, {self.hi:.3f}]"


def _groups(patients) -> list[np.ndarray]:
    patients = np.asarray(patients)
    _, inv = np.unique(patients, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    bounds = np.flatnonzero(np.diff(inv[order])) + 1
    return np.split(order, bounds)


def grouped_bootstrap_indices(patients, n_boot: int = 2000, seed: int = 0):
    """Yield index arrays: patients drawn with replacement, each bringing all of its recordings."""
    groups = _groups(patients)
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        pick = rng.integers(0, len(groups), len(groups))
        yield np.concatenate([groups[i] for i in pick])


def auroc(labels, probs) -> float:
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, probs))


def _percentile_ci(value: float, vals: list[float]) -> CI:
    """95 % percentile interval; NaN bounds when no resample had both classes."""
    if not vals:
        return CI(value, float("nan"), float("nan"))
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return CI(value, float(lo), float(hi))


def auroc_ci(labels, probs, patients, n_boot: int = 2000, seed: int = 0) -> CI:
    """AUROC with a patient-grouped percentile bootstrap 95 % CI (resamples lacking a class are skipped)."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    vals = [auroc(labels[i], probs[i]) for i in grouped_bootstrap_indices(patients, n_boot, seed)]
    return _percentile_ci(auroc(labels, probs), [v for v in vals if not math.isnan(v)])


def delta_auroc_ci(labels, p_ref, p_new, patients, n_boot: int = 2000, seed: int = 0) -> CI:
    """AUROC(new) − AUROC(ref), paired: both scored on the same resampled patients."""
    labels, p_ref, p_new = np.asarray(labels), np.asarray(p_ref), np.asarray(p_new)
    vals = []
    for i in grouped_bootstrap_indices(patients, n_boot, seed):
        a, b = auroc(labels[i], p_new[i]), auroc(labels[i], p_ref[i])
        if not (math.isnan(a) or math.isnan(b)):
            vals.append(a - b)
    return _percentile_ci(auroc(labels, p_new) - auroc(labels, p_ref), vals)


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong structural components, ties counted 1/2: V10[i] = P(neg < pos_i), V01[j] = P(pos > neg_j).

    Computed from midranks (Sun & Xu 2014) in O(N log N) instead of the O(m·n) pairwise table."""
    from scipy.stats import rankdata

    m, n = len(pos), len(neg)
    both = rankdata(np.concatenate([pos, neg]))
    v10 = (both[:m] - rankdata(pos)) / n
    v01 = 1.0 - (both[m:] - rankdata(neg)) / m
    return v10, v01


def delong_test(labels, p_a, p_b) -> tuple[float, float, float]:
    """DeLong et al. (1988) test of two correlated AUROCs on the same recordings: (ΔAUROC = a − b, z, two-sided p).

    It treats recordings as independent; the patient-grouped bootstrap CI of ΔAUROC is the clustered view."""
    labels = np.asarray(labels).astype(bool)
    m, n = int(labels.sum()), int((~labels).sum())
    if m < 2 or n < 2:
        return float("nan"), float("nan"), float("nan")
    comps = [_placements(p[labels], p[~labels]) for p in (np.asarray(p_a, float), np.asarray(p_b, float))]
    aucs = np.array([c[0].mean() for c in comps])
    s10 = np.cov(np.vstack([c[0] for c in comps]))
    s01 = np.cov(np.vstack([c[1] for c in comps]))
    s = s10 / m + s01 / n
    var = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    diff = float(aucs[0] - aucs[1])
    if var <= 1e-300:
        return diff, 0.0 if diff == 0 else math.copysign(math.inf, diff), 1.0 if diff == 0 else 0.0
    z = diff / math.sqrt(var)
    p = math.erfc(abs(z) / math.sqrt(2))
    return diff, float(z), float(p)


def ece(labels, probs, n_bins: int = 10) -> float:
    """Expected calibration error of P(class 1) with equal-width bins."""
    labels, probs = np.asarray(labels, float), np.asarray(probs, float)
    bins = np.clip((probs * n_bins).astype(int), 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            total += sel.mean() * abs(probs[sel].mean() - labels[sel].mean())
    return float(total)


def mean_kl(p_ref, p_new, eps: float = 1e-7) -> float:
    """Mean two-class KL(ref || new)."""
    p = np.clip(np.asarray(p_ref, float), eps, 1 - eps)
    q = np.clip(np.asarray(p_new, float), eps, 1 - eps)
    return float(np.mean(p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))))


def flip_rate(p_ref, p_new, threshold: float, threshold_new: float | None = None) -> float:
    """Share of recordings whose decision (P >= threshold, as the runtime decides) differs; `threshold_new`: the
    new model judged at its own threshold."""
    t_new = threshold if threshold_new is None else threshold_new
    return float(np.mean((np.asarray(p_ref) >= threshold) != (np.asarray(p_new) >= t_new)))


def abs_dp_summary(p_ref, p_new) -> dict:
    """Distribution of |ΔP(class 1)|: median, 95th percentile, maximum, and the mean (what --max-drift budgets)."""
    dp = np.abs(np.asarray(p_new, float) - np.asarray(p_ref, float))
    return {"median": float(np.median(dp)), "p95": float(np.percentile(dp, 95)), "max": float(dp.max()),
            "mean": float(dp.mean())}


def sens_spec(labels, probs, threshold: float) -> tuple[float, float]:
    labels, pred = np.asarray(labels).astype(bool), np.asarray(probs) >= threshold
    sens = float((pred & labels).sum() / max(labels.sum(), 1))
    spec = float((~pred & ~labels).sum() / max((~labels).sum(), 1))
    return sens, spec


def youden_threshold(labels, probs) -> float:
    """Threshold maximising sensitivity + specificity − 1 on these scores."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(labels, probs, drop_intermediate=False)
    i = int(np.argmax(tpr - fpr))
    return float(min(max(thr[i], 0.0), 1.0))


def threshold_for_sensitivity(labels, probs, target: float) -> float:
    """Largest threshold whose sensitivity reaches `target`."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(labels, probs, drop_intermediate=False)
    ok = np.flatnonzero(tpr >= target)
    return float(min(max(thr[ok[0]], 0.0), 1.0))
