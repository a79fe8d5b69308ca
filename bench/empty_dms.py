"""Does the model use the demographics on unseen patients? The full model on the dev-test split with its DMS and
with an empty DMS, scored the way `predict` does (first window), patient-grouped bootstrap CIs.

    RESPI_EDGE_DATA=../shared/data python -m respi_edge.bench.empty_dms --out bench/results/empty_dms

A companion of bench/listening.py (whose "full model" column is the with-DMS figure).
"""
from __future__ import annotations

import argparse
import os
import time
from importlib.resources import files
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    from respi_edge.bench.listening import full_model_scores
    from respi_edge.runtime import api, atomic
    from respi_edge.runtime.manifest import read_manifest
    from respi_edge.runtime.stats import auroc_ci
    from respi_edge.train.splits import apply_holdout

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("RESPI_EDGE_DATA", "../shared/data"))
    ap.add_argument("--checkpoint", default=None, help="a checkpoint (default: the built-in demo model)")
    ap.add_argument("--holdout", default=str(files("respi_edge.configs") / "splits" / "sprsound2022_devtest.csv"))
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--out", default="bench/results/empty_dms")
    a = ap.parse_args(argv)
    t0 = time.time()
    _, dev = apply_holdout(read_manifest(Path(a.data) / "sprsound2022" / "train.csv"), a.holdout)
    model = api.load_model(a.checkpoint)
    y = np.array([r.label for r in dev])
    pats = [r.patient for r in dev]
    with_dms = full_model_scores(model, dev)  # one Session per DMS, as bench/listening scores the full model
    empty = np.array([p.prob for p in api.Session(model, dms="").score_files([r.path for r in dev])])
    res = {"model": model.info.name, "split": "dev-test (unseen patients)", "n": len(dev),
           "patients": len(set(pats)), "positives": int(y.sum()), "bootstrap": a.bootstrap,
           "auroc": {"with DMS": auroc_ci(y, with_dms, pats, n_boot=a.bootstrap).to_dict(),
                     "empty DMS": auroc_ci(y, empty, pats, n_boot=a.bootstrap).to_dict()},
           "mean_abs_dp": float(np.abs(with_dms - empty).mean()), "seconds": time.time() - t0,
           "command": "RESPI_EDGE_DATA=../shared/data python -m respi_edge.bench.empty_dms"}
    md = [f"# With and without demographics ({res['model']})", "",
          f"Command: `{res['command']}`; {res['seconds']:.0f} s on {os.cpu_count()} cores. {res['split']}: "
          f"{res['n']} recordings, {res['patients']} patients, {res['positives']} positive; AUROC with "
          f"patient-grouped bootstrap 95 % CIs ({a.bootstrap} resamples); mean |Δp| between the two "
          f"{res['mean_abs_dp']:.4f}.", "", "| input | AUROC |", "|---|---|"]
    for k, ci in res["auroc"].items():
        md.append(f"| {k} | {ci['value']:.3f} [{ci['ci95'][0]:.3f}, {ci['ci95'][1]:.3f}] |")
    md += ["", "Screening aid, not a diagnosis."]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out.with_suffix(".json"), res)
    atomic.write_text(out.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))
    return res


if __name__ == "__main__":
    main()
