"""Write a training recipe's validation split as a manifest: the calibration data of the committed drift results.

    python -m respi_edge.bench.calibration_set --recipe configs/recipes/sprsound_demo.yaml --out calib/val.csv

The demo model never fitted these recordings or their patients (early stopping and its threshold used them),
and none of them is a test_intra recording, so calibrating a bundle's threshold or its drift budget on them leaves
the test data untouched (test_intra is SPRSound's intra-patient split: its patients also appear in train).
The split is recomputed with the trainer's own function and seed, so it is the same split.
"""
from __future__ import annotations

import argparse

from respi_edge.runtime.manifest import Row, write_manifest
from respi_edge.train.recipe import load_recipe
from respi_edge.train.trainer import task_rows


def validation_rows(recipe_path: str, task_index: int = 0) -> list[Row]:
    """The trainer's own validation rows (after its holdout patients are removed), from its own function."""
    return task_rows(load_recipe(recipe_path))[task_index].val


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rows = validation_rows(a.recipe)
    write_manifest(rows, a.out)
    print(f"{a.out}: {len(rows)} recordings, {len({r.patient for r in rows})} patients, "
          f"{sum(r.label for r in rows)} positive")


if __name__ == "__main__":
    main()
