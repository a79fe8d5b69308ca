"""Bundle backend 'torch-bnb': ONNX Runtime for the encoder + projector, transformers (+ bitsandbytes for 4/8-bit)
for the LLM trunk, torch for the head. The text, prefix and head code is RespLLM's own (`model.PrefixScorer`), so
Session/predict/screen/verify run on it unchanged."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from ..errors import BundleError
from ..hparams import HParams
from ..info import ModelInfo
from ..llm import BaseLLM, load_tokenizer
from ..model import FlattenHead, PrefixScorer
from .onnx_audio import OnnxAudio


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BundleError("--device cuda: no CUDA GPU is visible to torch")
    return device


def load_llm(llm_dir: Path, quant: dict, device: str = "cpu") -> nn.Module:
    from transformers import AutoConfig

    from ..shards import read_sharded

    config = AutoConfig.from_pretrained(llm_dir)
    state = read_sharded(llm_dir)
    if quant["bits"] == 16:
        from accelerate import init_empty_weights
        from transformers import AutoModel

        dtype = torch.float32 if device == "cpu" else (torch.float16 if quant["quant"] == "fp16" else torch.bfloat16)
        with init_empty_weights(include_buffers=False):
            llm = AutoModel.from_config(config, dtype=dtype)
        llm.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
        return llm.to(device).eval()
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    from .bnb_llm import load_quantized_llm

    llm = load_quantized_llm(config, state, quant, compute_dtype=torch.float32 if device == "cpu" else torch.float16)
    return llm.to(device) if device != "cpu" else llm


class TorchBundleModel(PrefixScorer):
    """A `Backend` over a torch-bnb bundle's files (paths given by runtime/bundle.py)."""

    def __init__(self, llm_dir: Path, quantization: dict, head: Path, encoder: Path, hparams: HParams,
                 info: ModelInfo, *, device: str = "auto", threads: int | None = None):
        from safetensors.torch import load_file

        self.device = pick_device(device)
        self.hparams, self.info, self.quantization = hparams, info, quantization
        self.llm = load_llm(llm_dir, quantization, self.device)
        self.head = FlattenHead(hparams.d_ff * hparams.patch_nums, hparams.n_cls)
        self.head.linear.load_state_dict(load_file(str(head)))
        self.head.to(self.device).eval()
        self.tokenizer = load_tokenizer(BaseLLM(llm_dir.name, str(llm_dir)))
        self.audio = OnnxAudio(encoder, "cuda" if self.device == "cuda" else "cpu", threads)
        self._dtype = next(p.dtype for p in self.llm.parameters() if p.is_floating_point())

    @torch.inference_mode()
    def embed_audio(self, spec) -> torch.Tensor:
        return torch.from_numpy(self.audio.embed(spec)).to(self.device, self._dtype)

    def describe(self) -> str:
        return json.dumps({"backend": "torch-bnb", "device": self.device, "encoder": self.audio.provider})
