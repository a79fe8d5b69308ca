"""Reading sharded safetensors folders (Hugging Face layout `model-0000i-of-0000N.safetensors` or one file)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import BundleError


def read_sharded(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("model*.safetensors"))
    if not files:
        raise BundleError(f"{folder}: no model*.safetensors shards")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out
