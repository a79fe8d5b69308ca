"""The reference-exact RespLLM forward in torch (REFERENCE.md §3.2), batch-1 semantics per window.

    spec (B,256,64) ─► OPERA-CT tokens (B,64,768) ─► aligner ─► audio embeddings (B,64,d_llm)
    [prompt ids][DMS ids] ─► embeddings ─┐
                                         ├─► LLM (no mask, causal) ─► last 64 hidden[:, :, :d_ff] ─► head ─► logits
    audio embeddings ────────────────────┘

The prompt and DMS come before the audio, so their keys/values can be computed once (`prefix`) and reused
for every window (`score`); `forward` is the plain full pass the reference does.
"""
from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from . import contract
from .checkpoint import HParams
from .errors import CheckpointError, ModelError
from .info import ModelInfo  # noqa: F401  (re-exported)
from .kv_cache import output_cache, with_cache
from .lora import LoraPair

log = logging.getLogger(__name__)


@dataclass
class PrefixState:
    """Keys/values of [prompt][DMS] for one session; `length` tokens, reused by every window."""

    length: int
    cache: object | None  # transformers Cache, None for an empty prefix
    embeds: torch.Tensor  # (1, length, d_llm), kept for the full-forward path and checks
    tiled: dict = field(default_factory=dict, repr=False)  # batch size -> a copy of `cache` repeated over the batch

    def batched(self, b: int):
        """The prefix cache for a batch of `b` windows: batch 1 is `cache` itself; larger batches get a copy
        repeated over the batch (built once per size, rewound after every use like `cache`)."""
        if b == 1:
            return self.cache
        if b not in self.tiled:
            c = copy.deepcopy(self.cache)
            c.batch_repeat_interleave(b)
            self.tiled[b] = c
        return self.tiled[b]


class FlattenHead(nn.Module):
    """RespLLM's head: flatten (B, d_ff, 64) feature-major, then Linear (dropout is inactive at inference)."""

    def __init__(self, nf: int, n_cls: int):
        super().__init__()
        self.linear = nn.Linear(nf, n_cls)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h.flatten(1))


class PrefixScorer:
    """Text, prefix reuse, LLM and head: the part RespLLM shares with the torch bundle backend.

    Needs `llm` (a transformers base model), `head` (FlattenHead), `tokenizer`, `hparams`, `device` and
    `embed_audio`. Prefix reuse passes a transformers `DynamicCache` as `cache=` (transformers 5.25+; the
    `past_key_values` name is deprecated and removed in 5.40)."""

    # -- text ------------------------------------------------------------------------------------
    def tokenize(self, text: str) -> torch.Tensor:
        """One text part as the reference tokenises it (§5.4): default special tokens, truncation at 2048.

        Built as an int64 tensor explicitly, so an empty DMS is a (1, 0) LongTensor for every tokenizer
        (the reference crashes where a tokenizer returns an empty float tensor)."""
        ids = self.tokenizer(text, truncation=True, max_length=contract.TOKENIZER_MAX_LENGTH)["input_ids"]
        return torch.tensor([list(ids)], dtype=torch.long)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(ids.to(self.device))

    # -- LLM + head ------------------------------------------------------------------------------
    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The head on LLM hidden states (B, T, d_llm): last 64 positions, first d_ff features -> logits (B, n_cls)."""
        hp = self.hparams
        h = hidden[:, -hp.patch_nums:, : hp.d_ff].permute(0, 2, 1)  # (B, d_ff, 64), index f*64 + t
        return self.head(h.to(self.head.linear.weight.dtype)).float()

    @torch.inference_mode()
    def forward(self, spec: torch.Tensor, prompt_ids: torch.Tensor, dms_ids: torch.Tensor) -> torch.Tensor:
        """The reference forward for one sample (or B samples sharing prompt and DMS): logits (B, n_cls)."""
        audio = self.embed_audio(spec)
        return self.forward_embeds(audio, prompt_ids, dms_ids)

    @torch.inference_mode()
    def forward_embeds(self, audio: torch.Tensor, prompt_ids: torch.Tensor, dms_ids: torch.Tensor) -> torch.Tensor:
        """The full pass (no prefix cache) on precomputed audio embeddings (B, 64, d_llm)."""
        b = audio.shape[0]
        text = torch.cat([self.embed_tokens(prompt_ids), self.embed_tokens(dms_ids)], dim=1)
        x = torch.cat([text.expand(b, -1, -1).to(audio.dtype), audio], dim=1)
        out = self.llm(inputs_embeds=x, use_cache=False)
        return self.head_logits(out.last_hidden_state)

    @torch.inference_mode()
    def prefix(self, prompt_ids: torch.Tensor, dms_ids: torch.Tensor) -> PrefixState:
        """Run [prompt][DMS] once and keep its keys/values."""
        emb = torch.cat([self.embed_tokens(prompt_ids), self.embed_tokens(dms_ids)], dim=1)
        if emb.shape[1] == 0:
            return PrefixState(0, None, emb)
        out = self.llm(inputs_embeds=emb, use_cache=True)
        return PrefixState(emb.shape[1], output_cache(out), emb)

    @torch.inference_mode()
    def score(self, prefix: PrefixState, audio_emb: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_cls) of audio embeddings (B, 64, d_llm) on top of a cached prefix (B = 1: one window)."""
        return self.score_batch(prefix, audio_emb)

    @torch.inference_mode()
    def score_batch(self, prefix: PrefixState, audio_emb: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_cls) of B windows sharing one prefix, in one LLM pass: the prefix keys/values repeated over
        the batch. Every window still attends to [prompt][DMS][its own audio] only (no padding, no mask), so each
        row equals that window scored alone (REFERENCE.md §5.4: only different DMS must never share a batch)."""
        if prefix.cache is None:
            out = self.llm(inputs_embeds=audio_emb, use_cache=False)
            return self.head_logits(out.last_hidden_state)
        cache = prefix.batched(audio_emb.shape[0])
        try:
            out = self.llm(inputs_embeds=audio_emb.to(prefix.embeds.dtype), use_cache=True, **with_cache(cache))
        finally:
            rewind(cache, prefix.length)  # the cache grows in place: cut it back for the next window
        return self.head_logits(out.last_hidden_state)

    @torch.inference_mode()
    def logits(self, spec: torch.Tensor, prompt: str, dms: str) -> torch.Tensor:
        return self.forward(spec, self.tokenize(prompt), self.tokenize(dms))


class RespLLM(PrefixScorer, nn.Module):
    def __init__(self, encoder: nn.Module, aligner: nn.Linear, llm: nn.Module, head: FlattenHead,
                 tokenizer, hparams: HParams, info: ModelInfo):
        super().__init__()
        self.encoder, self.aligner, self.llm, self.head = encoder, aligner, llm, head
        self.tokenizer = tokenizer
        self.hparams = hparams
        self.info = info
        self.eval()

    @property
    def device(self) -> str:
        return self.head.linear.weight.device.type

    # -- audio -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def audio_tokens(self, spec: torch.Tensor) -> torch.Tensor:
        """OPERA-CT `forward_window`: (B, 256, 64) -> (B, 64, 768)."""
        from .encoder import encode

        return encode(self.encoder, spec)[0]

    @torch.inference_mode()
    def embed_audio(self, spec: torch.Tensor) -> torch.Tensor:
        """Encoder + projector: (B, 256, 64) spectrogram -> (B, 64, d_llm) audio embeddings."""
        spec = torch.as_tensor(spec, dtype=torch.float32)
        if spec.dim() == 2:
            spec = spec[None]
        return self.aligner(self.audio_tokens(spec).to(self.aligner.weight.dtype))


def rewind(cache, length: int) -> None:
    """Cut every layer of a transformers DynamicCache back to `length` tokens (layer by layer, so a forward
    that failed half-way through the layers is undone too). A cache without per-layer `keys` / `crop` is an
    untested transformers cache API: fail loudly rather than reuse a grown cache silently."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise ModelError(f"{type(cache).__name__} has no .layers: this transformers version changed the cache "
                         f"API respi-edge is tested with (pyproject.toml pins it); install the pinned version")
    for layer in layers:
        keys = getattr(layer, "keys", None)
        if keys is not None and keys.shape[-2] > length:
            layer.crop(length - keys.shape[-2])


# -- assembly ------------------------------------------------------------------------------------

def build_llm(config, base_state: Mapping[str, torch.Tensor], loras: Mapping[str, LoraPair], hp: HParams,
              *, merge: bool, dtype: torch.dtype | None = None) -> nn.Module:
    """A transformers base model (no LM head) holding `base_state`; LoRA merged or applied with peft.

    Parameters are created empty (meta) and then assigned from the (mmapped) tensors, so no random
    initialisation and no second copy of a large checkpoint is made."""
    from accelerate import init_empty_weights
    from transformers import AutoModel

    from .lora import merge as merge_lora

    state = merge_lora(base_state, loras, hp.llm_lora_alpha) if (merge and loras) else dict(base_state)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    with init_empty_weights(include_buffers=False):
        llm = AutoModel.from_config(config, dtype=dtype or torch.float32)
    expected = set(llm.state_dict().keys())
    missing, unexpected = expected - state.keys(), state.keys() - expected
    if missing or unexpected:
        raise CheckpointError(
            "the checkpoint's LLM weights do not fit the base LLM config "
            f"(missing {sorted(missing)[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {sorted(unexpected)[:3]}{'...' if len(unexpected) > 3 else ''}); "
            "pass --llm with the base model the checkpoint was trained on")
    for k, v in state.items():
        ref = llm.get_parameter(k) if k in dict(llm.named_parameters()) else None
        if ref is not None and tuple(ref.shape) != tuple(v.shape):
            raise CheckpointError(f"LLM tensor {k}: checkpoint shape {tuple(v.shape)} != base LLM "
                                  f"{tuple(ref.shape)}; pass --llm with the matching base model")
    llm.load_state_dict(state, strict=True, assign=True)
    if loras and not merge:
        llm = apply_lora(llm, loras, hp)
    return llm.eval()


def apply_lora(llm: nn.Module, loras: Mapping[str, LoraPair], hp: HParams) -> nn.Module:
    """Wrap the LLM with peft LoRA layers (the reference's own computation) holding the stored A/B."""
    from peft import LoraConfig, get_peft_model

    targets = sorted({m.rsplit(".", 1)[-1] for m in loras})
    cfg = LoraConfig(r=hp.llm_lora_r, lora_alpha=hp.llm_lora_alpha, lora_dropout=contract.LLM_LORA_DROPOUT,
                     target_modules=targets)
    with warnings.catch_warnings():  # peft probes transformers' deprecated `is_gradient_checkpointing`: upstream's
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(llm, cfg)
    wrapped = {n for n, m in peft_model.base_model.model.named_modules() if hasattr(m, "lora_A")}
    if wrapped != set(loras):
        raise CheckpointError(f"LoRA targets differ from the checkpoint's: {sorted(wrapped ^ set(loras))[:4]}")
    for name, pair in loras.items():
        mod = peft_model.base_model.model.get_submodule(name)
        mod.lora_A["default"].weight = nn.Parameter(pair.a.to(mod.base_layer.weight.dtype), requires_grad=False)
        mod.lora_B["default"].weight = nn.Parameter(pair.b.to(mod.base_layer.weight.dtype), requires_grad=False)
    return peft_model.eval()
