"""Bundle backend 'onnx': the whole model in ONNX Runtime + numpy — no torch, no transformers.

Tokenizer: the `tokenizers` JSON the base LLM ships (the same ids transformers produces, checked in the tests);
embeddings: a numpy table gathered outside the graph; trunk: ONNX with explicit past key/values (prefix reuse);
head: numpy. Runs on Jetson-class boards where bitsandbytes does not.

The prefix keys/values stay bound to the trunk between windows: ONNX Runtime values made once per prefix (and per
batch size, tiled over the batch) and bound with IOBinding, and only the hidden states are fetched, so a window
copies neither the past in nor the 2·n_layers presents out (`bind_past = False` is the issue-14 path, kept for
`bench latency`'s side-by-side rows).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import contract
from ..errors import DependencyError
from ..hparams import HParams
from ..info import ModelInfo
from ..shards import np_safetensors
from .onnx_audio import OnnxAudio, ort, session


@dataclass(frozen=True)
class OrtLayout:
    """The trunk graph's key/value inputs (export/onnx_llm.py) and how its tokenizer is called."""

    n_layers: int
    kv_heads: int
    head_dim: int
    add_special_tokens: bool = True


@dataclass
class OrtPrefix:
    length: int
    past: list[np.ndarray] | None  # present key/value of every layer for [prompt][DMS]
    embeds: np.ndarray
    bound: dict = field(default_factory=dict, repr=False)  # batch size -> past as OrtValues, tiled over the batch

    def tiled(self, b: int) -> list[np.ndarray]:
        """The past repeated over a batch of `b` windows (contiguous, as ONNX Runtime reads it)."""
        return self.past if b == 1 else [np.ascontiguousarray(np.repeat(p, b, axis=0)) for p in self.past]


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
    """A `Backend` over an ONNX bundle's files (paths given by runtime/bundle.py)."""

    def __init__(self, trunk: Path, embeddings: Path, tokenizer: Path, layout: OrtLayout, head: Path, encoder: Path,
                 hparams: HParams, info: ModelInfo, *, quantization: dict | None = None, device: str = "auto",
                 threads: int | None = None):
        self.hparams, self.info, self.layout = hparams, info, layout
        self.quantization = quantization or {}
        dev = device if device in ("cpu", "cuda") else "auto"  # auto: CUDA provider when onnxruntime-gpu has one
        self.trunk = session(trunk, dev, threads)
        self.device = "cuda" if self.trunk.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.embed_table = np_safetensors(embeddings)["weight"]
        w = np_safetensors(head)
        self.head_w, self.head_b = w["weight"].astype(np.float32), w["bias"].astype(np.float32)
        self.tokenizer = load_tokenizer(tokenizer)
        self.audio = OnnxAudio(encoder, dev, threads)

    # -- text -----------------------------------------------------------------------------------
    def tokenize(self, text: str) -> np.ndarray:
        ids = self.tokenizer.encode(text, add_special_tokens=self.layout.add_special_tokens).ids
        return np.asarray([ids[:contract.TOKENIZER_MAX_LENGTH]], dtype=np.int64).reshape(1, -1)

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        return self.embed_table[np.asarray(ids)].astype(np.float32)

    # -- audio ----------------------------------------------------------------------------------
    def embed_audio(self, spec) -> np.ndarray:
        return self.audio.embed(spec)

    # -- trunk + head ---------------------------------------------------------------------------
    bind_past = True  # False: feed the past as numpy and fetch every output in each call (the issue-14 path)

    def _run(self, x: np.ndarray, past: list[np.ndarray] | None) -> list[np.ndarray]:
        lay = self.layout
        if past is None:
            past = [np.zeros((x.shape[0], lay.kv_heads, 0, lay.head_dim), np.float32)] * (2 * lay.n_layers)
        feed = {"inputs_embeds": x.astype(np.float32)}
        for i in range(lay.n_layers):
            feed[f"past_key_{i}"], feed[f"past_value_{i}"] = past[2 * i], past[2 * i + 1]
        return self.trunk.run(None, feed)

    def _past_names(self) -> list[str]:
        return [f"past_{k}_{i}" for i in range(self.layout.n_layers) for k in ("key", "value")]

    def _hidden_bound(self, prefix: OrtPrefix, x: np.ndarray) -> np.ndarray:
        """Hidden states of `x` (B, S, d) on the prefix's past kept as bound OrtValues (made once per batch size)."""
        OrtValue = ort().OrtValue
        b = x.shape[0]
        dev = "cuda" if self.device == "cuda" else "cpu"
        if b not in prefix.bound:
            prefix.bound[b] = [OrtValue.ortvalue_from_numpy(p, dev, 0) for p in prefix.tiled(b)]
        io = self.trunk.io_binding()
        io.bind_ortvalue_input("inputs_embeds", OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x), dev, 0))
        for name, v in zip(self._past_names(), prefix.bound[b]):
            io.bind_ortvalue_input(name, v)
        io.bind_output("hidden", dev)  # the presents are not fetched
        self.trunk.run_with_iobinding(io)
        return io.copy_outputs_to_cpu()[0]

    def score_batch(self, prefix: OrtPrefix, audio_emb: np.ndarray) -> np.ndarray:
        """Logits (B, n_cls) of B windows sharing one prefix in one trunk run, the past tiled over the batch: each
        window attends to [prompt][DMS][its own audio] only, so each row equals that window scored alone."""
        x = np.ascontiguousarray(audio_emb, dtype=np.float32)
        if prefix.past is None:
            return self.head_logits(self._run(x, None)[0])
        if self.bind_past:
            return self.head_logits(self._hidden_bound(prefix, x))
        return self.head_logits(self._run(x, prefix.tiled(x.shape[0]))[0])

    def head_logits(self, hidden: np.ndarray) -> np.ndarray:
        hp = self.hparams
        h = np.asarray(hidden)[:, -hp.patch_nums:, :hp.d_ff].transpose(0, 2, 1).reshape(hidden.shape[0], -1)
        return h.astype(np.float32) @ self.head_w.T + self.head_b

    def prefix(self, prompt_ids: np.ndarray, dms_ids: np.ndarray) -> OrtPrefix:
        emb = np.concatenate([self.embed_tokens(prompt_ids), self.embed_tokens(dms_ids)], axis=1)
        if emb.shape[1] == 0:
            return OrtPrefix(0, None, emb)
        return OrtPrefix(emb.shape[1], self._run(emb, None)[1:], emb)

    def score(self, prefix: OrtPrefix, audio_emb: np.ndarray) -> np.ndarray:
        return self.score_batch(prefix, audio_emb)

    def forward(self, spec, prompt_ids: np.ndarray, dms_ids: np.ndarray) -> np.ndarray:
        audio = self.embed_audio(spec)
        text = np.concatenate([self.embed_tokens(prompt_ids), self.embed_tokens(dms_ids)], axis=1)
        x = np.concatenate([np.repeat(text, audio.shape[0], axis=0), audio], axis=1)
        return self.head_logits(self._run(x, None)[0])

    def logits(self, spec, prompt: str, dms: str) -> np.ndarray:
        return self.forward(spec, self.tokenize(prompt), self.tokenize(dms))
