"""The encoder + projector ONNX graph in ONNX Runtime (CUDA provider when present, else CPU)."""
from __future__ import annotations

import os

import numpy as np

from ..errors import DependencyError


def ort():
    try:
        import onnxruntime
    except ImportError:
        raise DependencyError("ONNX Runtime is missing: pip install 'respi-edge[cpu]' (or '[gpu]' for CUDA; "
                              "onnxruntime and onnxruntime-gpu cannot be installed together)") from None
    return onnxruntime


def providers(device: str = "auto") -> list[str]:
    avail = ort().get_available_providers()
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in avail:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise DependencyError("CUDA was asked for but onnxruntime has no CUDA provider: pip install "
                              "'respi-edge[gpu]' (replacing onnxruntime by onnxruntime-gpu)")
    return ["CPUExecutionProvider"]


def session(path: str | os.PathLike, device: str = "auto", threads: int | None = None, *, spin: bool = True):
    """spin=False: the session's worker threads sleep as soon as a run ends instead of spinning. The encoder
    runs once per window right before the LLM step; its spinning threads took CPU from that step, adding
    ~70 ms per window on 2 cores (bench/results/ort_spinning.md)."""
    o = ort()
    so = o.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return o.InferenceSession(str(path), sess_options=so, providers=providers(device))


def as_float32(x) -> np.ndarray:
    """A spectrogram from either kind of caller (torch tensor or numpy array) as float32 numpy."""
    a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return a.astype(np.float32, copy=False)


class OnnxAudio:
    """spec (B, 256, 64) float32 → audio embeddings (B, 64, d_llm) float32."""

    def __init__(self, path: str | os.PathLike, device: str = "auto", threads: int | None = None):
        self.session = session(path, device, threads, spin=False)
        self.input = self.session.get_inputs()[0].name

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def embed(self, spec) -> np.ndarray:
        spec = as_float32(spec)
        if spec.ndim == 2:
            spec = spec[None]
        return self.session.run(None, {self.input: spec})[0].astype(np.float32, copy=False)
