"""Zero-copy reading of safetensors files and sharded folders (Hugging Face layout).

Tensors are views of a private (copy-on-write) memory map, like `torch.load(mmap=True)` for the official
checkpoint: a 16 GB base model is not copied into RAM to be read once, and the pages of a tensor can be
released after use (checkpoint.release_pages).
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path

from .errors import BundleError


def np_safetensors(path: str | os.PathLike) -> dict:
    """A safetensors file as numpy arrays (no torch: the ONNX backend)."""
    from safetensors.numpy import load_file

    return load_file(str(path))


def _dtypes():
    import torch

    return {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
            "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
            "BOOL": torch.bool}


def mmap_safetensors(path: str | os.PathLike) -> dict:
    import torch

    dtypes = _dtypes()
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    base = 8 + n
    out: dict[str, torch.Tensor] = {}
    for k, info in header.items():
        if k == "__metadata__":
            continue
        dtype = dtypes[info["dtype"]]
        lo, hi = info["data_offsets"]
        count = (hi - lo) // torch.empty((), dtype=dtype).element_size()
        t = torch.frombuffer(mm, dtype=dtype, count=count, offset=base + lo) if count else torch.empty(0, dtype=dtype)
        out[k] = t.reshape(info["shape"])
    return out


def read_sharded(folder: str | os.PathLike) -> dict:
    files = sorted(Path(folder).glob("model*.safetensors"))
    if not files:
        raise BundleError(f"{folder}: no model*.safetensors shards")
    out: dict = {}
    for f in files:
        out.update(mmap_safetensors(f))
    return out
