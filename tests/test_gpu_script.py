"""The prepared GPU run (bench/gpu) runs end to end on a CPU: run.sh (import shim, wheel bootstrap) → driver →
results JSON + Markdown with the fields the GPU run reports. The tiny golden RespLLM is scored through the same
correctness code the GPU run uses, so its fp32 check is a real golden comparison here too."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_cpu_dry_run(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "RESPI_GPU_WORK": str(tmp_path / "work")}
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu" / "run.sh"), "--device", "cpu", "--dry-run",
                        "--sections", "roofline,correctness,stages,llm,projection", "--variants", "nf4",
                        "--cases", "1", "--reps", "2", "--batches", "1", "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((out / "gpu_dryrun_cpu.json").read_text())
    assert doc["errors"] == {}
    assert doc["env"]["device_name"].startswith("CPU ")
    assert json.loads((out / "bootstrap.json").read_text())["python"]

    c = doc["correctness"]
    assert c["fp32"]["tokenization_matches_golden"] is True
    assert c["fp32"]["pass"] is True  # fp32 within 1e-4 of the golden logits, full pass and prefix reuse
    assert c["fp32"]["prefix_reuse"]["max_abs_dlogit_vs_golden"] <= 1e-4
    assert c["fp16"]["full_pass"]["max_abs_dp_vs_golden"] < 0.05

    m = doc["roofline"]
    assert m["bandwidth_gbs"] > 0 and m["matmul_tflops"] > 0
    for stage in ("front end (file -> spectrogram, CPU)", "encoder fp32", "projector", "head"):
        assert doc["shared_stages"][stage]["p50"] > 0

    (row,) = doc["llm"]
    assert row["variant"] == "nf4" and row["bits"] == 4
    step = "LLM step, prefix reuse, batch 1 (64 tok)"
    assert row["stages"][step]["n"] >= 2 and row["stages"][step]["p50"] > 0
    f = row["floors"][step]
    assert f["floor_ms"] == max(f["memory_floor_ms"], f["compute_floor_ms"]) > 0
    assert set(row["throughput_windows_per_s"]) == {"1"}
    assert row["weight_bytes"] > 0 and row["cold_start_s"] >= row["build_s"]
    assert doc["goal"]["ratio"] == f["ratio_p50_to_floor"]

    targets = {p["target"] for p in doc["projection"]}
    assert targets == {"RTX 4090", "RTX 4070", "Jetson AGX Orin 64GB"}
    md = (out / "gpu_dryrun_cpu.md").read_text()
    assert "CPU DRY RUN" in md and "PROJECTION" in md and doc["env"]["device_name"] in md
