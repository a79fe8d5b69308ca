"""RespLLM's real LLM shape (Llama-3-8B, as in OpenBioLLM-8B) with deterministic random weights, made on the
machine that runs it (an 8B model is too big to carry), at 16 bits (fp16 / bf16) or bitsandbytes 8 / 4 bits.

Every tensor is seeded from its name (sha256 -> torch generator on the device), so a run is repeatable on one
machine whatever order tensors are built in. The 4/8-bit path follows bench/latency.build_synthetic (quantize one
tensor at a time with the exporter's `quantize_tensor`, then the bundle loader's `load_quantized_llm`); the 16-bit
path differs from it on purpose: it builds the model on the device (latency.build_synthetic initialises 16 GB of
fp16 on the CPU first) and offers bf16.
"""
from __future__ import annotations

import hashlib

import torch

from respi_edge.bench import latency

LLAMA3_8B = latency.SYNTHETIC["llama3-8b"]
# dry run: a tiny Llama with the same structure (GQA, SwiGLU); sizes multiples of 64 for bitsandbytes' kernels
DRY_RUN_SHAPE = (256, 512, 2, 4, 2, 4096, "llama")


def _seed(key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"respi-edge/gpu-synthetic|{key}".encode()).digest()[:8], "little") >> 1


def make_tensor(key: str, shape, dtype: torch.dtype, device: str) -> torch.Tensor:
    """Norm weights 1, everything else N(0, 0.02): activations stay finite through 32 layers."""
    if key.endswith("norm.weight"):
        return torch.ones(shape, dtype=dtype, device=device)
    g = torch.Generator(device=device)
    g.manual_seed(_seed(key))
    return torch.randn(shape, generator=g, dtype=dtype, device=device) * 0.02


def config(shape):
    from transformers import AutoConfig

    hidden, inter, layers, heads, kv, vocab, family = shape
    return AutoConfig.for_model(family, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                                num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                                max_position_embeddings=4096)


def build(shape, variant: str, device: str) -> torch.nn.Module:
    """variant: fp16 | bf16 | int8 | nf4. On a CPU, 16-bit variants compute in fp32 and 4/8-bit in fp32 (the
    runtime's CPU path); on CUDA, 4/8-bit compute in fp16 as the bundle loader does."""
    from transformers import AutoModel

    cfg = config(shape)
    if variant in ("fp16", "bf16"):
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[variant] if device == "cuda" else torch.float32
        with torch.device(device):
            llm = AutoModel.from_config(cfg, dtype=dtype)
        llm = llm.to(device)
        with torch.no_grad():
            for k, p in llm.named_parameters():
                p.copy_(make_tensor(k, p.shape, dtype, device))
        return llm.eval()
    from respi_edge.export.quantize import QuantScheme, quantize_tensor
    from respi_edge.runtime.backends.bnb_llm import load_quantized_llm

    compute = torch.float16 if device == "cuda" else torch.float32
    scheme = QuantScheme.parse(8 if variant == "int8" else 4, None if variant == "int8" else variant, False,
                               embeddings=False)
    with torch.device("meta"):
        shapes = AutoModel.from_config(cfg).state_dict()
    state = {}
    for k, v in shapes.items():  # one tensor at a time: the 8B model never exists in 16 bits
        w = make_tensor(k, v.shape, compute, device)
        state.update({kk: vv.to("cpu") for kk, vv in quantize_tensor(k, w, scheme).items()})
        del w
    llm = load_quantized_llm(cfg, state, scheme.to_dict(), compute_dtype=compute)
    return (llm.to(device) if device == "cuda" else llm).eval()


def variant_bits(variant: str) -> int:
    return {"fp16": 16, "bf16": 16, "int8": 8, "nf4": 4}[variant]
