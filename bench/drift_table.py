"""Collect `respi-edge verify --json` reports into one drift table (bench/results/drift_test_intra.*).

    python -m respi_edge.bench.drift_table REPORT.json... --out bench/results/drift_test_intra

A REPORT.json may also hold a list of reports (e.g. a previous drift_test_intra.json); rows are sorted by LLM bits
(16, 8, 4), then backend, quantization and encoder variant, and a bundle seen twice keeps its last report.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from respi_edge.runtime import atomic


def name(r: dict) -> str:
    q = r.get("quantization") or {}
    out = f"{r.get('backend', 'torch-bnb')} {q.get('bits')}-bit {q.get('quant')}"
    if q.get("layer_plan"):
        layers = {int(k): b for k, b in q["layer_plan"].items() if int(k) >= 0}
        counts = ", ".join(f"{sum(1 for b in layers.values() if b == bits)} at {bits}"
                           for bits in (4, 8, 16) if bits in layers.values())
        out += f" + drift budget {q['drift_budget']['max_drift']} ({len(layers)} layers: {counts} bits"
        if "-1" in q["layer_plan"] or -1 in q["layer_plan"]:
            out += f"; embeddings {q['layer_plan'].get('-1', q['layer_plan'].get(-1))}-bit"
        out += ")"
    return out


def flips(r: dict) -> str:
    if "flip_rate_own_thresholds" in r:  # re-calibrated bundle: what a user sees is each model at its own threshold
        return (f"{100 * r['flip_rate_own_thresholds']:.1f} % at own thresholds ({100 * r['flip_rate']:.1f} % "
                f"at the bundle's)")
    return f"{100 * r['flip_rate']:.1f} %"


def row(r: dict) -> str:
    c = lambda x: f"{x['value']:.3f} [{x['ci95'][0]:.3f}, {x['ci95'][1]:.3f}]"  # noqa: E731
    return (f"| {name(r)} | {r['encoder_variant']} | {r['threshold']:.3f} | {c(r['auroc_bundle'])} | {c(r['delta_auroc'])} | "
            f"{r['delong']['p']:.2f} | {flips(r)} | {r['abs_dp']['median']:.4f} / "
            f"{r['abs_dp']['p95']:.4f} / {r['abs_dp']['max']:.4f} | {r['mean_kl']:.1e} | {r['ece_bundle']:.3f} | "
            f"{r['sens_spec_bundle'][0]:.3f} / {r['sens_spec_bundle'][1]:.3f} |")


def _key(r: dict) -> tuple:
    q = r.get("quantization") or {}
    variants = ("fp32", "fp16", "int8", "int8-static")
    return (-int(q.get("bits") or 0), r.get("backend") != "torch-bnb", bool(q.get("layer_plan")),
            q.get("quant") == "fp4", variants.index(r["encoder_variant"]) if r["encoder_variant"] in variants else 9)


def _machine() -> str:
    import os

    from respi_edge.bench.latency import cpu_name

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{os.cpu_count()}-core {cpu_name()} CPU ({simd})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--out", default="bench/results/drift_test_intra")
    ap.add_argument("--machine", default=_machine(), help="Where the reports were made (default: this machine).")
    ap.add_argument("--note", default="", help="A paragraph printed above the table (how these bundles differ).")
    a = ap.parse_args()
    reps: dict[tuple, dict] = {}
    for p in a.reports:
        if not Path(p).stat().st_size:
            continue
        doc = json.loads(Path(p).read_text())
        for r in doc if isinstance(doc, list) else [doc]:
            reps[(r["bundle"], r["encoder_variant"])] = r
    rows = sorted(reps.values(), key=_key)
    ref = rows[0]
    c = lambda x: f"{x['value']:.3f} [{x['ci95'][0]:.3f}, {x['ci95'][1]:.3f}]"  # noqa: E731
    md = [f"Data: `{ref['data']}` ({ref['n']} recordings, {ref['patients']} patients, {ref['positives']} positive); "
          f"task `{ref['task']}`; reference: the built-in demo model in fp32 (its base LLM is the Q4_1 GGUF of "
          f"SmolLM2-135M-Instruct, dequantized: it stands in for full precision), AUROC {c(ref['auroc_reference'])}, "
          f"ECE {ref['ece_reference']:.3f}, sensitivity / specificity {ref['sens_spec_reference'][0]:.3f} / "
          f"{ref['sens_spec_reference'][1]:.3f} at its threshold {ref.get('threshold_reference', ref['threshold']):.3f}. CIs: patient-grouped "
          f"bootstrap (1,000 resamples; ΔAUROC paired); DeLong treats recordings as independent. Flips, sensitivity and "
          f"specificity: at each bundle's threshold (column), the reference judged at the same threshold. Command per row: `respi-edge verify --bundle B "
          f"[--encoder-variant V] --data test_intra.csv --bootstrap 1000`. Machine: {a.machine}, no GPU (bitsandbytes' "
          f"CPU and CUDA kernels round differently, and its CPU kernels differ between AVX2 and AVX-512 machines: "
          f"drift on a GPU was not measured).\n",
          *([a.note + "\n"] if a.note else []),
          "| bundle (LLM) | encoder | threshold | AUROC | ΔAUROC | DeLong p | flips | abs Δp median / p95 / max | KL | "
          "ECE | sens / spec |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    md += [row(r) for r in rows]
    out = Path(a.out)
    atomic.write_text(out.with_suffix(".md"), "\n".join(md) + "\n")
    atomic.write_json(out.with_suffix(".json"), rows)
    print("\n".join(md))


if __name__ == "__main__":
    main()
