"""Assemble a RespLLM from a checkpoint (official or compact) and a base LLM."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from . import checkpoint as ckpt
from .checkpoint import Checkpoint, open_checkpoint
from .errors import CheckpointError, ModelError
from .llm import BaseLLM, load_config, load_tokenizer, resolve_llm
from .lora import split_lora
from .model import FlattenHead, ModelInfo, RespLLM, build_llm


def base_llm_weights(base: BaseLLM) -> dict[str, torch.Tensor]:
    """The base model's own weights (no LM head) with LlamaModel-style keys, read lazily from safetensors."""
    path = base.path
    if not base.is_local:
        try:
            from huggingface_hub import snapshot_download

            path = snapshot_download(base.path, allow_patterns=["*.json", "*.safetensors", "tokenizer*"])
        except Exception as e:  # offline, gated, unknown id
            raise ModelError(f"cannot fetch base LLM weights for {base.path!r} from the hub: {e}") from None
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise ModelError(f"{path}: no *.safetensors weights; the checkpoint does not hold the LLM weights either, "
                         f"so pass --llm with a folder or hub id that has them")
    from .shards import mmap_safetensors

    out: dict[str, torch.Tensor] = {}
    for f in files:
        for k, v in mmap_safetensors(f).items():
            if not k.startswith("lm_head."):
                out[k[len("model."):] if k.startswith("model.") else k] = v
    return out


def encoder_from_checkpoint(ck: Checkpoint) -> nn.Module:
    """The checkpoint's encoder; a compact checkpoint names a deterministic initialisation and may hold the
    tensors it fine-tuned (e.g. the late stages), which replace the initialisation's."""
    from .encoder import extract_encoder_state, load_encoder

    init = ck.meta.get("encoder_init")
    if ck.has_encoder_weights and not init:
        state, _ = extract_encoder_state(ck.state, alpha=ck.hparams.enc_lora_alpha)
        return load_encoder(state)
    if not init:
        raise CheckpointError(f"{ck.path}: holds no audio-encoder weights and names no encoder initialisation")
    from .builtin import synthetic_encoder_state

    state = synthetic_encoder_state(init)
    if ck.has_encoder_weights:  # compact form with fine-tuned encoder tensors (fp16 allowed)
        tuned = {k[len(ckpt.ENC_PREFIX):]: v for k, v in ck.state.items()
                 if k.startswith(ckpt.ENC_PREFIX) and "lora_" not in k}
        foreign = sorted(set(tuned) - set(state))
        if foreign:
            raise CheckpointError(f"{ck.path}: encoder tensors not in OPERA-CT, e.g. {foreign[0]!r}")
        for k, v in tuned.items():
            if tuple(v.shape) != tuple(state[k].shape):
                raise CheckpointError(f"{ck.path}: encoder tensor {k} has shape {tuple(v.shape)}, "
                                      f"expected {tuple(state[k].shape)}")
            state[k] = v.to(state[k].dtype)
    enc_loras = ck.part(ckpt.ENC_PREFIX)
    if enc_loras:  # compact form with encoder LoRA: apply it to the synthetic base
        from .encoder import extract_encoder_state

        wrapped = {f"{ckpt.ENC_PREFIX}base_model.model.{k}": v for k, v in state.items()}  # k = encoder.htsat.X
        for k, v in enc_loras.items():
            wrapped[ckpt.ENC_PREFIX + k] = v
        state, _ = extract_encoder_state(_as_lora_layout(wrapped), alpha=ck.hparams.enc_lora_alpha)
    from .encoder import load_encoder

    return load_encoder(state)


def _as_lora_layout(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the base weights of LoRA-wrapped encoder modules to peft's `.base_layer.` form."""
    wrapped = {k.split(".lora_")[0] for k in sd if ".lora_A." in k}
    out = {}
    for k, v in sd.items():
        mod, _, leaf = k.rpartition(".")
        if ".lora_" not in k and mod in wrapped:
            k = f"{mod}.base_layer.{leaf}"
        out[k] = v
    return out


def assemble(ck: Checkpoint, llm: str | os.PathLike | None = None, *, merge_lora: bool = False,
             dtype: torch.dtype | None = None, info: ModelInfo | None = None) -> RespLLM:
    hp = ck.hparams
    base = resolve_llm(llm if llm is not None else ck.meta.get("base_llm"))
    config = load_config(base)
    hidden = getattr(config, "hidden_size", None)
    if hidden != hp.d_llm:
        raise CheckpointError(f"{ck.path}: the aligner projects to {hp.d_llm} dims but base LLM {base.path} has "
                              f"hidden size {hidden}; pass --llm with the base model the checkpoint was trained on")
    if hp.llm_layers is not None and hp.llm_layers != config.num_hidden_layers:
        raise CheckpointError(f"{ck.path}: the checkpoint's LLM has {hp.llm_layers} layers, base LLM {base.path} "
                              f"has {config.num_hidden_layers}; pass --llm with the matching base model")
    tokenizer = load_tokenizer(base)

    llm_part = ck.part(ckpt.LLM_PREFIX)
    if not ck.has_llm_weights:  # compact form: base weights from the base LLM, trained LoRA from the file
        llm_part = {**base_llm_weights(base), **llm_part}
    base_state, loras = split_lora(llm_part)
    model_llm = build_llm(config, base_state, loras, hp, merge=merge_lora, dtype=dtype)

    encoder = encoder_from_checkpoint(ck)
    aligner = nn.Linear(hp.enc_dim, hp.d_llm)
    aligner.load_state_dict({"weight": ck.state[ckpt.ALIGNER_W], "bias": ck.state[ckpt.ALIGNER_B]}, assign=True)
    head = FlattenHead(hp.d_ff * hp.patch_nums, hp.n_cls)
    head.linear.load_state_dict({"weight": ck.state[ckpt.HEAD_W], "bias": ck.state[ckpt.HEAD_B]}, assign=True)
    if dtype is not None:
        aligner.to(dtype)

    if info is None:
        caveats = list(ck.meta.get("caveats", []))
        if base.caveat and base.caveat not in caveats:
            caveats.append(base.caveat)
        info = ModelInfo(name=ck.meta.get("name", Path(ck.path).name), untrained=bool(ck.meta.get("untrained")),
                         caveats=caveats, threshold=float(ck.meta.get("threshold", 0.5)), task=ck.meta.get("task"),
                         source=ck.path)
    return RespLLM(encoder, aligner, model_llm, head, tokenizer, hp, info)


def load_model(checkpoint: str | os.PathLike | None = None, llm: str | os.PathLike | None = None, *,
               merge_lora: bool = False, dtype: torch.dtype | None = None, d_ff: int | None = None,
               llm_lora_alpha: float | None = None, enc_lora_alpha: float | None = None) -> RespLLM:
    """Load a RespLLM: an official/compact checkpoint + base LLM, or the built-in model when none is given."""
    if checkpoint is None:
        from .builtin import builtin_checkpoint

        ck = builtin_checkpoint()
    else:
        ck = open_checkpoint(checkpoint, d_ff=d_ff, llm_lora_alpha=llm_lora_alpha, enc_lora_alpha=enc_lora_alpha)
    return assemble(ck, llm, merge_lora=merge_lora, dtype=dtype)
