"""Training precision chosen by the CPU: bf16 autocast only where it is native and measured faster.

On CPUs without bf16 matrix units (AVX2-only, e.g. the AMD EPYC development machines) bf16 autocast is emulated
and a 576→1536 Linear forward + backward was measured ~15× slower than fp32, so `auto` times one real training
batch both ways, records both, and picks bf16 only where the CPU advertises it and it was faster.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def time_step(step: Callable[[bool], None], bf16: bool, repeat: int = 2) -> float:
    """Seconds of one training step (forward + backward), best of `repeat` after a warm-up call."""
    step(bf16)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        step(bf16)
        best = min(best, time.perf_counter() - t)
    return best


def choose(setting: str, step: Callable[[bool], None] | None = None) -> dict:
    """{'precision': 'fp32'|'bf16', 'why': ..., timings}: `setting` is auto, fp32 or bf16."""
    flags = cpu_flags()
    native = sorted(f for f in BF16_FLAGS if f in flags)
    out: dict = {"setting": setting, "cpu_bf16_flags": native}
    if setting in ("fp32", "bf16"):
        return {**out, "precision": setting, "why": "set by the recipe"}
    if setting != "auto":
        raise ValueError(f"precision must be auto, fp32 or bf16, not {setting!r}")
    if step is None:
        return {**out, "precision": "bf16" if native else "fp32", "why": "CPU flags (not timed)"}
    t32, t16 = time_step(step, False), time_step(step, True, repeat=1)
    out.update(seconds_per_batch_fp32=t32, seconds_per_batch_bf16=t16)
    timed = f"timed one batch: fp32 {t32:.3f} s, bf16 {t16:.3f} s"
    if not native:
        return {**out, "precision": "fp32", "why": f"no native bf16 on this CPU (no avx512_bf16/amx_bf16); {timed}"}
    return {**out, "precision": "bf16" if t16 < t32 else "fp32", "why": timed}
