"""Measured roofline of the machine the run is on, the floors of each stage, and the projection to other GPUs.

Floors: streaming the weights once at the measured memory bandwidth (a large device-to-device copy, read + write
counted), and the FLOPs at the measured matmul peak (a large fp16 GEMM on a GPU; fp32 on a CPU, which is what the
runtime computes in there). No implementation beats the larger of the two.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch

from respi_edge.bench import latency

# Published specs (PROJECTION only; nothing was run on these). Bandwidth GB/s; dense fp16 tensor TFLOP/s with
# fp16 accumulation, and with fp32 accumulation (what torch's fp16 GEMMs use; GeForce Ada runs it at half rate);
# memory GB.
#  RTX 4090: NVIDIA Ada Lovelace architecture whitepaper (AD102): 1008 GB/s, 165.2 (fp16 acc) / 82.6 (fp32 acc)
#            dense FP16 tensor TFLOPS, 24 GB.
#  RTX 4070: NVIDIA RTX 4070 specifications: 504 GB/s (21 Gbps x 192 bit), 116.8 sparse -> 58.4 dense FP16 tensor
#            TFLOPS (fp16 acc), half of it with fp32 acc (29.2), 12 GB.
#  Jetson AGX Orin 64GB: NVIDIA Jetson AGX Orin technical brief: 204.8 GB/s LPDDR5 (shared with the CPU), GPU
#            170 sparse INT8 TOPS = 85 dense INT8 TOPS; dense FP16 tensor is half of dense INT8: 42.5 TFLOPS
#            (85 is the dense INT8 figure, sometimes quoted as fp16); 64 GB shared.
TARGETS = {
    "RTX 4090": {"bandwidth_gbs": 1008.0, "tflops_fp16acc": 165.2, "tflops_fp32acc": 82.6, "memory_gb": 24.0},
    "RTX 4070": {"bandwidth_gbs": 504.0, "tflops_fp16acc": 58.4, "tflops_fp32acc": 29.2, "memory_gb": 12.0},
    "Jetson AGX Orin 64GB": {"bandwidth_gbs": 204.8, "tflops_fp16acc": 42.5, "tflops_fp32acc": 42.5,
                             "memory_gb": 64.0},
}
SPEC_SOURCE = ("published specs (vendor datasheets / whitepapers): RTX 4090 1008 GB/s, 165.2 TFLOP/s dense fp16 "
               "(82.6 with fp32 accumulate), 24 GB; RTX 4070 504 GB/s, 58.4 (29.2), 12 GB; Jetson AGX Orin 64GB "
               "204.8 GB/s, 42.5 TFLOP/s dense fp16 (= 85 dense INT8 TOPS / 2), 64 GB shared")


def _best(fn: Callable[[], object], sync: Callable[[], None], reps: int) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def measure(device: str, dry_run: bool = False) -> dict:
    """Memory bandwidth (GB/s) and matmul peak (TFLOP/s) measured on `device`, best of several runs."""
    if device != "cuda":
        return {"bandwidth_gbs": latency.cpu_bandwidth_gbs(), "matmul_tflops": latency.cpu_matmul_tflops(),
                "bandwidth_method": "numpy copy of 256 MB (read + write), best of 5",
                "matmul_method": "fp32 2048^3 torch.mm, best of 5 (the CPU runtime computes in fp32)"}
    sync = torch.cuda.synchronize
    n = 1 << 29  # 2 GiB of fp32
    a = torch.empty(n, dtype=torch.float32, device="cuda").fill_(1.0)
    b = torch.empty_like(a)
    t = _best(lambda: b.copy_(a), sync, 10)
    bw = 2 * a.numel() * a.element_size() / t / 1e9
    del a, b
    m = 8192
    x = torch.randn(m, m, dtype=torch.float16, device="cuda")
    y = torch.randn(m, m, dtype=torch.float16, device="cuda")
    t = _best(lambda: torch.mm(x, y), sync, 10)
    tf = 2 * m**3 / t / 1e12
    del x, y
    torch.cuda.empty_cache()
    return {"bandwidth_gbs": bw, "matmul_tflops": tf,
            "bandwidth_method": "device-to-device copy of 2 GiB (read + write), best of 10",
            "matmul_method": "fp16 8192^3 torch.mm (fp32 accumulate), best of 10"}


def floor(weight_bytes: float, flops: float, bandwidth_gbs: float, tflops: float) -> dict:
    mem = weight_bytes / (bandwidth_gbs * 1e9) * 1e3
    comp = flops / (tflops * 1e12) * 1e3
    return {"memory_floor_ms": mem, "compute_floor_ms": comp, "floor_ms": max(mem, comp),
            "bound": "memory" if mem >= comp else "compute"}


def project(stages: dict[str, dict], measured: dict) -> list[dict]:
    """Per target GPU: each stage's floor from its bytes and FLOPs, and the same floor scaled by the efficiency
    measured here (measured p50 / floor on this machine). stages: name -> {bytes, flops, p50_ms}."""
    rows = []
    for target, spec in TARGETS.items():
        for peak_key in ("tflops_fp16acc", "tflops_fp32acc"):
            if peak_key == "tflops_fp32acc" and spec["tflops_fp32acc"] == spec["tflops_fp16acc"]:
                continue
            row = {"target": target, "peak": peak_key, "bandwidth_gbs": spec["bandwidth_gbs"],
                   "tflops": spec[peak_key], "memory_gb": spec["memory_gb"], "stages": {}}
            for name, s in stages.items():
                f = floor(s["bytes"], s["flops"], spec["bandwidth_gbs"], spec[peak_key])
                here = floor(s["bytes"], s["flops"], measured["bandwidth_gbs"], measured["matmul_tflops"])
                eff = s["p50_ms"] / here["floor_ms"] if here["floor_ms"] > 0 and s.get("p50_ms") else None
                f["efficiency_scaled_ms"] = f["floor_ms"] * eff if eff else None
                row["stages"][name] = f
            rows.append(row)
    return rows
