"""Inference engines behind one interface, `Backend`: what `api.Session`, the stream, verify and the benchmarks call.

Implementations: `model.RespLLM` (a checkpoint in torch, the reference computation), `torch_bundle.TorchBundleModel`
(ONNX encoder + transformers/bitsandbytes LLM) and `ort_bundle.OrtBundleModel` (everything in ONNX Runtime, no
torch). Arrays are torch tensors or numpy arrays as each backend computes; `api.to_numpy` reads either.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..info import ModelInfo


@runtime_checkable
class Backend(Protocol):
    info: ModelInfo  # name, caveats, threshold, task: printed beside every probability

    @property
    def device(self) -> str:
        """Where the LLM runs: "cpu" or "cuda"."""

    def tokenize(self, text: str) -> Any:
        """One text part as the reference tokenises it: ids of shape (1, n)."""

    def prefix(self, prompt_ids: Any, dms_ids: Any) -> Any:
        """Keys/values of [prompt][DMS], computed once per session and reused by every window."""

    def embed_audio(self, spec: Any) -> Any:
        """Encoder + projector: spectrogram (B, 256, 64) or (256, 64) → audio embeddings (B, 64, d_llm)."""

    def score(self, prefix: Any, audio_emb: Any) -> Any:
        """Logits (B, n_cls) of audio embeddings on top of a prefix (the runtime's path)."""

    def score_batch(self, prefix: Any, audio_emb: Any) -> Any:
        """Logits (B, n_cls) of B windows sharing one prefix in one pass, the prefix keys/values repeated over the
        batch: each row equals that window scored alone (within 1e-5). Windows of different prefixes (another
        DMS) are never batched together: padding changes the reference's results (REFERENCE.md §5.4)."""

    def forward(self, spec: Any, prompt_ids: Any, dms_ids: Any) -> Any:
        """Logits (B, n_cls) of the full pass without prefix reuse (the reference's path)."""

    def head_logits(self, hidden: Any) -> Any:
        """The head alone: LLM hidden states (B, T, d_llm) → logits of their last 64 positions."""
