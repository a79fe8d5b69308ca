"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one (torch-free)."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write beside the target, then rename over it (os.replace is atomic within a filesystem)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj, *, indent: int | None = 1) -> None:
    write_text(path, json.dumps(obj, indent=indent))
