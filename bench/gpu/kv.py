"""Prefix keys/values of a transformers base model, for both cache argument names.

transformers 5.25 passes the cache as `cache=` (and returns `.cache`); earlier 5.x used `past_key_values`, which
5.25 still accepts with a deprecation warning. The runtime is being moved to the new name; this helper lets the
GPU run time the bare synthetic LLM under whichever transformers it ends up with.
"""
from __future__ import annotations

import inspect

import torch


def cache_kw(llm: torch.nn.Module) -> str:
    return "cache" if "cache" in inspect.signature(llm.forward).parameters else "past_key_values"


def prefix_cache(llm: torch.nn.Module, embeds: torch.Tensor, batch: int = 1):
    """Keys/values of `embeds` (1, n, d) computed once, repeated over `batch` windows that share the prefix."""
    out = llm(inputs_embeds=embeds, use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    if batch > 1:
        cache.batch_repeat_interleave(batch)
    return cache


def rewind(cache, length: int) -> None:
    """Cut every layer back to the prefix (the cache grows in place at each step)."""
    for layer in cache.layers:
        if layer.keys.shape[-2] > length:
            layer.crop(length - layer.keys.shape[-2])


def step(llm: torch.nn.Module, embeds: torch.Tensor, cache, length: int, kw: str) -> torch.Tensor:
    """One window's tokens on the cached prefix; the cache is rewound afterwards. Returns the hidden states."""
    try:
        return llm(inputs_embeds=embeds, use_cache=True, **{kw: cache}).last_hidden_state
    finally:
        rewind(cache, length)
