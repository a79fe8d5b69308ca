"""Per-tensor bitsandbytes quantization of a merged LLM, so an export never holds more than one tensor.

Linear weights of the decoder layers become bitsandbytes 4-bit (NF4/FP4, optional double quantization, the
packed layout `Linear4bit` saves) or LLM.int8 (int8 rows + `SCB` scales); the token-embedding table becomes
4-bit or int8 too (it is ~21 % of SmolLM2-135M, so leaving it at 16 bits would keep a 4-bit LLM above 30 % of
the fp16 size). Norms stay float32: they are tiny and sensitive.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from respi_edge.runtime.backends.bnb_llm import quantize_int8
from respi_edge.runtime.errors import DependencyError


@dataclass(frozen=True)
class QuantScheme:
    bits: int  # 4, 8 or 16
    quant: str = "nf4"  # nf4 | fp4 | int8 | fp16 | bf16
    double_quant: bool = False
    blocksize: int = 64
    embeddings: bool = True  # quantize the embedding table as well

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def parse(bits: int, quant: str | None, double_quant: bool, embeddings: bool = True,
              dtype16: str = "fp16") -> "QuantScheme":
        if bits == 16:
            return QuantScheme(16, quant if quant in ("fp16", "bf16") else dtype16, False, 0, False)
        if bits == 8:
            if quant not in (None, "int8"):
                raise ValueError(f"--bits 8 takes --quant int8, not {quant}")
            return QuantScheme(8, "int8", False, 0, embeddings)
        if bits == 4:
            q = quant or "nf4"
            if q not in ("nf4", "fp4"):
                raise ValueError(f"--bits 4 takes --quant nf4 or fp4, not {q}")
            return QuantScheme(4, q, double_quant, 64, embeddings)
        raise ValueError(f"--bits must be 4, 8 or 16, not {bits}")


def _bnb():
    try:
        import bitsandbytes.functional as F
    except ImportError:
        raise DependencyError("4/8-bit export needs bitsandbytes: pip install 'respi-edge[quant]'") from None
    return F


def is_linear_weight(key: str) -> bool:
    return (key.startswith("layers.") or ".layers." in key) and key.endswith("_proj.weight")


def is_embedding(key: str) -> bool:
    return key.endswith("embed_tokens.weight")


def quantize_tensor(key: str, w: torch.Tensor, scheme: QuantScheme) -> dict[str, torch.Tensor]:
    """State-dict entries for one merged tensor under `scheme` (keys relative to the model root)."""
    if scheme.bits == 16:
        return {key: w.to(torch.float16 if scheme.quant == "fp16" else torch.bfloat16).contiguous()}
    quantize = is_linear_weight(key) or (scheme.embeddings and is_embedding(key))
    if not quantize:
        return {key: w.float().contiguous()}
    if scheme.bits == 8:
        cb, scb = quantize_int8(w)
        return {key: cb, key[: -len("weight")] + "SCB": scb}
    F = _bnb()
    nested = scheme.double_quant and is_linear_weight(key)
    q, qs = F.quantize_4bit(w.float().contiguous(), blocksize=scheme.blocksize, compress_statistics=nested,
                            quant_type=scheme.quant)
    out = {key: q.contiguous()}
    for k, v in qs.as_dict(packed=True).items():
        out[f"{key}.{k}"] = v.contiguous()
    return out
