"""Patient-disjoint splits: the dev-test split no training step sees, and the validation split for early stopping.

A split is a manifest (the data's own CSV format, paths relative to the data set's folder) so it can be read
by every tool; selecting rows by their manifest path keeps it valid wherever the data set is unpacked.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from respi_edge.runtime.manifest import Manifest, Row


def patient_split(rows: list[Row], fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """(kept, held out): whole patients, label-stratified (StratifiedGroupKFold), `fraction` ≈ held-out share."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = max(2, round(1 / fraction))
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    labels = [r.label for r in rows]
    tr, ho = next(sgkf.split(np.zeros(len(rows)), labels, [r.patient for r in rows]))
    return [rows[i] for i in tr], [rows[i] for i in ho]


def write_split(rows: list[Row], path: str | os.PathLike, fields: list[str]) -> None:
    """A manifest of `rows` with their paths as the source manifest wrote them, atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "label", "patient", *fields])
        for r in rows:
            w.writerow([r.rel, r.label, r.patient, *[r.dms.get(k, "") for k in fields]])
    os.replace(tmp, p)


def read_split_paths(path: str | os.PathLike) -> set[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return {rec["path"].strip() for rec in csv.DictReader(f)}


def apply_holdout(manifest: Manifest, holdout: str | os.PathLike) -> tuple[list[Row], list[Row]]:
    """(rows for fitting, held-out rows) of `manifest`; the held-out patients lose every recording."""
    paths = read_split_paths(holdout)
    held = [r for r in manifest.rows if r.rel in paths]
    if len(held) != len(paths):
        raise ValueError(f"{holdout}: {len(paths) - len(held)} of its recordings are not in {manifest.path}")
    patients = {r.patient for r in held}
    return [r for r in manifest.rows if r.patient not in patients], held
