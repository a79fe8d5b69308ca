"""Official RespLLM checkpoint reader (REFERENCE.md §4): mmap, tensor by tensor, hyper-parameters from shapes.

`torch.save({"epoch", "model_state_dict"})` files are opened with `torch.load(weights_only=True, mmap=True)`,
so an 8 B fp32 checkpoint (~30 GB) is never copied into RAM: tensors are views of the mapped file until used.
The compact form written by `respi-edge train` (safetensors + JSON metadata) is read through the same API.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import contract
from .errors import CheckpointError
from .hparams import HParams

LLM_PREFIX = "llm_model."
ENC_PREFIX = "audio_encoder."
ALIGNER_W = "aligner.weight"
ALIGNER_B = "aligner.bias"
HEAD_W = "output_projection.linear.weight"
HEAD_B = "output_projection.linear.bias"
COMPACT_META_KEY = "respi_edge"  # safetensors metadata key holding the compact form's JSON


@dataclass
class Checkpoint:
    """An opened checkpoint: the (mmapped) state dict plus what we know about it."""

    path: str
    state: Mapping[str, torch.Tensor]
    hparams: HParams
    epoch: int | None = None
    meta: dict = field(default_factory=dict)  # compact form: base LLM, encoder init, recipe, metrics

    def part(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under `prefix`, with the prefix removed."""
        n = len(prefix)
        return {k[n:]: v for k, v in self.state.items() if k.startswith(prefix)}

    @property
    def has_llm_weights(self) -> bool:
        return any(k.startswith(LLM_PREFIX) and "lora_" not in k for k in self.state)

    @property
    def has_encoder_weights(self) -> bool:
        return any(k.startswith(ENC_PREFIX) and "lora_" not in k for k in self.state)


def release_pages(t: torch.Tensor) -> None:
    """Drop the resident pages of a tensor that is a view of a mmapped checkpoint (MADV_DONTNEED).

    Pages are re-read from the file if touched again, so this only bounds the resident set of a one-pass reader
    (an export of a 30 GB checkpoint) instead of letting every page it touched count until memory pressure."""
    import ctypes
    import mmap

    n = t.numel() * t.element_size()
    if n < mmap.PAGESIZE * 16 or t.device.type != "cpu":
        return
    start = t.data_ptr()
    lo = (start + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE  # whole pages inside the tensor only
    hi = (start + n) // mmap.PAGESIZE * mmap.PAGESIZE
    if hi > lo:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), 4)  # 4 = MADV_DONTNEED


def read_state(path: str | os.PathLike) -> tuple[Mapping[str, torch.Tensor], int | None, dict]:
    """Return (state dict, epoch, compact metadata) without materialising tensors in RAM."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint file not found")
    if p.suffix == ".safetensors":
        return _read_safetensors(p)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" in str(e) or "zip" in str(e).lower():
            raise CheckpointError(f"{p}: not a torch zip checkpoint ({e}); re-save it with torch.save "
                                  f"(legacy formats cannot be memory-mapped)") from None
        raise CheckpointError(f"{p}: cannot read the checkpoint: {e}") from None
    except Exception as e:  # pickle refusals (weights_only), truncated files, not a checkpoint at all
        raise CheckpointError(f"{p}: cannot read the checkpoint safely ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}). Only tensor checkpoints "
                              f"(torch.save of state dicts) are accepted.") from None
    if isinstance(obj, Mapping) and "model_state_dict" in obj:
        sd, epoch = obj["model_state_dict"], obj.get("epoch")
    elif isinstance(obj, Mapping) and "state_dict" in obj:  # Lightning-style
        sd, epoch = obj["state_dict"], obj.get("epoch")
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd, epoch = obj, None
    else:
        raise CheckpointError(f"{p}: not a RespLLM checkpoint (expected {{'epoch', 'model_state_dict'}})")
    if not isinstance(sd, Mapping) or not sd:
        raise CheckpointError(f"{p}: the checkpoint holds no tensors")
    return sd, int(epoch) if isinstance(epoch, int) else None, {}


def _read_safetensors(p: Path):
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"{p}: not a valid safetensors file ({e})") from None
    info = json.loads(meta[COMPACT_META_KEY]) if COMPACT_META_KEY in meta else {}
    return sd, info.get("epoch"), info


_LORA_A = re.compile(r"^(?P<mod>.+)\.lora_A(?:\.default)?\.weight$")


def lora_modules(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, int]:
    """Module path (after `prefix`, peft wrapper segments removed) -> LoRA rank, for every lora_A found."""
    out = {}
    for k, v in state.items():
        if not k.startswith(prefix):
            continue
        m = _LORA_A.match(k[len(prefix):])
        if m:
            out[strip_peft(m.group("mod"))] = int(v.shape[0])
    return out


def strip_peft(key: str) -> str:
    """Plain module key: drop peft's `base_model.model.` wrapper and `.base_layer` segments."""
    if key.startswith("base_model.model."):
        key = key[len("base_model.model."):]
    return key.replace(".base_layer.", ".").replace(".base_layer", "")


def infer_hparams(state: Mapping[str, torch.Tensor], *, llm_lora_alpha: float = contract.LLM_LORA_ALPHA,
                  enc_lora_alpha: float = contract.ENC_LORA_ALPHA, d_ff: int | None = None,
                  patch_nums: int = contract.N_AUDIO_TOKENS) -> HParams:
    """§4 'Inference of hyper-parameters from shapes'; alpha is not stored, so it comes from options."""
    for k in (ALIGNER_W, HEAD_W):
        if k not in state:
            raise CheckpointError(f"not a RespLLM checkpoint: tensor {k!r} is missing")
    aw, hw = state[ALIGNER_W], state[HEAD_W]
    nf = int(hw.shape[1])
    if d_ff is None:
        if nf % patch_nums:
            raise CheckpointError(f"head input width {nf} is not a multiple of patch_nums={patch_nums}")
        d_ff = nf // patch_nums
    elif d_ff * patch_nums != nf:
        raise CheckpointError(f"head input width {nf} != d_ff {d_ff} x patch_nums {patch_nums}")
    hp = HParams(d_llm=int(aw.shape[0]), enc_dim=int(aw.shape[1]), n_cls=int(hw.shape[0]), d_ff=d_ff,
                 patch_nums=patch_nums, llm_lora_alpha=llm_lora_alpha, enc_lora_alpha=enc_lora_alpha)
    if d_ff > hp.d_llm:
        raise CheckpointError(f"d_ff {d_ff} exceeds the LLM hidden size {hp.d_llm}")

    llm_loras = lora_modules(state, LLM_PREFIX)
    if llm_loras:
        ranks = set(llm_loras.values())
        if len(ranks) != 1:
            raise CheckpointError(f"LLM LoRA tensors have several ranks {sorted(ranks)}")
        hp.llm_mode, hp.llm_lora_r = "lora", ranks.pop()
        hp.llm_lora_targets = sorted({m.rsplit(".", 1)[-1] for m in llm_loras})
    else:
        hp.llm_mode = "frozen"
    emb = [v for k, v in state.items() if k.startswith(LLM_PREFIX) and k.endswith("embed_tokens.weight")]
    if emb:
        hp.llm_vocab, hp.llm_hidden = int(emb[0].shape[0]), int(emb[0].shape[1])
    layers = {int(m.group(1)) for k in state if k.startswith(LLM_PREFIX)
              for m in [re.search(r"\.layers\.(\d+)\.", k)] if m}
    hp.llm_layers = max(layers) + 1 if layers else None

    enc_keys = [k for k in state if k.startswith(ENC_PREFIX)]
    if not enc_keys:
        hp.enc_mode = "absent"
    elif any(k.startswith(ENC_PREFIX + "base_model.model.") for k in enc_keys):
        hp.enc_mode = "lora"
        er = set(lora_modules(state, ENC_PREFIX).values())
        hp.enc_lora_r = er.pop() if len(er) == 1 else None
    else:
        hp.enc_mode = "frozen"
    return hp


def open_checkpoint(path: str | os.PathLike, **hparam_overrides) -> Checkpoint:
    """Open an official (or compact) checkpoint and infer its hyper-parameters."""
    sd, epoch, meta = read_state(path)
    overrides = {k: v for k, v in hparam_overrides.items() if v is not None}
    for k, v in (meta.get("hparams") or {}).items():
        if k in ("llm_lora_alpha", "enc_lora_alpha", "d_ff", "patch_nums"):
            overrides.setdefault(k, v)
    hp = infer_hparams(sd, **overrides)
    return Checkpoint(path=str(path), state=sd, hparams=hp, epoch=epoch, meta=meta)
