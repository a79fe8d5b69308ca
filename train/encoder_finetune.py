"""The encoder stage of a `finetune` recipe: cache early-stage features, tune the late stages, serve tokens.

Resumable: features are cached per (recording, view), and the tuned tensors are written to the output folder
(`encoder_tuned.safetensors`, keyed by everything that shaped them), so a re-run skips both.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from respi_edge.runtime.builtin import encoder_init, synthetic_encoder_state
from respi_edge.runtime.manifest import Row, file_sha256

from .encoder_stages import back, opera_state, trained_prefixes
from .encoder_tuning import FeatureItem, TuningConfig, tune
from .feature_cache import FeatureCache
from .recipe import Recipe
from .trainer import TaskRows, TokensFn
from .views import VIEWS_VERSION, read_events

STATE_FILE = "encoder_tuned.safetensors"


def tuning_config(recipe: Recipe) -> TuningConfig:
    return TuningConfig(cut=recipe.encoder_cut, epochs=recipe.encoder_epochs, batch_size=recipe.encoder_batch_size,
                        lr=recipe.encoder_lr, mixup=recipe.encoder_mixup, drop_path=recipe.encoder_drop_path,
                        patience=recipe.encoder_patience, seed=recipe.seed)


def _run_key(recipe: Recipe, rows: list[TaskRows]) -> str:
    """Everything that shapes the tuned tensors: tuning settings, views, the fitted recordings and labels."""
    h = hashlib.sha256(json.dumps({"cfg": tuning_config(recipe).__dict__, "views": recipe.encoder_views,
                                   "views_version": VIEWS_VERSION, "init": encoder_init()["sha256"]},
                                  sort_keys=True).encode())
    for tr in rows:
        for tag, part in (("train", tr.train), ("val", tr.val)):
            for r in part:
                h.update(f"{tag}|{file_sha256(r.path)}|{r.label}|{r.patient}".encode())
    return h.hexdigest()


def feature_cache(model, recipe: Recipe, cache_root: str | None = None) -> FeatureCache:
    """The cache of the recipe's frozen-stage features (also read by bench/listening.py)."""
    return FeatureCache(model.encoder, encoder_init()["sha256"], recipe.encoder_cut,
                        {"seed": recipe.seed, "views": VIEWS_VERSION},
                        os.path.join(cache_root, "features") if cache_root else None)


def finetune_encoder(model, recipe: Recipe, rows: list[TaskRows], out: Path, cache_root: str | None = None,
                     progress=None) -> tuple[TokensFn, dict]:
    """Tune `model.encoder` in place; return the token source for the LLM stage and what to record."""
    cfg = tuning_config(recipe)
    init = encoder_init()
    cache = feature_cache(model, recipe, cache_root)
    events: dict = {}
    for td in recipe.tasks:
        if td.events:
            events.update(read_events(td.events))
    fitted = [r for tr in rows for r in tr.train]
    scored = [r for tr in rows for r in tr.val + tr.test + tr.holdout]
    pid = progress.add_task("encoder features", total=len(fitted) + len(scored)) if progress else None
    step = (lambda k: progress.update(pid, advance=k)) if progress else None
    cache.fill(fitted, recipe.encoder_views, events, on_row=step)
    cache.fill(scored, 1, events, on_row=step)

    def items(part: list[Row], n_views: int) -> list[FeatureItem]:
        return [FeatureItem([cache.get(r, v) for v in range(n_views)], r.label, r.patient) for r in part]

    key = _run_key(recipe, rows)
    state_path = out / STATE_FILE
    meta: dict = {"cut": cfg.cut, "views": recipe.encoder_views, "trained": trained_prefixes(cfg.cut),
                  "feature_cache": {"hits": cache.hits, "misses": cache.misses}}
    prefixes = trained_prefixes(cfg.cut)
    if state_path.is_file() and json.loads(_meta(state_path)).get("key") == key:
        _load_into(model.encoder, load_file(str(state_path)))
        meta.update(json.loads(_meta(state_path))["tuning"], resumed=True)
    else:
        train_items = items(fitted, recipe.encoder_views)
        val_items = items([r for tr in rows for r in tr.val], 1)
        hist = tune(model.encoder, train_items, val_items, cfg, progress)
        _round_to_fp16(model.encoder, cfg.cut)  # the shipped tensors are fp16: train the LLM on exactly those
        meta.update(history=hist.epochs, best_epoch=hist.best_epoch, seconds=hist.seconds, resumed=False)
        state = opera_state(model.encoder, synthetic_encoder_state(init), prefixes)
        tmp = state_path.with_name(state_path.name + ".tmp")
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp),
                  metadata={"respi_edge": json.dumps({"key": key, "tuning": {
                      k: meta[k] for k in ("history", "best_epoch", "seconds")}})})
        os.replace(tmp, state_path)

    @torch.no_grad()
    def tokens(row: Row, views: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        n = recipe.encoder_views if views and recipe.llm_views else 1
        h = torch.stack([cache.get(row, v) for v in range(n)]).float()
        t = back(model.encoder, h, cfg.cut).to(torch.float16)
        return t[0].float(), list(t[1:])

    return tokens, meta


def _meta(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return (f.metadata() or {}).get("respi_edge", "{}")


def _load_into(encoder, opera: dict[str, torch.Tensor]) -> None:
    """Put OPERA-named tensors into the ClapAudioModel (fused qkv split back)."""
    from respi_edge.runtime.encoder import opera_to_clap

    mapped = opera_to_clap(opera)
    missing = encoder.load_state_dict(mapped, strict=False)
    if missing.unexpected_keys:
        raise ValueError(f"tuned encoder tensors not in the encoder: {missing.unexpected_keys[:3]}")


@torch.no_grad()
def _round_to_fp16(encoder, cut: int) -> None:
    from .encoder_stages import trainable_modules

    for m in trainable_modules(encoder, cut):
        for p in m.parameters():
            p.copy_(p.to(torch.float16).float())
