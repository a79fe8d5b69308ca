"""OPERA-CT split between its frozen early stages and its trainable late ones.

Running `front` once per view and caching its output makes an encoder epoch cost only the late stages.
`front` + `back` compute exactly what `runtime.encoder.encode` computes (tested), so tokens of a fine-tuned
encoder equal the runtime's.
"""
from __future__ import annotations

import torch
from torch import nn


def _tower(encoder: nn.Module) -> nn.Module:
    return getattr(encoder, "audio_encoder", encoder)


def front(encoder: nn.Module, spec: torch.Tensor, cut: int) -> torch.Tensor:
    """(B, 256, 64) spectrograms → hidden states after stages [0, cut): (B, L, C)."""
    enc = _tower(encoder)
    x = spec[:, None].float().transpose(1, 3)
    h = enc.reshape_mel2img(enc.batch_norm(x).transpose(1, 3))
    h = enc.patch_embed(h, None)
    for i in range(cut):
        h = enc.layers[i](h, enc.input_resolutions[i], False, False)[0]
    return h


def back(encoder: nn.Module, h: torch.Tensor, cut: int) -> torch.Tensor:
    """Stages [cut, 4), the final norm and CLAP's token layout → tokens (B, 64, 768) as `encode` returns them."""
    enc = _tower(encoder)
    for i in range(cut, len(enc.layers)):
        h = enc.layers[i](h, enc.input_resolutions[i], False, False)[0]
    h = enc.norm(h)
    b, n, c = h.shape
    side = int(round(n ** 0.5))  # 8 × 8 final grid
    grid = h.permute(0, 2, 1).reshape(b, c, side, side)
    bin_ = side // enc.freq_ratio
    grid = grid.reshape(b, c, side // bin_, bin_, side).permute(0, 1, 3, 2, 4).reshape(b, c, bin_, -1)
    return grid.flatten(2).transpose(1, 2)


def trainable_modules(encoder: nn.Module, cut: int) -> list[nn.Module]:
    """The stages a fine-tune updates: [cut, 4) and the final LayerNorm."""
    enc = _tower(encoder)
    return [*enc.layers[cut:], enc.norm]


def trained_prefixes(cut: int, n_layers: int = 4) -> list[str]:
    """OPERA key prefixes (after `encoder.htsat.`) of the fine-tuned tensors."""
    return [f"layers.{i}." for i in range(cut, n_layers)] + ["norm."]


def opera_state(encoder: nn.Module, reference: dict[str, torch.Tensor], prefixes: list[str]) -> dict[str, torch.Tensor]:
    """The encoder's current tensors under OPERA key names (`encoder.htsat.…`, qkv fused) for the keys of
    `reference` (an OPERA state) that start with one of `prefixes`; buffers such as position indices excluded."""
    from respi_edge.runtime.encoder import OPERA_PREFIX, opera_to_clap

    clap = encoder.state_dict()
    out = {}
    for key, ref in reference.items():
        sub = key[len(OPERA_PREFIX):]
        if not sub.startswith(tuple(prefixes)) or not ref.is_floating_point():
            continue
        names = list(opera_to_clap({key: ref}))  # 1 name, or 3 for a fused qkv (query, key, value order)
        if not names:  # modules CLAP does not have (OPERA's own STFT, head): never trained here
            continue
        out[key] = torch.cat([clap[n] for n in names]) if len(names) > 1 else clap[names[0]]
    return out
