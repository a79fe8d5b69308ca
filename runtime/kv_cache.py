"""transformers' key/value cache, under both argument names respi-edge is tested with.

transformers 5.25 takes the cache as `cache=` and returns `output.cache`; 5.23–5.24 (the lower bound: the
goldens' token ids depend on it) take and return `past_key_values`, which 5.25 deprecates (removal in 5.40).
The name is read from the installed `LlamaModel.forward` signature once, so no call ever warns.
"""
from __future__ import annotations

import functools
import inspect


@functools.cache
def cache_kw() -> str:
    from transformers import LlamaModel

    return "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


def with_cache(cache) -> dict:
    """Keyword arguments passing `cache` to a transformers base model's forward."""
    return {cache_kw(): cache}


def output_cache(out):
    """The cache a forward with `use_cache=True` returned."""
    return getattr(out, cache_kw())
