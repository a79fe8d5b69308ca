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
from respi_edge.runtime.kv_cache import output_cache, with_cache
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
        out = self.llm(inputs_embeds=inputs_embeds, position_ids=pos, use_cache=True, **with_cache(cache))
        presents = []
        for layer in output_cache(out).layers:
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


def quantize_trunk(src: Path, dst: Path, bits: int, block_size: int = 32, accuracy_level: int | None = None) -> None:
    """4/8-bit MatMulNBits (onnxruntime's own quantizer), or fp16 weights for bits=16.

    accuracy_level: the MatMulNBits compute type (None/0: unset, fp32 activations; 4: int8 activations and int8
    compute, onnxruntime's fastest CPU kernels, AVX2 included). It changes no stored weight, only how activations
    are rounded, so its drift is measured by `verify` like any other variant."""
    import onnx

    if bits == 16:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
        return
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    with root_logger_quiet():
        q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=bits, block_size=block_size, is_symmetric=True,
                                 accuracy_level=accuracy_level)
        q.process()
        big = q.model.model.ByteSize() > 2 * 1024**3 - (64 << 20)
        q.model.save_model_to_file(str(dst), use_external_data_format=big)


ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # MatMulNBits: unset, fp32, fp16, bf16, int8 activations/compute


def set_accuracy_level(src: Path, dst: Path, level: int) -> int:
    """A copy of a MatMulNBits graph with every node's `accuracy_level` set (weights untouched); returns how many
    nodes changed. Lets an existing 4/8-bit bundle be re-tuned without re-quantizing."""
    import onnx
    from onnx import helper

    if level not in ACCURACY_LEVELS:
        raise ValueError(f"accuracy level {level}: one of {ACCURACY_LEVELS}")
    m = onnx.load(str(src), load_external_data=False)
    n = 0
    for node in m.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        for a in [a for a in node.attribute if a.name == "accuracy_level"]:
            node.attribute.remove(a)
        node.attribute.append(helper.make_attribute("accuracy_level", level))
        n += 1
    onnx.save(m, str(dst))
    return n


def accuracy_level_of(path: Path) -> int | None:
    """The accuracy level a trunk graph's MatMulNBits nodes run at (None: no such node; 0 when unset)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    levels = {next((a.i for a in n.attribute if a.name == "accuracy_level"), 0) for n in m.graph.node
              if n.op_type == "MatMulNBits"}
    return max(levels) if levels else None


def retune_bundle(src: Path, dst: Path, *, accuracy_level: int | None = 4, optimize_encoder: bool = True,
                  encoder_default: str | None = None, say=print) -> dict:
    """A new ONNX bundle from an exported one, for the faster CPU graph (issue 15): the trunk's MatMulNBits at
    `accuracy_level` and each encoder variant replaced by its offline-optimised graph (onnx_encoder.optimize).
    Same weights, same tokenizer and head; the manifest names what changed, and the bundle is re-hashed and sealed
    by `bundle.write_manifest`. `dst` must not exist (an export never overwrites)."""
    import shutil

    from respi_edge.runtime.bundle import open_bundle, read_manifest, write_manifest
    from respi_edge.runtime.errors import BundleError

    from .onnx_encoder import optimize_variants

    src, dst = Path(src), Path(dst)
    man = read_manifest(src)
    if man.get("backend") != "onnx":
        raise BundleError(f"{src}: a {man.get('backend')} bundle; retuning applies to ONNX bundles "
                          f"(export --backend onnx)")
    if dst.exists():
        raise BundleError(f"{dst} exists: give a new folder")
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    b = open_bundle(tmp, verify_hashes=False, manifest=man)
    tuned: dict = {}
    if accuracy_level is not None and man["quantization"]["bits"] in (4, 8):
        trunk = b.file(man["onnx_llm"]["trunk"])
        n = set_accuracy_level(trunk, trunk.with_suffix(".tmp.onnx"), accuracy_level)
        trunk.with_suffix(".tmp.onnx").replace(trunk)
        tuned["matmulnbits_accuracy_level"] = accuracy_level
        say(f"trunk: {n} MatMulNBits nodes at accuracy level {accuracy_level}")
    if optimize_encoder:
        tuned.update(optimize_variants({v: b.file(rel) for v, rel in man["encoder"]["variants"].items()}, say))
    if encoder_default is not None:
        if encoder_default not in man["encoder"]["variants"]:
            raise BundleError(f"encoder variant {encoder_default!r} not in {src}")
        man["encoder"]["default"] = encoder_default
    man["tuning"] = {**man.get("tuning", {}), **tuned, "from": man.get("name", src.name)}
    man = write_manifest(tmp, man)
    tmp.rename(dst)
    return man
