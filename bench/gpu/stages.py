"""Per-stage latency of one screening window with RespLLM's real LLM shape on one device.

Stages: front end (file -> spectrogram, CPU), OPERA-CT encoder fp32 / fp16, projector (768 -> d_llm), the
prompt + DMS prefix (once per session), the LLM step over the 64 audio tokens on the cached prefix (the runtime's
path) and without reuse (prefix recomputed every window), the head; then whole windows on the device (encoder fp16
-> projector -> LLM on the cached prefix -> head) at batch 1, 4 and 16, the windows of a batch sharing one prefix
(its cache repeated over the batch). Timings: bench/latency.timed (synchronised), percentiles over the repetitions
after warm-up.
"""
from __future__ import annotations

import copy
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from respi_edge.bench import latency
from respi_edge.runtime import contract
from respi_edge.runtime.model import FlattenHead

from . import kv, roofline, synthetic_llm

PREFIX, AUDIO = latency.PROMPT_TOKENS + latency.DMS_TOKENS, latency.AUDIO_TOKENS
BATCHES = (1, 4, 16)


@dataclass
class Iters:
    reps: int = 50  # per batch-1 stage (the issue asks >= 50 windows)
    warmup: int = 10
    batch_reps: int = 20  # per batch-4/16 stage
    max_stage_s: float = 8.0  # a stage slower than this per `reps` gets fewer repetitions (recorded in n)


def sync_of(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def time_stage(fn: Callable[[], object], reps: int, warmup: int, device: str, max_s: float) -> dict:
    """latency.timed + percentiles; a stage slower than max_s / reps gets fewer repetitions (at least 5)."""
    sync = sync_of(device)
    for _ in range(warmup):
        fn()
    sync()
    t = time.perf_counter()
    fn()
    sync()
    one = time.perf_counter() - t
    n = min(reps, max(5, int(max_s / max(one, 1e-6))))
    return latency.percentiles(latency.timed(fn, n, 0, sync))


def encoder_modules(device: str):
    """The built-in OPERA-CT (its documented deterministic initialisation: the real encoder's shape) in fp32
    and, on CUDA, an fp16 copy."""
    from respi_edge.runtime.builtin import encoder_init, synthetic_encoder_state
    from respi_edge.runtime.encoder import load_encoder

    enc32 = load_encoder(synthetic_encoder_state(encoder_init())).to(device).eval()
    enc16 = copy.deepcopy(enc32).half() if device == "cuda" else None
    return enc32, enc16


def run_encoder(enc: nn.Module, spec: torch.Tensor) -> torch.Tensor:
    """runtime.encoder.encode's tokens, in the encoder's own dtype (encode casts the input to fp32)."""
    dtype = next(enc.parameters()).dtype
    out = enc(input_features=spec[:, None].to(dtype))
    return out.last_hidden_state.flatten(2).transpose(1, 2)


def head_logits(head: FlattenHead, hidden: torch.Tensor) -> torch.Tensor:
    """RespLLM's head step (runtime.model's, restated: its name is changing in the refactor under way): last 64
    positions, first d_ff features, feature-major flatten, Linear."""
    h = hidden[:, -AUDIO:, : contract.D_FF].permute(0, 2, 1)
    return head(h.to(head.linear.weight.dtype)).float()


def weight_bytes(llm: nn.Module) -> int:
    """latency.llm_weight_bytes plus the quantization statistics a 4/8-bit forward reads too (NF4 absmax in fp32
    per 64-weight block: +1/8 of the packed bytes; LLM.int8 row scales), which it leaves out."""
    total = latency.llm_weight_bytes(llm)
    for m in llm.modules():
        w = getattr(m, "weight", None)
        qs = getattr(w, "quant_state", None)
        for t in (getattr(qs, "absmax", None), getattr(getattr(qs, "state2", None), "absmax", None),
                  getattr(w, "SCB", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def flops_of(fn: Callable[[], object]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def shared_stages(device: str, hidden: int, audio_file: str, it: Iters, say) -> tuple[dict, dict]:
    """Front end, encoder fp32/fp16, projector, head: the stages that do not depend on the LLM's bits."""
    from respi_edge.runtime import audio as audio_fe

    say("stages: front end, encoder, projector, head")
    enc32, enc16 = encoder_modules(device)
    spec = torch.from_numpy(audio_fe.spectrogram(audio_file))[None].to(device)
    cdtype = torch.float16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    proj = nn.Linear(768, hidden).to(device, cdtype).eval()
    head = FlattenHead(contract.D_FF * AUDIO, contract.N_CLS).to(device).eval()
    hid = torch.randn(1, AUDIO, hidden, device=device, dtype=cdtype)
    out: dict = {}
    with torch.inference_mode():
        tok32 = run_encoder(enc32, spec)
        stages = {
            "front end (file -> spectrogram, CPU)": (lambda: audio_fe.spectrogram(audio_file), "cpu"),
            "encoder fp32": (lambda: run_encoder(enc32, spec), device),
            "projector": (lambda: proj(tok32.to(cdtype)), device),
            "head": (lambda: head_logits(head, hid), device),
        }
        if enc16 is not None:
            stages["encoder fp16"] = (lambda: run_encoder(enc16, spec), device)
            out["encoder_fp16_vs_fp32_tokens_max_abs"] = float((run_encoder(enc16, spec).float() - tok32).abs().max())
        for name, (fn, dev) in stages.items():
            out[name] = time_stage(fn, it.reps, it.warmup, dev, it.max_stage_s)
        enc_params = sum(p.numel() for p in enc32.parameters())
        work = {
            "encoder fp32": {"bytes": enc_params * 4, "flops": flops_of(lambda: run_encoder(enc32, spec))},
            "projector": {"bytes": proj.weight.numel() * proj.weight.element_size(),
                          "flops": 2.0 * 768 * hidden * AUDIO},
        }
        work["encoder fp16"] = {**work["encoder fp32"], "bytes": enc_params * 2}
    mods = {"enc": enc16 if enc16 is not None else enc32, "proj": proj, "head": head, "spec": spec,
            "cdtype": cdtype}
    return out, {"work": work, "mods": mods}


def llm_variant(shape, variant: str, device: str, it: Iters, shared: dict, measured: dict, say,
                batches=BATCHES) -> dict:
    """Build one variant, time its LLM stages and whole windows at each batch, with floors and memory."""
    hidden = shape[0]
    mods = shared["mods"]
    cdtype = mods["cdtype"] if variant != "bf16" or device != "cuda" else torch.bfloat16
    if device == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    say(f"LLM {variant}: building deterministic random weights on {device}")
    t0 = time.perf_counter()
    llm = synthetic_llm.build(shape, variant, device)
    sync_of(device)()
    build_s = time.perf_counter() - t0
    g = torch.Generator(device="cpu").manual_seed(1)
    prefix = (torch.randn(1, PREFIX, hidden, generator=g) * 0.02).to(device, cdtype)
    audio = {b: (torch.randn(b, AUDIO, hidden, generator=g) * 0.02).to(device, cdtype) for b in batches}
    full = torch.cat([prefix, audio[1]], 1)
    row: dict = {"variant": variant, "bits": synthetic_llm.variant_bits(variant),
                 "compute_dtype": str(cdtype).replace("torch.", ""), "build_s": build_s}
    stages: dict = {}
    with torch.inference_mode():
        t1 = time.perf_counter()
        kw = kv.cache_kw(llm)
        cache1 = kv.prefix_cache(llm, prefix, 1)
        kv.step(llm, audio[1], cache1, PREFIX, kw)
        sync_of(device)()
        row["first_window_s"] = time.perf_counter() - t1
        row["cold_start_s"] = build_s + row["first_window_s"]
        caches = {b: (cache1 if b == 1 else kv.prefix_cache(llm, prefix, b)) for b in batches}

        def step(b):
            return lambda: kv.step(llm, audio[b], caches[b], PREFIX, kw)

        enc, proj, head, spec = mods["enc"], mods["proj"], mods["head"], mods["spec"]
        specs = {b: spec.expand(b, -1, -1).contiguous() for b in batches}

        def window(b):
            def fn():
                emb = proj(run_encoder(enc, specs[b]).to(proj.weight.dtype)).to(cdtype)
                return head_logits(head, kv.step(llm, emb, caches[b], PREFIX, kw))
            return fn

        say(f"LLM {variant}: timing")
        stages[f"prefix, once per session ({PREFIX} tok)"] = time_stage(
            lambda: llm(inputs_embeds=prefix, use_cache=True), max(5, it.reps // 5), 2, device, it.max_stage_s / 2)
        for b in batches:
            reps = it.reps if b == 1 else it.batch_reps
            stages[f"LLM step, prefix reuse, batch {b} ({AUDIO * b} tok)"] = time_stage(
                step(b), reps, it.warmup, device, it.max_stage_s)
        stages[f"LLM, no reuse, batch 1 ({PREFIX + AUDIO} tok)"] = time_stage(
            lambda: llm(inputs_embeds=full, use_cache=False), it.reps, it.warmup, device, it.max_stage_s)
        for b in batches:
            reps = it.reps if b == 1 else it.batch_reps
            stages[f"window on device, batch {b}"] = time_stage(window(b), reps, it.warmup, device,
                                                                 it.max_stage_s)
    wb = weight_bytes(llm)
    row["weight_bytes"] = wb
    row["embedding_bytes"] = sum(p.numel() * p.element_size() for n, p in llm.named_parameters()
                                 if "embed_tokens" in n)
    row["stages"] = stages
    tokens = {k: int(k.rsplit("(", 1)[1].split()[0]) for k in stages if "tok)" in k}
    row["floors"] = {}
    for k, n in tokens.items():
        f = roofline.floor(wb, latency.llm_flops(llm, n), measured["bandwidth_gbs"], measured["matmul_tflops"])
        f["flops"] = latency.llm_flops(llm, n)
        f["ratio_p50_to_floor"] = stages[k]["p50"] / f["floor_ms"]
        row["floors"][k] = f
    row["throughput_windows_per_s"] = {
        str(b): {"llm_step": b / stages[f"LLM step, prefix reuse, batch {b} ({AUDIO * b} tok)"]["p50"] * 1e3,
                 "window_on_device": b / stages[f"window on device, batch {b}"]["p50"] * 1e3} for b in batches}
    if device == "cuda":
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        row["peak_rss_mb_process"] = latency.peak_rss_mb()
    del llm, caches, cache1
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def window_work(row: dict, shared_work: dict) -> dict:
    """Bytes and FLOPs of one window's device stages for the projection (encoder fp16, projector, LLM step)."""
    k1 = f"LLM step, prefix reuse, batch 1 ({AUDIO} tok)"
    return {"encoder fp16": shared_work["encoder fp16"], "projector": shared_work["projector"],
            "LLM step, prefix reuse": {"bytes": row["weight_bytes"], "flops": row["floors"][k1]["flops"]}}


def p50s(row: dict, shared_stages_out: dict) -> dict:
    enc = shared_stages_out.get("encoder fp16") or shared_stages_out["encoder fp32"]
    return {"encoder fp16": enc["p50"], "projector": shared_stages_out["projector"]["p50"],
            "LLM step, prefix reuse": row["stages"][f"LLM step, prefix reuse, batch 1 ({AUDIO} tok)"]["p50"]}
