"""LoRA as stored by peft in RespLLM checkpoints, and its full-precision merge (REFERENCE.md §2.4, §4).

Merging is W' = W + (alpha / r) · B @ A, done in float32 (float64 accumulate is not needed: peft's own merge
is the same formula and the goldens agree to 1e-6) before any quantization.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .checkpoint import strip_peft
from .errors import CheckpointError


@dataclass
class LoraPair:
    a: torch.Tensor  # (r, in) or (r, in, kh, kw)
    b: torch.Tensor  # (out, r) or (out, r, 1, 1)

    @property
    def r(self) -> int:
        return int(self.a.shape[0])


def split_lora(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, LoraPair]]:
    """Split a peft-wrapped (or plain) module state into plain base weights and LoRA pairs by module path."""
    base: dict[str, torch.Tensor] = {}
    a: dict[str, torch.Tensor] = {}
    b: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if ".lora_A." in k or ".lora_B." in k:
            mod = strip_peft(k.split(".lora_")[0])
            (a if ".lora_A." in k else b)[mod] = v
        elif ".lora_embedding_" in k or ".lora_magnitude" in k:
            raise CheckpointError(f"unsupported adapter tensor {k!r} (only LoRA on Linear/Conv layers)")
        else:
            base[strip_peft(k)] = v
    if a.keys() != b.keys():
        raise CheckpointError(f"LoRA A/B tensors do not pair up: {sorted(a.keys() ^ b.keys())[:4]}")
    pairs = {m: LoraPair(a[m], b[m]) for m in a}
    for m in pairs:
        if f"{m}.weight" not in base:
            raise CheckpointError(f"LoRA on {m!r} but its base weight {m}.weight is missing")
    return base, pairs


def delta(pair: LoraPair, scaling: float, shape: torch.Size) -> torch.Tensor:
    """scaling · B @ A reshaped to the base weight (Linear, or Conv2d with a 1x1 B as peft stores it)."""
    a = pair.a.float().reshape(pair.r, -1)
    b = pair.b.float().reshape(pair.b.shape[0], pair.r)
    return (scaling * (b @ a)).reshape(shape)


def merge(base: Mapping[str, torch.Tensor], pairs: Mapping[str, LoraPair], alpha: float) -> dict[str, torch.Tensor]:
    """Plain weights with every LoRA folded in (alpha / r scaling); untouched tensors are passed through."""
    out = dict(base)
    for m, p in pairs.items():
        w = base[f"{m}.weight"]
        out[f"{m}.weight"] = (w.float() + delta(p, alpha / p.r, w.shape)).to(w.dtype)
    return out
