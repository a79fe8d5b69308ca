"""Bundle backend 'torch-bnb': ONNX Runtime for the encoder + projector, transformers (+ bitsandbytes for 4/8-bit)
for the LLM trunk, torch for the head. Same interface as RespLLM, so Session/predict/screen/verify run on it."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import HParams
from ..errors import BundleError
from ..llm import BaseLLM, load_tokenizer
from ..model import FlattenHead, ModelInfo, RespLLM
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


class TorchBundleModel(RespLLM):
    def __init__(self, root: Path, man: dict, *, device: str = "auto", encoder_variant: str | None = None,
                 threads: int | None = None):
        from safetensors.torch import load_file

        self.device_name = pick_device(device)
        hp = HParams(**man["hparams"])
        llm = load_llm(root / man["llm"]["dir"], man["quantization"], self.device_name)
        head = FlattenHead(hp.d_ff * hp.patch_nums, hp.n_cls)
        head.linear.load_state_dict(load_file(str(root / man["head"])))
        caveats = list(man.get("caveats", []))
        q = man["quantization"]
        caveats.append(f"quantized bundle: LLM {q['bits']}-bit {q['quant']}"
                       + (" (double quant)" if q.get("double_quant") else "") + "; encoder ONNX "
                       + (encoder_variant or man["encoder"]["default"]))
        info = ModelInfo(name=man.get("name", root.name), untrained=bool(man.get("untrained")), caveats=caveats,
                         threshold=float(man.get("threshold", 0.5)), task=man.get("task"), source=str(root))
        tokenizer = load_tokenizer(BaseLLM(root.name, str(root / man["llm"]["dir"])))
        super().__init__(nn.Identity(), nn.Identity(), llm, head.to(self.device_name), tokenizer, hp, info)
        variant = encoder_variant or man["encoder"]["default"]
        files = man["encoder"]["variants"]
        if variant not in files:
            raise BundleError(f"encoder variant {variant!r} not in this bundle ({', '.join(files)})")
        self.audio = OnnxAudio(root / files[variant], "cuda" if self.device_name == "cuda" else "cpu", threads)
        self.manifest = man
        self.root = root
        self._dtype = next(p.dtype for p in llm.parameters() if p.is_floating_point())

    @property
    def quantization(self) -> dict:
        return self.manifest["quantization"]

    @torch.inference_mode()
    def embed_audio(self, spec) -> torch.Tensor:
        from ..bundle import spec_array

        return torch.from_numpy(self.audio.embed(spec_array(spec))).to(self.device_name, self._dtype)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(ids.to(self.device_name))

    def describe(self) -> str:
        return json.dumps({"backend": "torch-bnb", "device": self.device_name, "encoder": self.audio.provider})
