"""The LLM trunk as ONNX with explicit past key/value inputs and outputs, for the torch-free backend.

Graph: inputs_embeds (B, S, d) + past_key_i / past_value_i (B, kv_heads, P, head_dim) for every layer →
hidden (B, S, d_ff) (the slice the head reads) + present_key_i / present_value_i (B, kv_heads, P + S, head_dim).
Positions continue from P, attention is causal over past + new tokens with no mask (the reference's), so
running [prompt][DMS] once with P = 0 and then the 64 audio embeddings on its presents equals the full forward.
Weights are then quantized by onnxruntime's own tooling: 4-bit or 8-bit blockwise `MatMulNBits`.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from respi_edge.runtime.bundle import ONNX_OPSET
from respi_edge.runtime.quiet import root_logger_quiet


class TrunkWithPast(nn.Module):
    def __init__(self, llm: nn.Module, d_ff: int):
        super().__init__()
        self.llm, self.d_ff = llm, d_ff
        self.n_layers = llm.config.num_hidden_layers

    def forward(self, inputs_embeds: torch.Tensor, *past: torch.Tensor):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.llm.config)
        for i in range(self.n_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        p = past[0].shape[2]
        s = inputs_embeds.shape[1]
        pos = torch.arange(s, dtype=torch.long).unsqueeze(0) + p
        out = self.llm(inputs_embeds=inputs_embeds, cache=cache, position_ids=pos, use_cache=True)
        presents = []
        for layer in out.cache.layers:
            presents += [layer.keys, layer.values]
        return (out.last_hidden_state[:, :, : self.d_ff], *presents)


def io_names(n_layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_{kind}_{i}" for i in range(n_layers) for kind in ("key", "value")]
    present = [f"present_{kind}_{i}" for i in range(n_layers) for kind in ("key", "value")]
    return ["inputs_embeds", *past], ["hidden", *present]


def export_trunk(llm: nn.Module, d_ff: int, path: Path) -> None:
    """fp32 graph with dynamic batch, sequence and past lengths (external data when over 2 GB)."""
    cfg = llm.config
    module = TrunkWithPast(llm.float().eval(), d_ff)
    kv = cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    past = [torch.zeros(1, kv, 3, hd) for _ in range(2 * cfg.num_hidden_layers)]
    x = torch.randn(1, 5, cfg.hidden_size)
    inputs, outputs = io_names(cfg.num_hidden_layers)
    axes = {"inputs_embeds": {0: "batch", 1: "seq"}, "hidden": {0: "batch", 1: "seq"}}
    for n in inputs[1:]:
        axes[n] = {0: "batch", 2: "past"}
    for n in outputs[1:]:
        axes[n] = {0: "batch", 2: "total"}
    big = sum(p.numel() for p in llm.parameters()) * 4 > 2 * 1024**3 - (64 << 20)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x, *past), str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False)
    if big:
        import onnx

        m = onnx.load(str(path))
        onnx.save(m, str(path), save_as_external_data=True, location=path.name + ".data")


def quantize_trunk(src: Path, dst: Path, bits: int, block_size: int = 32) -> None:
    """4/8-bit MatMulNBits (onnxruntime's own quantizer), or fp16 weights for bits=16."""
    import onnx

    if bits == 16:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
        return
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    with root_logger_quiet():
        q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=bits, block_size=block_size, is_symmetric=True)
        q.process()
        big = q.model.model.ByteSize() > 2 * 1024**3 - (64 << 20)
        q.model.save_model_to_file(str(dst), use_external_data_format=big)
