"""Audio encoder + projector as one ONNX graph: spectrogram (B, 256, 64) → audio embeddings (B, 64, d_llm).

Exported with torch's TorchScript-based exporter (opset bundle.ONNX_OPSET, dynamic batch; ENVIRONMENT.md §5),
from the same `ClapAudioModel` the torch path runs. Variants: fp16 weights (onnxruntime's float16 converter, inputs/outputs
kept float32) and dynamic int8 (onnxruntime.quantization). optimum-onnx is not used: it pins transformers < 4.58.
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from respi_edge.runtime.bundle import ONNX_OPSET
from respi_edge.runtime.errors import DependencyError
from respi_edge.runtime.quiet import root_logger_quiet


class EncoderProjector(nn.Module):
    def __init__(self, encoder: nn.Module, aligner: nn.Linear):
        super().__init__()
        self.encoder, self.aligner = encoder, aligner

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_features=spec[:, None])
        return self.aligner(out.last_hidden_state.flatten(2).transpose(1, 2))


def export_fp32(encoder: nn.Module, aligner: nn.Linear, path: Path) -> None:
    if importlib.util.find_spec("onnx") is None:
        raise DependencyError("ONNX export needs onnx: pip install 'respi-edge[export]'") from None
    module = EncoderProjector(encoder, aligner.float()).eval()
    x = torch.rand(2, 256, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), input_names=["spec"], output_names=["audio_emb"],
                          dynamic_axes={"spec": {0: "batch"}, "audio_emb": {0: "batch"}}, opset_version=ONNX_OPSET,
                          dynamo=False)


def export_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def export_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with root_logger_quiet():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


def optimize(src: Path, dst: Path, level: str = "extended") -> None:
    """The graph ONNX Runtime would build at load time, optimised offline and saved (constant folding, GELU /
    LayerNorm / MatMul+Add fusions): a session then loads it without redoing the work. "extended" fusions are
    portable across CPUs; "all" adds layout transforms for this CPU only (onnxruntime warns not to ship them)."""
    from respi_edge.runtime.backends.onnx_audio import ort

    o = ort()
    so = o.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = {"basic": o.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": o.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "all": o.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    so.optimized_model_filepath = str(dst)
    o.InferenceSession(str(src), sess_options=so, providers=["CPUExecutionProvider"])


def optimize_variants(files: dict[str, Path], say=print) -> dict:
    """Each encoder variant file replaced in place by its offline-optimised graph (issue 15); the manifest's
    `tuning` entry that says so."""
    for variant, f in files.items():
        optimize(f, f.with_suffix(".opt.onnx"))
        f.with_suffix(".opt.onnx").replace(f)
        say(f"encoder {variant}: optimised offline")
    return {"encoder_optimized": "onnxruntime extended (offline)"}


def run_onnx(path: Path, spec: np.ndarray) -> np.ndarray:
    from respi_edge.runtime.backends.onnx_audio import OnnxAudio

    return OnnxAudio(path).embed(spec)
