"""Bundle backend 'onnx': the whole model in ONNX Runtime + numpy — no torch, no transformers.

Tokenizer: the `tokenizers` JSON the base LLM ships (the same ids transformers produces, checked in the tests);
embeddings: a numpy table gathered outside the graph; trunk: ONNX with explicit past key/values (prefix reuse);
head: numpy. Runs on Jetson-class boards where bitsandbytes does not.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import contract
from ..hparams import HParams
from ..errors import BundleError, DependencyError
from ..info import ModelInfo
from .onnx_audio import OnnxAudio, session


@dataclass
class OrtPrefix:
    length: int
    past: list[np.ndarray]  # present key/value of every layer for [prompt][DMS]
    embeds: np.ndarray


def load_tokenizer(path: Path):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise DependencyError("the ONNX backend needs the tokenizers package: pip install tokenizers") from None
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()
    return tok


class OrtBundleModel:
    numpy_backend = True

    def __init__(self, root: Path, man: dict, *, device: str = "auto", encoder_variant: str | None = None,
                 threads: int | None = None):
        from ..shards import np_safetensors

        self.root, self.manifest = root, man
        self.hparams = HParams(**man["hparams"])
        o = man["onnx_llm"]
        dev = device if device in ("cpu", "cuda") else "auto"  # auto: CUDA provider when onnxruntime-gpu has one
        self.trunk = session(root / o["trunk"], dev, threads)
        self.device_name = "cuda" if self.trunk.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.n_layers, self.kv_heads, self.head_dim = o["n_layers"], o["kv_heads"], o["head_dim"]
        self.embed_table = np_safetensors(root / o["embeddings"])["weight"]
        head = np_safetensors(root / man["head"])
        self.head_w, self.head_b = head["weight"].astype(np.float32), head["bias"].astype(np.float32)
        self.tokenizer = load_tokenizer(root / o["tokenizer"])
        self.add_special = bool(o.get("add_special_tokens", True))
        variant = encoder_variant or man["encoder"]["default"]
        files = man["encoder"]["variants"]
        if variant not in files:
            raise BundleError(f"encoder variant {variant!r} not in this bundle ({', '.join(files)})")
        self.audio = OnnxAudio(root / files[variant], dev, threads)
        q = man["quantization"]
        caveats = list(man.get("caveats", []))
        caveats.append(f"ONNX bundle: LLM {q['bits']}-bit {q['quant']}; encoder ONNX {variant}")
        self.info = ModelInfo(name=man.get("name", root.name), untrained=bool(man.get("untrained")),
                              caveats=caveats, threshold=float(man.get("threshold", 0.5)), task=man.get("task"),
                              source=str(root))
        self.llm = self  # bench reads model.llm; the trunk is opaque here

    # -- text -----------------------------------------------------------------------------------
    def tokenize(self, text: str) -> np.ndarray:
        ids = self.tokenizer.encode(text, add_special_tokens=self.add_special).ids[:contract.TOKENIZER_MAX_LENGTH]
        return np.asarray([ids], dtype=np.int64).reshape(1, -1)

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        return self.embed_table[np.asarray(ids)].astype(np.float32)

    # -- audio ----------------------------------------------------------------------------------
    def embed_audio(self, spec) -> np.ndarray:
        from ..bundle import spec_array

        return self.audio.embed(spec_array(spec))

    # -- trunk + head ---------------------------------------------------------------------------
    def _run(self, x: np.ndarray, past: list[np.ndarray] | None) -> list[np.ndarray]:
        b = x.shape[0]
        if past is None:
            past = [np.zeros((b, self.kv_heads, 0, self.head_dim), np.float32)] * (2 * self.n_layers)
        feed = {"inputs_embeds": x.astype(np.float32)}
        for i in range(self.n_layers):
            feed[f"past_key_{i}"], feed[f"past_value_{i}"] = past[2 * i], past[2 * i + 1]
        return self.trunk.run(None, feed)

    def _head(self, hidden: np.ndarray) -> np.ndarray:
        hp = self.hparams
        h = np.asarray(hidden)[:, -hp.patch_nums:, :hp.d_ff].transpose(0, 2, 1).reshape(hidden.shape[0], -1)
        return h.astype(np.float32) @ self.head_w.T + self.head_b

    def prefix(self, prompt_ids: np.ndarray, dms_ids: np.ndarray) -> OrtPrefix:
        emb = np.concatenate([self.embed_tokens(prompt_ids), self.embed_tokens(dms_ids)], axis=1)
        if emb.shape[1] == 0:
            return OrtPrefix(0, None, emb)
        return OrtPrefix(emb.shape[1], self._run(emb, None)[1:], emb)

    def score(self, prefix: OrtPrefix, audio_emb: np.ndarray) -> np.ndarray:
        return self._head(self._run(np.asarray(audio_emb, np.float32), prefix.past)[0])

    def forward(self, spec, prompt_ids: np.ndarray, dms_ids: np.ndarray) -> np.ndarray:
        audio = self.embed_audio(spec)
        text = np.concatenate([self.embed_tokens(prompt_ids), self.embed_tokens(dms_ids)], axis=1)
        x = np.concatenate([np.repeat(text, audio.shape[0], axis=0), audio], axis=1)
        return self._head(self._run(x, None)[0])

    def logits(self, spec, prompt: str, dms: str) -> np.ndarray:
        return self.forward(spec, self.tokenize(prompt), self.tokenize(dms))
