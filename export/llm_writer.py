"""Merge LoRA in full precision and write the LLM shard by shard: peak memory ≈ one shard, whatever the model.

Tensors are read from the (mmapped) checkpoint one at a time, the LoRA delta is folded in float32, the result is
quantized (export/quantize.py) and appended to the current shard; a full shard is written and dropped. The
folder is Hugging Face's sharded layout (`model-0000i-of-0000N.safetensors` + index).
"""
from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from respi_edge.runtime.checkpoint import release_pages
from respi_edge.runtime.lora import LoraPair, delta, split_lora

from .quantize import QuantScheme, quantize_tensor

SHARD_BYTES = 512 << 20


def merged_tensors(llm_state: Mapping[str, torch.Tensor], alpha: float,
                   mmapped: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, merged float32 tensor) one at a time; W' = W + (alpha/r)·B@A for LoRA-wrapped modules.

    With `mmapped`, each source tensor's pages are released once it has been consumed."""
    base, pairs = split_lora(llm_state)
    by_weight: dict[str, LoraPair] = {f"{m}.weight": p for m, p in pairs.items()}
    for k, w in base.items():
        p = by_weight.get(k)
        yield k, (w if p is None else w.float() + delta(p, alpha / p.r, w.shape))
        if mmapped:
            release_pages(w)


def layer_scheme(key: str, scheme: QuantScheme, plan: dict[int, int] | None) -> QuantScheme:
    """The scheme of one tensor under a per-layer precision plan (calibration/sensitivity.py)."""
    if not plan:
        return scheme
    from respi_edge.calibration.sensitivity import plan_key

    k = plan_key(key)
    bits = plan.get(k, scheme.bits) if k is not None else scheme.bits
    if bits == scheme.bits:
        return scheme
    if bits == 8:
        return QuantScheme(8, "int8", False, 0, scheme.embeddings)
    return QuantScheme(16, "fp16", False, 0, False)


def write_llm(tensors: Iterator[tuple[str, torch.Tensor]], out: Path, scheme: QuantScheme,
              shard_bytes: int = SHARD_BYTES, progress: Callable[[str], None] | None = None,
              plan: dict[int, int] | None = None) -> dict:
    """Write quantized shards + index into `out`; returns {"files": [...], "bytes": n, "tensors": n}."""
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = []
    current: dict[str, torch.Tensor] = {}
    size, total, count = 0, 0, 0
    names: list[str] = []
    weight_map: dict[str, int] = {}

    def flush():
        nonlocal current, size
        if not current:
            return
        idx = len(names)
        name = f"model-{idx + 1:05d}.safetensors"
        save_file(current, str(out / name), metadata={"format": "pt"})
        for k in current:
            weight_map[k] = idx
        names.append(name)
        current, size = {}, 0
        gc.collect()

    for key, w in tensors:
        for k, v in quantize_tensor(key, w, layer_scheme(key, scheme, plan)).items():
            n = v.numel() * v.element_size()
            if size and size + n > shard_bytes:
                flush()
            current[k] = v
            size += n
            total += n
            count += 1
        del w
        if progress:
            progress(key)
    flush()
    final = []
    for i, name in enumerate(names):  # HF naming: model-0000i-of-0000N
        new = f"model-{i + 1:05d}-of-{len(names):05d}.safetensors"
        os.replace(out / name, out / new)
        final.append(new)
    index = {"metadata": {"total_size": total},
             "weight_map": {k: final[i] for k, i in sorted(weight_map.items())}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    del shards
    return {"files": final, "bytes": total, "tensors": count}

