"""Encoder tokens computed once per (recording, encoder) and cached as safetensors.

With a frozen encoder, the 64×768 OPERA-CT tokens of a recording never change during training, so epochs only
cost the LLM. The key is the audio file's sha256 and the encoder weights' hash; nothing else can change them.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from respi_edge.runtime import audio as audio_fe
from respi_edge.runtime.encoder import encode
from respi_edge.runtime.llm import cache_dir
from respi_edge.runtime.manifest import Row, file_sha256


class TokenCache:
    def __init__(self, encoder, encoder_hash: str, root: str | os.PathLike | None = None):
        self.encoder = encoder
        self.dir = Path(root) if root else cache_dir() / "tokens" / encoder_hash[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    def _path(self, audio_path: str) -> Path:
        return self.dir / f"{file_sha256(audio_path)[:32]}.safetensors"

    def get(self, row: Row) -> torch.Tensor:
        """(64, 768) tokens of the recording's first 8.18-s window (the reference's training input)."""
        p = self._path(row.path)
        if p.is_file():
            self.hits += 1
            return load_file(str(p))["tokens"]
        self.misses += 1
        spec = torch.from_numpy(audio_fe.spectrogram(row.path))
        tokens = encode(self.encoder, spec[None])[0][0].contiguous()
        tmp = p.with_suffix(".tmp")
        save_file({"tokens": tokens}, str(tmp))
        os.replace(tmp, p)
        return tokens
