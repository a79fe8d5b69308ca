"""Collect `respi-edge verify --json` reports into one drift table (bench/results/drift_test_intra.*).

    python -m respi_edge.bench.drift_table REPORT.json... --out bench/results/drift_test_intra
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def row(r: dict) -> str:
    q = r.get("quantization") or {}
    name = f"{r.get('backend', 'torch-bnb')} {q.get('bits')}-bit {q.get('quant')}"
    if q.get("layer_plan"):
        kept = sum(1 for b in q["layer_plan"].values() if b > 4)
        name += f" + drift budget {q['drift_budget']['max_drift']} ({kept} layers kept at 8/16 bits)"
    c = lambda x: f"{x['value']:.3f} [{x['ci95'][0]:.3f}, {x['ci95'][1]:.3f}]"  # noqa: E731
    return (f"| {name} | {r['encoder_variant']} | {c(r['auroc_bundle'])} | {c(r['delta_auroc'])} | "
            f"{r['delong']['p']:.2f} | {100 * r['flip_rate']:.1f} % | {r['abs_dp']['median']:.4f} / "
            f"{r['abs_dp']['p95']:.4f} / {r['abs_dp']['max']:.4f} | {r['mean_kl']:.1e} | {r['ece_bundle']:.3f} | "
            f"{r['sens_spec_bundle'][0]:.3f} / {r['sens_spec_bundle'][1]:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--out", default="bench/results/drift_test_intra")
    a = ap.parse_args()
    reps = [json.loads(Path(p).read_text()) for p in a.reports if Path(p).stat().st_size]
    ref = reps[0]
    c = lambda x: f"{x['value']:.3f} [{x['ci95'][0]:.3f}, {x['ci95'][1]:.3f}]"  # noqa: E731
    md = [f"Data: `{ref['data']}` ({ref['n']} recordings, {ref['patients']} patients, {ref['positives']} positive); "
          f"task `{ref['task']}`; reference: {ref['reference']}, AUROC {c(ref['auroc_reference'])}, ECE "
          f"{ref['ece_reference']:.3f}, sensitivity / specificity {ref['sens_spec_reference'][0]:.3f} / "
          f"{ref['sens_spec_reference'][1]:.3f} at the bundle threshold {ref['threshold']:.3f}. CIs: patient-grouped "
          f"bootstrap (1,000 resamples; ΔAUROC paired). Command per row: `respi-edge verify --bundle B "
          f"[--encoder-variant V] --data test_intra.csv --bootstrap 1000`.\n",
          "| bundle (LLM) | encoder | AUROC | ΔAUROC | DeLong p | flips | abs Δp median / p95 / max | KL | ECE | "
          "sens / spec |", "|---|---|---|---|---|---|---|---|---|---|"]
    md += [row(r) for r in reps]
    out = Path(a.out)
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    out.with_suffix(".json").write_text(json.dumps(reps, indent=1))
    print("\n".join(md))


if __name__ == "__main__":
    main()
