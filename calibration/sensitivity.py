"""Per-layer sensitivity of the LLM quantization on a calibration set, and a drift-budgeted precision plan.

Each decoder layer's Linear weights are quantized alone and the mean |ΔP(class 1)| against the full-precision
model on the calibration recordings measures how much that layer moves the screening output. The meter computes
what the bundle computes: 4-bit layers multiply with bitsandbytes' quantize → dequantize weights (exactly what
the 4-bit kernel uses), 8-bit layers are the bundle's own LLM.int8 modules (int8 activations as well: weight-only
simulation under-estimated the 8-bit drift 4× on the demo), and the token-embedding table, quantized in a bundle
too, is one more entry of the plan (key -1). The plan starts from everything at 4 bits and keeps the most
sensitive entries at 8 bits until the drift is within the budget (then 16 bits if 8 is not enough): a budget on
the task metric, which no generic quantizer offers.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
EMBEDDING = -1  # plan key of the token-embedding table


def layer_of(key: str) -> int | None:
    m = LAYER.search(key)
    return int(m.group(1)) if m else None


def plan_key(key: str) -> int | None:
    """Which plan entry decides a tensor's precision: its decoder layer, EMBEDDING, or None (kept as is)."""
    return EMBEDDING if key.endswith("embed_tokens.weight") else layer_of(key)


def _entry(k: int) -> str:
    return "embeddings" if k == EMBEDDING else f"layer {k:2d}"


def fake_quant(w: torch.Tensor, bits: int, quant: str = "nf4") -> torch.Tensor:
    """The weights a bundle's 4/8/16-bit layer effectively multiplies with (16: fp16; above: unchanged)."""
    import bitsandbytes.functional as F

    if bits > 16:
        return w
    if bits == 16:
        return w.to(torch.float16).to(w.dtype)
    if bits == 8:
        from respi_edge.runtime.backends.bnb_llm import quantize_int8

        cb, scb = quantize_int8(w)
        return (cb.float() * (scb.float()[:, None] / 127.0)).to(w.dtype)
    q, qs = F.quantize_4bit(w.float().contiguous(), blocksize=64, quant_type=quant)
    return F.dequantize_4bit(q, qs).to(w.dtype)


@dataclass
class CalibrationSet:
    specs: list[np.ndarray]
    dms: list[str]


CALIBRATION_SIZE = 24  # recordings the drift budget is planned on by default (~0.6 s each per planner step, 2 cores)


def calibration_set(manifest: str, limit: int = CALIBRATION_SIZE) -> CalibrationSet:
    """`limit` recordings spread evenly over the manifest (all of them when it holds fewer)."""
    from respi_edge.runtime import audio
    from respi_edge.runtime.dms import dms_from_row
    from respi_edge.runtime.manifest import read_manifest

    rows = read_manifest(manifest, require_both_classes=False).rows
    step = max(1, len(rows) // limit)
    rows = rows[::step][:limit]
    return CalibrationSet([audio.spectrogram(r.path) for r in rows], [dms_from_row(r.dms) for r in rows])


class DriftMeter:
    """P(class 1) of a merged torch model on a calibration set, with the audio embeddings computed once.

    Rows sharing a DMS text share one prefix and are scored in batches of `api.BATCH_SIZE` (`score_batch`: each
    row equals its batch-1 score within 1e-5); rows of different DMS are never batched together (§5.4)."""

    def __init__(self, model, prompt: str, cal: CalibrationSet):
        from respi_edge.runtime.api import BATCH_SIZE

        self.model = model
        self.prompt_ids = model.tokenize(prompt)
        self.batch_size = BATCH_SIZE
        self.emb = torch.cat([model.embed_audio(torch.from_numpy(np.stack(cal.specs[i:i + BATCH_SIZE])))
                              for i in range(0, len(cal.specs), BATCH_SIZE)]) if cal.specs else None
        self.groups: dict[str, list[int]] = {}  # DMS text -> its rows, in manifest order
        for i, d in enumerate(cal.dms):
            self.groups.setdefault(d, []).append(i)
        self.dms_ids = {d: model.tokenize(d) for d in self.groups}
        self.n = len(cal.specs)
        self.linears = {n: m for n, m in model.llm.named_modules() if isinstance(m, torch.nn.Linear)}
        self.original = {n: m.weight.detach().clone() for n, m in self.linears.items()}
        # a layer's other tensors (its norms): a 16-bit entry stores them in fp16 too (export/llm_writer.py)
        linear_weights = {f"{n}.weight" for n in self.linears}
        self.others = {n: p for n, p in model.llm.named_parameters()
                       if layer_of(n) is not None and n not in linear_weights}
        self.others_original = {n: p.detach().clone() for n, p in self.others.items()}
        self.int8: dict[str, torch.nn.Module] = {}  # the bundle's 8-bit modules, built on first use
        self.embedding = model.llm.get_input_embeddings()
        self.embedding_name = next(n for n, m in model.llm.named_modules() if m is self.embedding)
        self.embedding_original = self.embedding.weight.detach().clone()
        self.reference = self.probs()

    @torch.inference_mode()
    def probs(self) -> np.ndarray:
        """P(class 1) of every row under the model's current state: one prefix per DMS, its rows in batches."""
        out = np.zeros(self.n)
        for d, rows in self.groups.items():
            pre = self.model.prefix(self.prompt_ids, self.dms_ids[d])
            for i in range(0, len(rows), self.batch_size):
                idx = rows[i:i + self.batch_size]
                logits = self.model.score_batch(pre, self.emb[idx])
                out[idx] = torch.softmax(logits.float(), -1)[:, 1].double().cpu().numpy()
        return out

    def _int8(self, name: str, w: torch.Tensor, make) -> torch.nn.Module:
        """The bundle's own 8-bit module for a tensor, from the exporter's bytes (built once)."""
        if name not in self.int8:
            from respi_edge.runtime.backends.bnb_llm import quantize_int8

            self.int8[name] = make(*quantize_int8(w))
        return self.int8[name]

    def apply(self, plan: dict[int, int], quant: str) -> None:
        """Put the model in the state a bundle with this plan computes in (entries absent: full precision).

        16 means what the bundle stores for a 16-bit entry, fp16 (norms included), not the fp32 original: the
        meter must be bit-exact, since LLM.int8's activation rounding amplifies any last-bit difference."""
        from respi_edge.runtime.backends.bnb_llm import Int8Embedding, int8_linear, set_module

        for n, m in self.linears.items():
            layer = layer_of(n)
            bits = plan.get(layer) if layer is not None else None
            w = self.original[n]
            if bits == 8:
                set_module(self.model.llm, n, self._int8(n, w, int8_linear))
                continue
            m.weight.data = fake_quant(w, bits, quant) if bits is not None else w.clone()
            set_module(self.model.llm, n, m)
        for n, p in self.others.items():  # kept float32 under 4/8 bits, fp16 under 16 (export/quantize.py)
            o = self.others_original[n]
            p.data = fake_quant(o, 16) if plan.get(layer_of(n)) == 16 else o.clone()
        bits = plan.get(EMBEDDING)
        e = self.embedding_original
        if bits == 8:
            emb = self._int8(self.embedding_name, e, lambda cb, scb: Int8Embedding(cb, scb, e.dtype))
        else:
            emb = self.embedding
            emb.weight.data = fake_quant(e, bits, quant) if bits is not None else e.clone()
        set_module(self.model.llm, self.embedding_name, emb)

    def errors(self, plan: dict[int, int], quant: str) -> np.ndarray:
        """|ΔP| of each calibration recording under this plan."""
        self.apply(plan, quant)
        return np.abs(self.probs() - self.reference)

    def drift(self, plan: dict[int, int], quant: str) -> float:
        return float(np.mean(self.errors(plan, quant)))


def precision_plan(meter: DriftMeter, n_layers: int, max_drift: float, quant: str = "nf4",
                   say: Callable[[str], None] = print, embeddings: bool = False) -> dict:
    """Greedy: promote entries by sensitivity (8 bits, then 16) until the calibration drift is within budget.

    `embeddings`: the bundle quantizes the embedding table, so it is an entry of the plan (EMBEDDING)."""
    keys = list(range(n_layers)) + ([EMBEDDING] if embeddings else [])
    err = np.zeros(0)

    def measure(p: dict[int, int]) -> float:  # keeps the last plan's per-recording errors for its standard error
        nonlocal err
        err = meter.errors(p, quant)
        return float(np.mean(err))

    sens = {}
    for i in keys:
        sens[i] = meter.drift({i: 4}, quant)
        say(f"{_entry(i)}: mean |Δp| {sens[i]:.4f} when it alone is 4-bit")
    plan = {i: 4 for i in keys}
    steps = [{"plan": dict(plan), "drift": measure(plan)}]
    order = sorted(sens, key=sens.get, reverse=True)
    for target in (8, 16):
        for i in order:
            if steps[-1]["drift"] <= max_drift:
                break
            if plan[i] < target:
                plan[i] = target
                steps.append({"plan": dict(plan), "drift": measure(plan), "promoted": i, "to": target})
                say(f"{_entry(i)} -> {target}-bit: drift {steps[-1]['drift']:.4f}")
    meter.apply({}, quant)  # leave the model as it was
    # how precisely the calibration recordings measured the plan's drift: a small set gives a loose estimate
    se = float(np.std(err, ddof=1) / np.sqrt(len(err))) if len(err) > 1 else float("nan")
    say(f"calibration drift {steps[-1]['drift']:.4f} (standard error {se:.4f}, {len(err)} recordings)")
    return {"sensitivity": sens, "plan": plan, "steps": steps, "drift": steps[-1]["drift"], "drift_se": se,
            "n_recordings": int(len(err)), "max_drift": max_drift, "within_budget": steps[-1]["drift"] <= max_drift}
