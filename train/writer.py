"""Checkpoint writers: the compact form we ship (trained tensors only) and the official RespLLM format (§4)."""
from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from respi_edge.runtime.builtin import encoder_init, synthetic_encoder_state
from respi_edge.runtime.checkpoint import COMPACT_META_KEY
from respi_edge.runtime.model import RespLLM

from .encoder_stages import opera_state
from .trainer import trained_state

COMPACT_FORMAT = "respi-edge-compact/1"


def write_compact(model: RespLLM, path: str | os.PathLike, meta: dict,
                  encoder_prefixes: list[str] | None = None) -> None:
    """Trained tensors (aligner, head, LoRA A/B, and the fine-tuned encoder stages in fp16) with official names
    + JSON metadata, atomically. Encoder tensors not fine-tuned stay the hash-checked initialisation."""
    state = {k: v.detach().contiguous().clone() for k, v in trained_state(model).items()}
    if encoder_prefixes:
        tuned = opera_state(model.encoder, synthetic_encoder_state(encoder_init()), encoder_prefixes)
        state.update({f"audio_encoder.{k}": v.detach().to(torch.float16).contiguous() for k, v in tuned.items()})
    info = {"format": COMPACT_FORMAT, "encoder_init": encoder_init(), **meta}
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    save_file(state, str(tmp), metadata={COMPACT_META_KEY: json.dumps(info)})
    os.replace(tmp, p)


def official_state(model: RespLLM) -> collections.OrderedDict:
    """The whole model's state dict as the reference's `RespLLM.state_dict()` (llm, encoder, aligner, head)."""
    sd = collections.OrderedDict()
    for k, v in model.llm.state_dict().items():
        sd[f"llm_model.{k}"] = v
    init = synthetic_encoder_state(encoder_init())
    init.update(opera_state(model.encoder, init, [""]))  # the model's own encoder, tuned stages included
    for k, v in init.items():
        sd[f"audio_encoder.{k}"] = v
    for k, v in model.aligner.state_dict().items():
        sd[f"aligner.{k}"] = v
    for k, v in model.head.state_dict().items():
        sd[f"output_projection.{k}"] = v
    return sd


def write_official(model: RespLLM, path: str | os.PathLike, epoch: int) -> None:
    """`torch.save({"epoch", "model_state_dict"})` exactly as the reference's `train_RespLLM` writes it."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    torch.save({"epoch": epoch, "model_state_dict": official_state(model)}, tmp)
    os.replace(tmp, p)
