"""Load a bundle's quantized LLM (the layout export/quantize.py writes) into transformers + bitsandbytes modules.

The model is built empty (meta) from its config; each decoder Linear becomes a `Linear4bit` / `Linear8bitLt`
holding the stored packed weights, the embedding an `Embedding4bit` / int8 lookup, and norms are assigned as
stored. bitsandbytes' AVX512-BF16 CPU kernel needs out_features % 32 == 0 and in_features % blocksize == 0
(ENVIRONMENT.md §3): layers that miss either fall back to the generic path instead of crashing.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..errors import BundleError, DependencyError


def _bnb():
    try:
        import bitsandbytes as bnb
        from bitsandbytes.nn import Embedding4bit, Int8Params, Linear4bit, Linear8bitLt, Params4bit
    except ImportError:
        raise DependencyError("this bundle's LLM is 4/8-bit: install bitsandbytes (pip install 'respi-edge[quant]'), "
                              "or export a 16-bit or ONNX bundle") from None
    return bnb, Embedding4bit, Int8Params, Linear4bit, Linear8bitLt, Params4bit


class Int8Embedding(nn.Module):
    """Row-wise int8 embedding table (LLM.int8 vector-wise scales), dequantized per looked-up row."""

    def __init__(self, cb: torch.Tensor, scb: torch.Tensor, dtype: torch.dtype):
        super().__init__()
        self.register_buffer("weight", cb)
        self.register_buffer("SCB", scb)
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = nn.functional.embedding(ids, self.weight).to(torch.float32)
        scale = nn.functional.embedding(ids, self.SCB.view(-1, 1)).to(torch.float32) / 127.0
        return (rows * scale).to(self.dtype)


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LLM.int8's row-wise quantization of a weight: (int8 rows, SCB scales), the bytes an 8-bit bundle stores.

    The exporter writes these and the drift meter builds its 8-bit layers from them: one function, bit-exact."""
    bnb, *_ = _bnb()
    cb, scb, _ = bnb.functional.int8_vectorwise_quant(w.to(torch.float16).contiguous())
    return cb.contiguous(), scb.contiguous()


def int8_linear(cb: torch.Tensor, scb: torch.Tensor) -> nn.Module:
    """A bundle's 8-bit layer: LLM.int8 without outlier columns (threshold 0), so activations are int8 too."""
    _, _, Int8Params, _, Linear8bitLt, _ = _bnb()
    out_features, in_features = cb.shape
    q = Linear8bitLt(in_features, out_features, bias=False, has_fp16_weights=False, threshold=0.0, device="meta")
    q.weight = Int8Params(cb, requires_grad=False, has_fp16_weights=False, CB=cb, SCB=scb)
    return q.eval()  # in eval mode bitsandbytes' CPU path quantizes the activations too: what a bundle computes


def set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def avoid_avx512bf16_trap(model: nn.Module) -> int:
    """Route layers with shapes the packed AVX512-BF16 kernel cannot take to the generic path; returns count."""
    _, _, _, Linear4bit, _, _ = _bnb()
    n = 0
    for m in model.modules():
        if isinstance(m, Linear4bit) and getattr(m, "support_avx512bf16_for_cpu", False):
            bs = m.weight.quant_state.blocksize if m.weight.quant_state is not None else 64
            if m.out_features % 32 or m.in_features % bs:
                m.support_avx512bf16_for_cpu = False
                n += 1
    return n


def load_quantized_llm(config, state: Mapping[str, torch.Tensor], scheme: dict,
                       compute_dtype: torch.dtype = torch.float32) -> nn.Module:
    from accelerate import init_empty_weights
    from transformers import AutoModel

    bnb, Embedding4bit, _, Linear4bit, _, Params4bit = _bnb()
    with init_empty_weights(include_buffers=False):
        model = AutoModel.from_config(config, dtype=compute_dtype)
    used: set[str] = set()
    for name, mod in list(model.named_modules()):
        key = f"{name}.weight"
        # per tensor: int8 + SCB = LLM.int8, packed uint8 + quant state = 4-bit, float = kept (mixed precision)
        bits = 8 if f"{name}.SCB" in state else 4
        if isinstance(mod, nn.Linear) and key in state and not state[key].is_floating_point():
            w = state[key]
            if mod.bias is not None:
                raise BundleError(f"{name}: biased linear layers are not supported in quantized bundles")
            if bits == 4:
                stats = {k[len(key) + 1:]: v for k, v in state.items() if k.startswith(key + ".")}
                q = Linear4bit(mod.in_features, mod.out_features, bias=False, compute_dtype=compute_dtype,
                               quant_type=scheme["quant"], device="meta")
                q.weight = Params4bit.from_prequantized(w, dict(stats), device="cpu", module=q)
                used |= {key, *(f"{key}.{k}" for k in stats)}
            else:
                q = int8_linear(w, state[f"{name}.SCB"])
                used |= {key, f"{name}.SCB"}
            set_module(model, name, q)
        elif isinstance(mod, nn.Embedding) and key in state and state[key].dtype in (torch.uint8, torch.int8):
            w = state[key]
            if bits == 4:
                stats = {k[len(key) + 1:]: v for k, v in state.items() if k.startswith(key + ".")}
                e = Embedding4bit(mod.num_embeddings, mod.embedding_dim, quant_type=scheme["quant"], device="meta")
                e.weight = Params4bit.from_prequantized(w, dict(stats), device="cpu", module=e)
                e.dtype = compute_dtype
                used |= {key, *(f"{key}.{k}" for k in stats)}
            else:
                e = Int8Embedding(w, state[f"{name}.SCB"], compute_dtype)
                used |= {key, f"{name}.SCB"}
            set_module(model, name, e)
    rest = {k: v.to(compute_dtype) for k, v in state.items() if k not in used}
    expected = {k for k, p in model.named_parameters() if p.device.type == "meta"}
    if expected - rest.keys() or rest.keys() - expected:
        raise BundleError(f"the bundle's LLM weights do not match its config (missing "
                          f"{sorted(expected - rest.keys())[:3]}, unexpected {sorted(rest.keys() - expected)[:3]})")
    model.load_state_dict(rest, strict=False, assign=True)
    avoid_avx512bf16_trap(model)
    return model.eval()
