"""Ablation: how much the frozen, untrained OPERA-CT features can tell at all (a linear probe).

The demo model's encoder is a deterministic random initialisation (no pretrained OPERA-CT weights can be had
here), so the RespLLM demo cannot beat what its frozen tokens carry. A logistic regression on the mean and
standard deviation of the 64 tokens, trained on the same train split, bounds that from a different angle.

    RESPI_EDGE_DATA=../shared/data python -m respi_edge.bench.probe_encoder --out bench/results/probe_encoder
"""
from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np


def features(rows, cache) -> np.ndarray:
    out = []
    for r in rows:
        t = cache.get(r).numpy()
        out.append(np.concatenate([t.mean(0), t.std(0)]))
    return np.array(out)


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from respi_edge.runtime.stats import auroc_ci
    from respi_edge.runtime.builtin import encoder_init, synthetic_encoder_state
    from respi_edge.runtime.encoder import load_encoder
    from respi_edge.runtime.manifest import read_manifest
    from respi_edge.train.token_cache import TokenCache

    ap = argparse.ArgumentParser()
    root = os.environ.get("RESPI_EDGE_DATA", "../shared/data")
    ap.add_argument("--train", default=f"{root}/sprsound2022/train.csv")
    ap.add_argument("--test", default=f"{root}/sprsound2022/test_intra.csv")
    ap.add_argument("--out", default="bench/results/probe_encoder")
    a = ap.parse_args()
    cache = TokenCache(load_encoder(synthetic_encoder_state(encoder_init())), encoder_init()["sha256"])
    tr, te = read_manifest(a.train), read_manifest(a.test)
    xtr, xte = features(tr.rows, cache), features(te.rows, cache)
    rows = []
    for c in (0.01, 0.1, 1.0):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, class_weight="balanced"))
        p = clf.fit(xtr, tr.labels).predict_proba(xte)[:, 1]
        ci = auroc_ci(te.labels, p, te.patients, 2000)
        rows.append({"C": c, "test_auroc": ci.to_dict()})
        print(f"C={c}: test_intra AUROC {ci}")
    doc = {"command": "python -m respi_edge.bench.probe_encoder", "machine": f"{platform.machine()} "
           f"{os.cpu_count()} cores", "features": "mean+std of the 64 frozen OPERA-CT tokens (deterministic init)",
           "train": len(tr), "test": len(te), "rows": rows}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    md = ["| probe (logistic regression, C) | test_intra AUROC [patient-grouped 95 % CI] |", "|---|---|"]
    md += [f"| C = {r['C']} | {r['test_auroc']['value']:.3f} [{r['test_auroc']['ci95'][0]:.3f}, "
           f"{r['test_auroc']['ci95'][1]:.3f}] |" for r in rows]
    out.with_suffix(".md").write_text(f"Command: `{doc['command']}`\n\n" + "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
