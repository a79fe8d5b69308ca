"""OPERA-CT (HTS-AT) run as transformers' `ClapAudioModel` (REFERENCE.md §2.3), and its weight layouts (§2.4, §2.6).

CLAP's audio tower computes the same function as OPERA's `EncoderHTSAT` (bn0, bicubic 256→1024 + fold, Swin
stages, final norm); only the key names differ. `forward_window` tokens are CLAP's last hidden state
(B, 768, 2, 32) flattened to (B, 64, 768); the latent is CLAP's pooler output.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
from torch import nn

from . import contract
from .errors import CheckpointError

OPERA_PREFIX = "encoder.htsat."  # EncoderHTSAT.state_dict() keys start with this (configs/opera_ct_keys.json)
LAYOUTS = {  # checkpoint prefix in front of the OPERA key -> layout name
    "audio_encoder.base_model.model.": "respllm-encoder-lora",
    "audio_encoder.": "respllm",
    "encoder.": "opera-release",  # Lightning .ckpt: Cola.encoder = EncoderHTSAT, so `encoder.encoder.htsat.X`
    "": "opera",
}
UNUSED = ("spectrogram_extractor.", "logmel_extractor.", "tscam_conv.", "head.")


def clap_config():
    from transformers import ClapAudioConfig

    return ClapAudioConfig(
        window_size=8, num_mel_bins=contract.N_MELS, spec_size=256, patch_size=4, patch_stride=[4, 4],
        patch_embed_input_channels=1, hidden_size=contract.ENC_DIM, patch_embeds_hidden_size=96,
        depths=[2, 2, 6, 2], num_attention_heads=[4, 8, 16, 32], enable_fusion=False,
        enable_patch_layer_norm=True, flatten_patch_embeds=True, mlp_ratio=4.0, qkv_bias=True, hidden_act="gelu",
        layer_norm_eps=1e-5, drop_path_rate=0.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def build_encoder() -> nn.Module:
    """An empty OPERA-CT as ClapAudioModel (parameters on the meta device until weights are assigned)."""
    from accelerate import init_empty_weights
    from transformers.models.clap.modeling_clap import ClapAudioModel

    with init_empty_weights(include_buffers=False):
        return ClapAudioModel(clap_config())


def _rename(k: str) -> str:
    """One OPERA key (without `encoder.htsat.`) -> ClapAudioModel key (§2.3 table)."""
    if k.startswith("bn0."):
        return "audio_encoder.batch_norm." + k[4:]
    for a, b in ((".norm1.", ".layernorm_before."), (".norm2.", ".layernorm_after."),
                 (".mlp.fc1.", ".intermediate.dense."), (".mlp.fc2.", ".output.dense."),
                 (".attn.proj.", ".attention.output.dense."),
                 (".attn.relative_position", ".attention.self.relative_position")):
        k = k.replace(a, b)
    return "audio_encoder." + k


def opera_to_clap(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plain OPERA keys (`encoder.htsat.…`) -> ClapAudioModel state; unused modules and masks dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, v in state.items():
        if not key.startswith(OPERA_PREFIX):
            raise CheckpointError(f"unexpected encoder key {key!r} (expected the prefix {OPERA_PREFIX!r})")
        k = key[len(OPERA_PREFIX):]
        if k.startswith(UNUSED) or k.endswith("attn_mask"):
            continue
        if ".attn.qkv." in k:  # rows [0:C] query, [C:2C] key, [2C:3C] value
            c = v.shape[0] // 3
            for i, name in enumerate(("query", "key", "value")):
                out[_rename(k.replace(".attn.qkv.", f".attention.self.{name}."))] = v[i * c:(i + 1) * c]
            continue
        out[_rename(k)] = v
    return out


def detect_layout(sd: Mapping[str, torch.Tensor]) -> str:
    """The prefix in front of `encoder.htsat.` that this state dict uses."""
    for prefix in LAYOUTS:
        if any(k.startswith(prefix + OPERA_PREFIX) for k in sd):
            return prefix
    raise CheckpointError("no OPERA-CT encoder weights found (keys like 'audio_encoder.encoder.htsat.*', "
                          "'audio_encoder.base_model.model.encoder.htsat.*' or 'encoder.encoder.htsat.*')")


_LORA = re.compile(r"^(?P<mod>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")


def merge_encoder_lora(sd: Mapping[str, torch.Tensor], alpha: float) -> tuple[dict[str, torch.Tensor], int | None]:
    """Fold peft LoRA (qkv, proj Linear; patch_embed Conv2d) into plain OPERA weights (§2.4)."""
    from .lora import LoraPair, delta

    base: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        m = _LORA.match(k)
        if m:
            parts.setdefault(m.group("mod"), {})[m.group("ab")] = v
        else:
            base[k.replace(".base_layer.", ".")] = v
    r = None
    for mod, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"encoder LoRA on {mod}: lora_A/lora_B incomplete")
        w = base.get(f"{mod}.weight")
        if w is None:
            raise CheckpointError(f"encoder LoRA on {mod} but its base weight is missing")
        pair = LoraPair(ab["A"], ab["B"])
        r = pair.r
        base[f"{mod}.weight"] = (w.float() + delta(pair, alpha / pair.r, w.shape)).to(w.dtype)
    return base, r


def extract_encoder_state(sd: Mapping[str, torch.Tensor], alpha: float = contract.ENC_LORA_ALPHA
                          ) -> tuple[dict[str, torch.Tensor], dict]:
    """Any supported layout -> plain OPERA keys (`encoder.htsat.…`), LoRA merged; plus what was found."""
    prefix = detect_layout(sd)
    n = len(prefix)
    sub = {k[n:]: v for k, v in sd.items() if k.startswith(prefix + OPERA_PREFIX)}
    meta = {"layout": LAYOUTS[prefix], "lora_r": None}
    if any(".lora_A." in k for k in sub) or any(".base_layer." in k for k in sub):
        sub, meta["lora_r"] = merge_encoder_lora(sub, alpha)
    return sub, meta


def load_encoder(state: Mapping[str, torch.Tensor]) -> nn.Module:
    """ClapAudioModel holding `state` (plain OPERA keys), eval mode; strict: every key must be present."""
    enc = build_encoder()
    mapped = opera_to_clap(state)
    expected = enc.state_dict().keys()
    missing, unexpected = set(expected) - mapped.keys(), mapped.keys() - set(expected)
    if missing or unexpected:
        raise CheckpointError(f"encoder weights incomplete or foreign: missing {sorted(missing)[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]}")
    try:
        enc.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in mapped.items()},
                            strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"encoder weights have the wrong shapes: {str(e).splitlines()[0]}") from None
    return enc.eval()


def load_opera_ckpt(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """OPERA's release `encoder-operaCT.ckpt` (Lightning) -> plain OPERA keys, read without unpickling code."""
    from .checkpoint import read_state

    sd, _, _ = read_state(path)
    state, _ = extract_encoder_state(sd)
    return state


@torch.inference_mode()
def encode(encoder: nn.Module, spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 256, 64) spectrograms -> tokens (B, 64, 768) in forward_window order, latent (B, 768)."""
    if spec.dim() != 3 or tuple(spec.shape[1:]) != contract.SPEC_SHAPE:
        raise ValueError(f"spectrogram batch must be (B, 256, 64), got {tuple(spec.shape)}")
    out = encoder(input_features=spec[:, None].float())
    return out.last_hidden_state.flatten(2).transpose(1, 2), out.pooler_output
