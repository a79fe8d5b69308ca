"""Outputs of the encoder's frozen early stages, per recording and augmented view, cached as fp16 safetensors.

The key is the audio file's sha256, the encoder initialisation's hash, the cut, the view recipe and the view
index: nothing else changes a cached tensor, so an interrupted or repeated training run reuses every file.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from respi_edge.runtime.llm import cache_dir
from respi_edge.runtime.manifest import Row, file_sha256

from .encoder_stages import front
from .views import Event, views


class FeatureCache:
    def __init__(self, encoder, encoder_hash: str, cut: int, view_recipe: dict,
                 root: str | os.PathLike | None = None):
        self.encoder, self.cut, self.view_recipe = encoder, cut, dict(view_recipe)
        tag = hashlib.sha256(json.dumps({"enc": encoder_hash, "cut": cut, **self.view_recipe},
                                        sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(root) if root else cache_dir() / "features" / tag
        self.dir.mkdir(parents=True, exist_ok=True)
        self._sha: dict[str, str] = {}
        self.hits = self.misses = 0

    def _file(self, path: str, view: int) -> Path:
        sha = self._sha.get(path) or self._sha.setdefault(path, file_sha256(path)[:32])
        return self.dir / f"{sha}_{view}.safetensors"

    def cached(self, row: Row, view: int) -> torch.Tensor | None:
        """The cached front features of one view, or None (never computes)."""
        f = self._file(row.path, view)
        return load_file(str(f))["h"] if f.is_file() else None

    def has(self, row: Row, n_views: int) -> bool:
        return all(self._file(row.path, v).is_file() for v in range(n_views))

    def get(self, row: Row, view: int) -> torch.Tensor:
        """(L, C) fp16 front features of one view (computed with the recording's other views if missing)."""
        f = self._file(row.path, view)
        if not f.is_file():
            self.fill([row], view + 1, {})
        return load_file(str(f))["h"]

    @torch.inference_mode()
    def fill(self, rows: list[Row], n_views: int, events: dict[str, list[Event]], batch: int = 8,
             on_row=None) -> None:
        """Compute every missing (row, view) in batches of `batch` recordings; each file written atomically."""
        todo = [r for r in rows if not self.has(r, n_views)]
        self.hits += len(rows) - len(todo)
        if on_row and len(rows) > len(todo):
            on_row(len(rows) - len(todo))  # cached rows count as done: a resumed run's bar starts where it stopped
        for k in range(0, len(todo), batch):
            part = todo[k:k + batch]
            specs, where = [], []
            for r in part:
                vs = views(r.path, n_views, positive=r.label == 1, events=events.get(r.path, []),
                           seed=self.view_recipe.get("seed", 0))
                for v, s in enumerate(vs):
                    specs.append(s)
                    where.append((r, v))
            h = front(self.encoder, torch.from_numpy(np.stack(specs)), self.cut).to(torch.float16)
            for (r, v), hv in zip(where, h):
                f = self._file(r.path, v)
                tmp = f.with_name(f.name + ".tmp")
                save_file({"h": hv.contiguous()}, str(tmp))
                os.replace(tmp, f)
            self.misses += len(part)
            if on_row:
                on_row(len(part))
