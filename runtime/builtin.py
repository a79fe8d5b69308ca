"""The built-in model every command uses when no checkpoint is given.

If the trained demo model ships (`configs/demo/model.safetensors`, the compact form: aligner, head, LoRA),
it is used; otherwise an UNTRAINED OPERA-CT + SmolLM2 model, labelled untrained wherever it prints a
probability. Either way the OPERA-CT encoder is the deterministic synthetic initialisation of
`synthetic_weights.py` under a fixed namespace, checked by hash so a changed numpy cannot silently change it.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import json
from collections.abc import Mapping

import numpy as np
import torch

from . import checkpoint as ckpt
from . import contract
from .checkpoint import Checkpoint, infer_hparams, read_state
from .errors import CheckpointError
from .llm import BUILTIN_LLM

ENCODER_NAMESPACE = "respi-edge/opera-ct-init-v1"
UNTRAINED_NAMESPACE = "respi-edge/untrained-v1"
DEMO_FILE = "model.safetensors"
DEMO_TASK = "sprsound_normal_vs_adventitious"
UNTRAINED_CAVEAT = "UNTRAINED built-in model: its probabilities are meaningless (for plumbing checks only)"


def state_sha256(state: Mapping[str, np.ndarray | torch.Tensor]) -> str:
    """One hash over every tensor (sorted keys, name + C-order bytes)."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k]
        a = v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        h.update(k.encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def synthetic_encoder_state(init: Mapping) -> dict[str, torch.Tensor]:
    """Materialise the deterministic OPERA-CT weights named by `init` and verify their hash."""
    from .synthetic_weights import materialize, opera_ct_entries

    if init.get("scheme") != "synthetic":
        raise CheckpointError(f"unknown encoder initialisation scheme {init.get('scheme')!r}")
    arrays = materialize(opera_ct_entries(), init["namespace"])
    want = init.get("sha256")
    if want:
        got = state_sha256(arrays)
        if got != want:
            raise CheckpointError(
                f"the deterministic encoder initialisation ({init['namespace']}) hashes to {got[:12]}…, "
                f"expected {want[:12]}…: numpy or the key list changed, so the encoder is not the one the "
                f"model was trained with. Reinstall respi-edge with its pinned dependencies.")
    return {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}


def _configs():
    return importlib.resources.files("respi_edge.configs")


def encoder_init() -> dict:
    return json.loads((_configs() / "encoder_init.json").read_text())


def demo_available() -> bool:
    return (_configs() / "demo" / DEMO_FILE).is_file()


def builtin_checkpoint() -> Checkpoint:
    if demo_available():
        path = _configs() / "demo" / DEMO_FILE
        with importlib.resources.as_file(path) as p:
            sd, epoch, meta = read_state(p)
            meta.setdefault("encoder_init", encoder_init())
            meta.setdefault("base_llm", BUILTIN_LLM)
            meta.setdefault("name", "respi-edge demo (SPRSound)")
            return Checkpoint(path=str(p), state=sd, hparams=infer_hparams(sd), epoch=epoch, meta=meta)
    return untrained_checkpoint()


def untrained_checkpoint(d_llm: int = 576) -> Checkpoint:
    """Aligner and head from the synthetic scheme; no LoRA; LLM weights come from the base SmolLM2."""
    from .synthetic_weights import tensor

    n = contract.D_FF * contract.N_AUDIO_TOKENS
    parts = {
        ckpt.ALIGNER_W: ((d_llm, 768), "linear_w"), ckpt.ALIGNER_B: ((d_llm,), "bias"),
        ckpt.HEAD_W: ((2, n), "linear_w"), ckpt.HEAD_B: ((2,), "bias"),
    }
    sd = {k: torch.from_numpy(tensor(k, s, kind, UNTRAINED_NAMESPACE)) for k, (s, kind) in parts.items()}
    meta = {"name": "respi-edge built-in (untrained)", "untrained": True, "base_llm": BUILTIN_LLM,
            "task": DEMO_TASK,
            "encoder_init": encoder_init(), "caveats": [UNTRAINED_CAVEAT]}
    return Checkpoint(path="<built-in untrained>", state=sd, hparams=infer_hparams(sd), meta=meta)
