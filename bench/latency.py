"""`respi-edge bench latency`: per-stage latency of one screening window, llama-bench style.

Stages: front end (file → spectrogram), encoder (+ projector), LLM over the 64 audio tokens on a cached
prompt+DMS prefix (the runtime's path), LLM over the whole sequence (no prefix reuse), head; end to end =
front end + encoder + LLM with reuse. `--synthetic NAME` builds a random-weight LLM with a real model's layer
shapes (no download), so the trunk's latency on a GPU can be measured without the weights; the roofline floor
(weight bytes / memory bandwidth, FLOPs / peak) is printed beside it where the device is known.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

try:  # the torch-free edge install times ONNX bundles without torch
    import torch
except ImportError:  # pragma: no cover - exercised in the torch-free venv
    torch = None

SYNTHETIC = {  # real layer shapes: hidden, intermediate, layers, heads, kv heads, vocab, family
    "llama3-8b": (4096, 14336, 32, 32, 8, 128256, "llama"),
    "mistral-7b": (4096, 14336, 32, 32, 8, 32000, "mistral"),
    "phi-3.5": (3072, 8192, 32, 32, 32, 32064, "phi3"),
    "gemma2-2b": (2304, 9216, 26, 8, 4, 256000, "gemma2"),
    "smollm2-135m": (576, 1536, 30, 9, 3, 49152, "llama"),
}
DEVICES = {  # memory bandwidth GB/s, dense fp16/bf16 tensor TFLOP/s (vendor figures)
    "NVIDIA H100 80GB HBM3": (3350, 989), "NVIDIA H200": (4800, 989), "NVIDIA GeForce RTX 4090": (1008, 165),
    "NVIDIA GeForce RTX 3060": (360, 51), "Jetson AGX Orin": (204.8, 42), "Jetson Orin Nano": (68, 10),
}
PROMPT_TOKENS, DMS_TOKENS, AUDIO_TOKENS = 97, 17, 64  # the demo task's prompt, a typical SPRSound DMS


def percentiles(xs: list[float]) -> dict:
    a = np.array(xs) * 1000
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "n": len(a)}


def timed(fn: Callable[[], object], repeat: int, warmup: int, sync: Callable[[], None]) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_bandwidth_gbs() -> float:
    """Measured copy bandwidth of this machine (read + write of 256 MB), for the CPU roofline."""
    a = np.ones(1 << 25)
    b = np.empty_like(a)
    best = min(timed(lambda: np.copyto(b, a), 5, 1, lambda: None))
    return 2 * a.nbytes / best / 1e9


def device_name(device: str) -> str:
    if device == "cuda" and torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}"


def roofline(weight_bytes: int, flops: float, device: str, name: str) -> dict | None:
    if device == "cuda":
        known = next((v for k, v in DEVICES.items() if k in name or name in k), None)
        if known is None:
            return None
        bw, tf = known
    else:
        bw, tf = cpu_bandwidth_gbs(), None
    out = {"bandwidth_gbs": bw, "memory_floor_ms": weight_bytes / (bw * 1e9) * 1000}
    if tf:
        out["compute_floor_ms"] = flops / (tf * 1e12) * 1000
    return out


def llm_weight_bytes(llm: torch.nn.Module) -> int:
    """Bytes of the weights a forward streams (the embedding table is only gathered from)."""
    total = 0
    for name, t in list(llm.named_parameters()) + list(llm.named_buffers()):
        if "embed_tokens" in name or "rotary" in name:
            continue
        total += t.numel() * t.element_size()
    return total


def llm_flops(llm: torch.nn.Module, tokens: int) -> float:
    n = sum(m.in_features * m.out_features for m in llm.modules() if isinstance(m, torch.nn.Linear))
    return 2.0 * n * tokens


def bench_model(model, audio_file: str, *, repeat: int, warmup: int, device: str) -> dict:
    """Stages of one window on a loaded RespLLM or bundle."""
    from respi_edge.runtime import api
    from respi_edge.runtime import audio as audio_fe

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    s = api.Session(model, dms="Gender: M. Age: 7.2. Record location: right posterior chest.")
    spec = audio_fe.spectrogram(audio_file)
    t_spec = torch.from_numpy(spec) if torch is not None and not getattr(model, "numpy_backend", False) else spec
    emb = model.embed_audio(t_spec)
    pre = s.prefix
    stages = {
        "front end": timed(lambda: audio_fe.spectrogram(audio_file), repeat, warmup, sync),
        "encoder": timed(lambda: model.embed_audio(t_spec), repeat, warmup, sync),
        "LLM (prefix reuse)": timed(lambda: model.score(pre, emb), repeat, warmup, sync),
        "LLM (full sequence)": timed(lambda: model.forward(t_spec, s.prompt_ids, s.dms_ids), repeat, warmup, sync),
        "prefix (once per session)": timed(lambda: model.prefix(s.prompt_ids, s.dms_ids), max(3, repeat // 4), 1,
                                           sync),
    }
    h = np.random.default_rng(0).standard_normal((1, 64, model.hparams.d_llm), dtype=np.float32)
    h = torch.from_numpy(h) if torch is not None and not getattr(model, "numpy_backend", False) else h
    stages["head"] = timed(lambda: model._head(h), repeat, warmup, sync)
    e2e = [a + b + c for a, b, c in zip(stages["front end"], stages["encoder"], stages["LLM (prefix reuse)"])]
    stages["end to end"] = e2e
    return {k: percentiles(v) for k, v in stages.items()}


def build_synthetic(name: str, bits: int, device: str) -> torch.nn.Module:
    """A random-weight LLM trunk with `name`'s layer shapes, quantized like a bundle (4/8-bit bnb, or 16-bit)."""
    from transformers import AutoConfig, AutoModel

    hidden, inter, layers, heads, kv, vocab, family = SYNTHETIC[name]
    cfg = AutoConfig.for_model(family, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                               num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                               max_position_embeddings=4096)
    torch.manual_seed(0)
    dtype = torch.float16 if device == "cuda" else torch.float32
    if bits == 16:
        return AutoModel.from_config(cfg, dtype=dtype).to(device).eval()
    from respi_edge.export.quantize import QuantScheme, quantize_tensor
    from respi_edge.runtime.backends.bnb_llm import load_quantized_llm

    scheme = QuantScheme.parse(bits, None, False, embeddings=False)
    with torch.device("meta"):
        shapes = AutoModel.from_config(cfg).state_dict()
    state = {}
    for k, v in shapes.items():  # one random tensor at a time: an 8 B model never exists in fp32
        w = torch.randn(v.shape, dtype=torch.float16 if device == "cuda" else torch.float32,
                        device=device if device == "cuda" else "cpu") * 0.02
        state.update({kk: vv.to("cpu") for kk, vv in quantize_tensor(k, w, scheme).items()})
    llm = load_quantized_llm(cfg, state, scheme.to_dict(), compute_dtype=dtype)
    return llm.to(device) if device == "cuda" else llm


def bench_synthetic(name: str, bits: int, *, repeat: int, warmup: int, device: str) -> dict:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    llm = build_synthetic(name, bits, device)
    cold = time.perf_counter() - t0
    hidden = SYNTHETIC[name][0]
    dtype = torch.float16 if device == "cuda" else torch.float32
    prefix = torch.randn(1, PROMPT_TOKENS + DMS_TOKENS, hidden, dtype=dtype, device=device)
    audio = torch.randn(1, AUDIO_TOKENS, hidden, dtype=dtype, device=device)
    full = torch.cat([prefix, audio], 1)

    with torch.inference_mode():
        cache = llm(inputs_embeds=prefix, use_cache=True).past_key_values
        n = PROMPT_TOKENS + DMS_TOKENS

        def reuse():
            llm(inputs_embeds=audio, past_key_values=cache, use_cache=True)
            for layer in cache.layers:
                layer.crop(n - layer.keys.shape[-2])

        stages = {"LLM (prefix reuse)": timed(reuse, repeat, warmup, sync),
                  "LLM (full sequence)": timed(lambda: llm(inputs_embeds=full, use_cache=False), repeat, warmup, sync)}
    res = {k: percentiles(v) for k, v in stages.items()}
    name_dev = device_name(device)
    out = {"model": name, "bits": bits, "device": name_dev, "cold_start_s": cold, "stages": res,
           "weight_bytes": llm_weight_bytes(llm), "peak_rss_mb": peak_rss_mb()}
    if device == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out["roofline_reuse"] = roofline(out["weight_bytes"], llm_flops(llm, AUDIO_TOKENS), device, name_dev)
    out["roofline_full"] = roofline(out["weight_bytes"], llm_flops(llm, full.shape[1]), device, name_dev)
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| model | bits | device | stage | p50 ms | p95 ms | p99 ms | max ms | floor ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for stage, p in r["stages"].items():
            rf = r.get("roofline_reuse" if "reuse" in stage else "roofline_full") if "LLM" in stage else None
            floor = ""
            if rf:
                floor = f"{max(rf['memory_floor_ms'], rf.get('compute_floor_ms', 0)):.2f}"
            lines.append(f"| {r['model']} | {r['bits']} | {r['device']} | {stage} | {p['p50']:.1f} | {p['p95']:.1f} | "
                         f"{p['p99']:.1f} | {p['max']:.1f} | {floor} |")
    return "\n".join(lines)


def bench_bundle_or_model(target: str | None, kind: str, audio_file: str, *, repeat: int, warmup: int,
                          device: str, threads: int | None = None) -> dict:
    from respi_edge.runtime.api import load_model
    from respi_edge.runtime.bundle import load_bundle

    if device == "cuda" and torch is None:
        device = "cpu"
    t0 = time.perf_counter()
    if kind == "bundle":
        model = load_bundle(target, device=device, threads=threads)
        q = model.manifest["quantization"]
        bits, label = q["bits"], f"{Path(target).name} ({model.manifest.get('backend')} {q['quant']})"
        size = sum(f["bytes"] for f in model.manifest["files"].values())
    else:
        model = load_model(target)
        bits, label, size = 32, f"reference fp32 ({model.info.name})", None
    cold = time.perf_counter() - t0
    name_dev = device_name("cuda" if getattr(model, "device_name", "cpu") == "cuda" else "cpu")
    stages = bench_model(model, audio_file, repeat=repeat, warmup=warmup, device=device)
    out = {"model": label, "bits": bits, "device": name_dev, "cold_start_s": cold, "stages": stages,
           "bundle_bytes": size, "peak_rss_mb": peak_rss_mb(),
           "weight_bytes": llm_weight_bytes(model.llm) if hasattr(model.llm, "named_parameters") else 0}
    if device == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if out["weight_bytes"]:
        out["roofline_reuse"] = roofline(out["weight_bytes"], llm_flops(model.llm, AUDIO_TOKENS), device, name_dev)
    return out


def write_results(rows: list[dict], out: str | None, command: str) -> None:
    if not out:
        return
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    tv = torch.__version__ if torch is not None else "none (onnxruntime)"
    doc = {"command": command, "machine": device_name("cpu"), "torch": tv, "rows": rows}
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, p.with_suffix(".json"))
    p.with_suffix(".md").write_text(f"Command: `{command}`  \nMachine: {doc['machine']}, torch {tv}\n\n"
                                    + markdown(rows) + "\n")
