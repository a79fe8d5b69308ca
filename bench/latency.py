"""`respi-edge bench latency`: per-stage latency of one screening window, llama-bench style.

Stages (one 8.18-s window, batch 1): front end (file → spectrogram), encoder (+ projector), the prompt + DMS
prefix (once per session), LLM + head over the 64 audio tokens on the cached prefix (the runtime's path), LLM +
head without prefix reuse (prefix recomputed every window), head alone, and end to end (`Session.score_file`:
file → probability with the cached prefix). Each target runs in a fresh process by default, so cold start
(imports + load + first window) and peak RSS belong to that target alone.

`--synthetic NAME` builds a random-weight LLM trunk with a real model's layer shapes (from its published
config; nothing is downloaded), quantized like a bundle, so the trunk's latency on a GPU can be measured without
the weights. The roofline floor (weight bytes / memory bandwidth, FLOPs / peak) is printed beside each LLM stage
when the device is known: vendor figures for GPUs, bandwidth and matmul throughput measured here for a CPU.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from respi_edge.runtime import atomic
from respi_edge.runtime.kv_cache import output_cache, with_cache

try:  # the torch-free edge install times ONNX bundles without torch
    import torch
except ImportError:  # pragma: no cover - exercised in the torch-free venv
    torch = None

# hidden, intermediate, layers, attention heads, kv heads, vocab, transformers model type (from each model's
# config.json: Meta-Llama-3-8B, Mistral-7B-v0.1, Phi-3.5-mini-instruct, gemma-2-2b, SmolLM2-135M)
SYNTHETIC = {
    "llama3-8b": (4096, 14336, 32, 32, 8, 128256, "llama"),
    "mistral-7b": (4096, 14336, 32, 32, 8, 32000, "mistral"),
    "phi-3.5": (3072, 8192, 32, 32, 32, 32064, "phi3"),
    "gemma2-2b": (2304, 9216, 26, 8, 4, 256000, "gemma2"),
    "smollm2-135m": (576, 1536, 30, 9, 3, 49152, "llama"),
}
# memory bandwidth GB/s, dense fp16/bf16 tensor TFLOP/s (vendor datasheets, no sparsity); matched against
# torch.cuda.get_device_name() by substring
DEVICES = {
    "H100 80GB HBM3": (3350, 989), "H100 PCIe": (2000, 756), "H100 NVL": (3900, 835), "H200": (4800, 989),
    "A100-SXM4-80GB": (2039, 312), "A100-SXM4-40GB": (1555, 312), "A100-PCIE": (1935, 312),
    "L4": (300, 121), "Tesla T4": (320, 65), "RTX 4090": (1008, 165), "RTX 4080": (717, 97),
    "RTX 3090": (936, 71), "RTX 3060": (360, 51), "Orin": (204.8, 42),  # Jetson AGX Orin 64GB
}
PROMPT_TOKENS, DMS_TOKENS, AUDIO_TOKENS = 97, 17, 64  # the demo task's prompt, a typical SPRSound DMS
BATCH = 8  # windows per batched pass (api.BATCH_SIZE)
LEGACY = ", past fed per call"  # suffix of the ONNX engine's issue-14 path, timed beside the bound-past path
DEMO_DMS = "Gender: M. Age: 7.2. Record location: right posterior chest."


def percentiles(xs: list[float], cpu: list[float] | None = None) -> dict:
    """Wall-time percentiles (ms); with `cpu`, the process CPU time of the same calls too (all threads): on a shared
    machine wall time follows the load, CPU time much less, so ratios of CPU time compare runs made minutes apart."""
    a = np.array(xs) * 1000
    out = {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
           "p99": float(np.percentile(a, 99)), "max": float(a.max()), "n": len(a)}
    if cpu:
        c = np.array(cpu) * 1000
        out.update({"cpu_p50": float(np.percentile(c, 50)), "cpu_p95": float(np.percentile(c, 95))})
    return out


class Clock:
    """Times calls in wall and process CPU time; `interleaved` alternates two variants call by call, so a load change
    on a shared machine hits both alike."""

    def __init__(self, sync: Callable[[], None]):
        self.sync = sync

    def one(self, fn: Callable[[], object]) -> tuple[float, float]:
        t, c = time.perf_counter(), time.process_time()
        fn()
        self.sync()
        return time.perf_counter() - t, time.process_time() - c

    def timed(self, fn: Callable[[], object], repeat: int, warmup: int, per: int = 1) -> dict:
        for _ in range(warmup):
            fn()
        self.sync()
        w, c = zip(*(self.one(fn) for _ in range(repeat)))
        return percentiles([x / per for x in w], [x / per for x in c])

    def interleaved(self, a: Callable[[], object], b: Callable[[], object], repeat: int, warmup: int
                    ) -> tuple[dict, dict]:
        for _ in range(warmup):
            a(), b()
        self.sync()
        ra, rb = [], []
        for _ in range(repeat):
            ra.append(self.one(a))
            rb.append(self.one(b))
        return tuple(percentiles([x[0] for x in r], [x[1] for x in r]) for r in (ra, rb))


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
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@functools.lru_cache(maxsize=1)
def cpu_bandwidth_gbs() -> float:
    """Measured copy bandwidth of this machine (read + write of 256 MB, best of 5), for the CPU roofline."""
    a = np.ones(1 << 25)
    b = np.empty_like(a)
    best = min(timed(lambda: np.copyto(b, a), 5, 1, lambda: None))
    return 2 * a.nbytes / best / 1e9


@functools.lru_cache(maxsize=1)
def cpu_matmul_tflops() -> float | None:
    """Measured fp32 matmul throughput (2048², best of 5) on torch's threads (numpy's BLAS without torch): the
    CPU's practical compute peak."""
    if torch is None:
        a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
        best = min(timed(lambda: a @ a, 5, 1, lambda: None))
    else:
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        best = min(timed(lambda: torch.mm(a, b), 5, 1, lambda: None))
    return 2 * 2048**3 / best / 1e12


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if device == "cuda" and torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU {cpu_name()} x{os.cpu_count()}"


def roofline(weight_bytes: int, flops: float, device: str, name: str) -> dict | None:
    """The time no implementation can beat: streaming the weights once, or the FLOPs at peak."""
    if device == "cuda":
        known = next((v for k, v in DEVICES.items() if k in name), None)
        if known is None:
            return None
        bw, tf, basis = known[0], known[1], "vendor datasheet"
    else:
        bw, tf, basis = cpu_bandwidth_gbs(), cpu_matmul_tflops(), "measured on this machine"
    out = {"bandwidth_gbs": bw, "memory_floor_ms": weight_bytes / (bw * 1e9) * 1000, "basis": basis}
    if tf:
        out.update({"peak_tflops": tf, "compute_floor_ms": flops / (tf * 1e12) * 1000})
    return out


def llm_weight_bytes(llm) -> int:
    """Bytes of the weights a forward streams (the embedding table is only gathered from)."""
    total = 0
    for name, t in list(llm.named_parameters()) + list(llm.named_buffers()):
        if "embed_tokens" in name or "rotary" in name:
            continue
        total += t.numel() * t.element_size()
    return total


def llm_flops(llm, tokens: int) -> float:
    """2 · (Linear weights) · tokens; bitsandbytes layers keep in/out_features like nn.Linear."""
    n = sum(m.in_features * m.out_features for m in llm.modules() if isinstance(m, torch.nn.Linear))
    return 2.0 * n * tokens


def onnx_trunk_stats(path: Path) -> tuple[int, int] | None:
    """(bytes of the weights a window streams, multiply-adds per token) of an ONNX trunk: MatMulNBits packed
    weights + scales and plain MatMul initializers (needs the onnx package; None without it)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return None
    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    nbytes = macs = 0
    for n in m.graph.node:
        if n.op_type == "MatMulNBits":
            a = {x.name: x.i for x in n.attribute}
            macs += a["K"] * a["N"]
            nbytes += sum(numpy_helper.to_array(inits[x]).nbytes for x in n.input[1:] if x in inits)
        elif n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits:
            w = numpy_helper.to_array(inits[n.input[1]])
            macs += int(np.prod(w.shape))
            nbytes += w.nbytes
    return nbytes, macs


def _sync(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def bench_model(model, audio_file: str, *, repeat: int, warmup: int, device: str) -> dict:
    """Per-stage timings of one window on any `Backend` (arrays as that backend computes them)."""
    from respi_edge.runtime import api
    from respi_edge.runtime import audio as audio_fe

    sync = _sync(device)
    s = api.Session(model, dms=DEMO_DMS)
    spec = audio_fe.spectrogram(audio_file)
    emb = model.embed_audio(spec)
    # the spectrogram in the backend's own kind (torch or numpy), so the encoder stage times no conversion
    t_spec = spec if isinstance(emb, np.ndarray) else torch.from_numpy(spec)
    pre = s.prefix
    h = np.random.default_rng(0).standard_normal((1, AUDIO_TOKENS, emb.shape[-1]), dtype=np.float32)
    if not isinstance(emb, np.ndarray):  # hidden states of the backend's kind, device and dtype
        h = torch.from_numpy(h).to(emb.device)
    clock = Clock(sync)
    stages = {
        "front end": clock.timed(lambda: audio_fe.spectrogram(audio_file), repeat, warmup),
        "encoder": clock.timed(lambda: model.embed_audio(t_spec), repeat, warmup),
        "prefix (once per session)": clock.timed(lambda: model.prefix(s.prompt_ids, s.dms_ids), max(3, repeat // 4), 1),
        "LLM+head, prefix reuse": clock.timed(lambda: model.score(pre, emb), repeat, warmup),
        "LLM+head, no reuse": clock.timed(lambda: model.score(model.prefix(s.prompt_ids, s.dms_ids), emb), repeat,
                                          warmup),
        "head": clock.timed(lambda: model.head_logits(h), repeat, warmup),
        "end to end": clock.timed(lambda: s.score_file(audio_file), repeat, warmup),
    }
    # batched windows of one Session (Session.score_many): time per window of a batch of BATCH
    batch = np.stack([spec] * BATCH)
    emb_b = model.embed_audio(batch if isinstance(emb, np.ndarray) else torch.from_numpy(batch))
    stages[f"LLM+head, prefix reuse, batch {BATCH} (per window)"] = clock.timed(
        lambda: model.score_batch(pre, emb_b), max(3, repeat // 2), 1, per=BATCH)
    stages[f"end to end, batch {BATCH} (per window)"] = clock.timed(
        lambda: s.score_files([audio_file] * BATCH, batch_size=BATCH), max(3, repeat // 2), 1, per=BATCH)
    if getattr(model, "bind_past", None) is True:  # the ONNX engine: the issue-14 path (past fed per call) interleaved
        def legacy(fn):
            def run():
                model.bind_past = False
                try:
                    fn()
                finally:
                    model.bind_past = True
            return run

        for stage, fn in (("LLM+head, prefix reuse", lambda: model.score(pre, emb)),
                          ("end to end", lambda: s.score_file(audio_file))):
            stages[stage], stages[stage + LEGACY] = clock.interleaved(fn, legacy(fn), repeat, warmup)
    return stages


def build_synthetic(name: str, bits: int, device: str, quant: str | None = None):
    """A random-weight LLM trunk with `name`'s layer shapes, quantized like a bundle (4/8-bit bnb, or 16-bit)."""
    from transformers import AutoConfig, AutoModel

    hidden, inter, layers, heads, kv, vocab, family = SYNTHETIC[name]
    cfg = AutoConfig.for_model(family, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                               num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                               max_position_embeddings=4096)
    torch.manual_seed(0)
    dtype = torch.float16 if device == "cuda" else torch.float32  # the runtime computes in fp32 on a CPU
    if bits == 16:
        return AutoModel.from_config(cfg, dtype=dtype).to(device).eval()
    from respi_edge.export.quantize import QuantScheme, quantize_tensor
    from respi_edge.runtime.backends.bnb_llm import load_quantized_llm

    scheme = QuantScheme.parse(bits, quant, False, embeddings=False)
    with torch.device("meta"):
        shapes = AutoModel.from_config(cfg).state_dict()
    state = {}
    for k, v in shapes.items():  # one random tensor at a time: an 8 B model never exists in fp32
        w = torch.randn(v.shape, dtype=dtype, device=device) * 0.02
        if k.endswith("norm.weight"):
            w = torch.ones(v.shape, dtype=dtype, device=device)
        state.update({kk: vv.to("cpu") for kk, vv in quantize_tensor(k, w, scheme).items()})
        del w
    llm = load_quantized_llm(cfg, state, scheme.to_dict(), compute_dtype=dtype)
    return (llm.to(device) if device == "cuda" else llm).eval()


def bench_synthetic(name: str, bits: int, *, repeat: int, warmup: int, device: str, quant: str | None = None) -> dict:
    from respi_edge.runtime.model import rewind

    sync = _sync(device)
    t0 = time.perf_counter()
    llm = build_synthetic(name, bits, device, quant)
    build_s = time.perf_counter() - t0
    hidden = SYNTHETIC[name][0]
    dtype = torch.float16 if device == "cuda" else torch.float32
    prefix = torch.randn(1, PROMPT_TOKENS + DMS_TOKENS, hidden, dtype=dtype, device=device)
    audio = torch.randn(1, AUDIO_TOKENS, hidden, dtype=dtype, device=device)
    full = torch.cat([prefix, audio], 1)
    n = PROMPT_TOKENS + DMS_TOKENS

    with torch.inference_mode():
        cache = output_cache(llm(inputs_embeds=prefix, use_cache=True))

        def reuse():
            llm(inputs_embeds=audio, use_cache=True, **with_cache(cache))
            rewind(cache, n)

        stages = {
            f"LLM prefill {AUDIO_TOKENS} tok, prefix reuse": timed(reuse, repeat, warmup, sync),
            f"LLM prefill {full.shape[1]} tok, no reuse": timed(lambda: llm(inputs_embeds=full, use_cache=False),
                                                                repeat, warmup, sync),
        }
    name_dev = device_name(device)
    wb = llm_weight_bytes(llm)
    out = {"model": f"synthetic {name}", "kind": "synthetic", "bits": bits,
           "quant": {4: quant or "nf4", 8: "int8", 16: "fp16" if device == "cuda" else "fp32 on CPU"}[bits],
           "compute_dtype": str(dtype).replace("torch.", ""), "device": name_dev,
           "threads": torch.get_num_threads(), "load_s": build_s, "stages": {k: percentiles(v) for k, v in
                                                                             stages.items()},
           "weight_bytes": wb, "bundle_bytes": None, "peak_rss_mb": peak_rss_mb(),
           "tokens": {k: (AUDIO_TOKENS if "reuse" in k and "no reuse" not in k else full.shape[1]) for k in stages},
           "roofline": {k: roofline(wb, llm_flops(llm, AUDIO_TOKENS if "no reuse" not in k else full.shape[1]),
                                    device, name_dev) for k in stages}}
    if device == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def bench_target(target: str | None, kind: str, audio_file: str, *, repeat: int, warmup: int, device: str,
                 threads: int | None = None, t_start: float | None = None) -> dict:
    """Load a bundle (kind "bundle") or a checkpoint / the built-in model (kind "model") and time its stages.

    Cold start = wall time from `t_start` (time.time() when the process was spawned: interpreter, imports, load)
    to the first window scored; without it, from this call (libraries already imported)."""
    t_start = time.time() if t_start is None else t_start
    from respi_edge.runtime import api
    from respi_edge.runtime.bundle import read_manifest

    if device == "cuda" and torch is None:
        device = "cpu"
    t0 = time.perf_counter()
    if kind == "bundle":
        model = api.load(target, device=device, threads=threads)
        man = read_manifest(target, verify_hashes=False)  # verified by the load
        q = man["quantization"]
        bits, quant = q["bits"], q["quant"]
        tuning = man.get("tuning") or {}
        tuned = ", ".join(f"{k}={v}" for k, v in tuning.items() if k != "from")
        label = f"{Path(target).name} ({man.get('backend')} {bits}-bit {quant}{'; ' + tuned if tuned else ''})"
        size = sum(f["bytes"] for f in man["files"].values())
        trunk = (Path(target) / man["onnx_llm"]["trunk"]) if man.get("backend") == "onnx" else None
    else:
        model = api.load(target)  # a checkpoint runs on the CPU
        bits, quant, label, size, trunk = 32, "fp32", f"reference fp32 ({model.info.name})", None, None
    load_s = time.perf_counter() - t0
    api.Session(model, dms=DEMO_DMS).score_file(audio_file)
    cold = time.time() - t_start
    dev = model.device
    name_dev = device_name(dev)
    stages = bench_model(model, audio_file, repeat=repeat, warmup=warmup, device=dev)
    llm = getattr(model, "llm", None)
    wb = llm_weight_bytes(llm) if hasattr(llm, "named_parameters") else 0
    out = {"model": label, "kind": kind, "bits": bits, "quant": quant,
           "compute_dtype": "fp32" if dev == "cpu" or bits == 32 else "fp16", "device": name_dev,
           "threads": torch.get_num_threads() if torch is not None else threads, "load_s": load_s,
           "cold_start_s": cold, "stages": stages, "bundle_bytes": size, "peak_rss_mb": peak_rss_mb(),
           "weight_bytes": wb, "tokens": {"LLM+head, prefix reuse": AUDIO_TOKENS,
                                          "LLM+head, no reuse": PROMPT_TOKENS + DMS_TOKENS + AUDIO_TOKENS}}
    if dev == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out["tokens"].update({f"LLM+head, prefix reuse{LEGACY}": AUDIO_TOKENS,
                          f"LLM+head, prefix reuse, batch {BATCH} (per window)": AUDIO_TOKENS})
    if wb:
        out["roofline"] = {k: roofline(wb, llm_flops(llm, t), dev, name_dev) for k, t in out["tokens"].items()}
    elif trunk is not None and (st := onnx_trunk_stats(trunk)):  # the ONNX trunk: its packed weights, its MACs
        out["weight_bytes"] = st[0]
        out["roofline"] = {k: roofline(st[0], 2.0 * st[1] * t, dev, name_dev) for k, t in out["tokens"].items()}
    return out


def run_isolated(job: dict, timeout: float | None = None) -> dict:
    """One target in a fresh Python process: its own cold start and peak RSS, nothing inherited."""
    job = {**job, "spawned": time.time()}
    r = subprocess.run([sys.executable, "-m", "respi_edge.bench.latency", json.dumps(job)], capture_output=True,
                       text=True, timeout=timeout, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        from respi_edge.runtime.errors import RespiEdgeError

        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise RespiEdgeError(f"latency run of {job.get('target') or job.get('synthetic')} failed: {tail}")
    return json.loads(lines[-1])


def run_job(job: dict) -> dict:
    if job.get("synthetic"):
        return bench_synthetic(job["synthetic"], int(job["bits"]), repeat=job["repeat"], warmup=job["warmup"],
                               device=job["device"], quant=job.get("quant"))
    return bench_target(job.get("target"), job["kind"], job["audio"], repeat=job["repeat"], warmup=job["warmup"],
                        device=job["device"], threads=job.get("threads"), t_start=job.get("spawned"))


def _floor(r: dict, stage: str) -> str:
    rf = (r.get("roofline") or {}).get(stage)
    if not rf:
        return ""
    mem, comp = rf["memory_floor_ms"], rf.get("compute_floor_ms", 0.0)
    return f"{max(mem, comp):.2f} ({'mem' if mem >= comp else 'compute'})"


def markdown(rows: list[dict]) -> str:
    """llama-bench-like table (one line per model × stage, tokens/s for LLM stages) + a resources table."""
    lines = ["| model | bits | device | threads | stage | p50 ms | p95 ms | p99 ms | max ms | CPU p50 ms | t/s | "
             "floor ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for stage, p in r["stages"].items():
            tok = (r.get("tokens") or {}).get(stage)
            tps = f"{tok / p['p50'] * 1000:.0f}" if tok else ""
            cpu = f"{p['cpu_p50']:.1f}" if "cpu_p50" in p else ""
            lines.append(f"| {r['model']} | {r['bits']} ({r.get('quant', '')}) | {r['device']} | "
                         f"{r.get('threads', '')} | {stage} | {p['p50']:.1f} | {p['p95']:.1f} | {p['p99']:.1f} | "
                         f"{p['max']:.1f} | {cpu} | {tps} | {_floor(r, stage)} |")
    lines += ratios(rows)
    lines += ["", "| model | bits | compute | load s | cold start s (first window) | peak RSS MB | peak GPU MB | "
                  "LLM weights MB | bundle MB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mb = lambda x: f"{x / 1e6:.1f}" if x else ""  # noqa: E731
        cold = f"{r['cold_start_s']:.1f}" if r.get("cold_start_s") is not None else ""
        gpu = f"{r['peak_gpu_mb']:.0f}" if r.get("peak_gpu_mb") is not None else "n/a"
        lines.append(f"| {r['model']} | {r['bits']} | {r.get('compute_dtype', '')} | {r.get('load_s', 0):.1f} | "
                     f"{cold} | {r['peak_rss_mb']:.0f} | {gpu} | {mb(r.get('weight_bytes'))} | "
                     f"{mb(r.get('bundle_bytes'))} |")
    return "\n".join(lines)


def ratios(rows: list[dict]) -> list[str]:
    """new/old of every later row against the first (today's) row, measured in this run: a stage is compared with
    the first row's issue-14 path of that stage where it was timed (", past fed per call"), else the same stage."""
    bundles = [r for r in rows if r.get("kind") == "bundle"]
    if len(bundles) < 2:
        return []
    base = bundles[0]
    lines = ["", f"new/old, measured in this run against `{base['model']}` (its issue-14 path where timed):", "",
             "| model | stage | old p50 ms | new p50 ms | p50 new/old | old p95 ms | new p95 ms | p95 new/old | "
             "CPU p50 new/old | new p50 / floor |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in bundles[1:]:
        for stage, p in r["stages"].items():
            if stage.endswith(LEGACY):
                continue
            old = base["stages"].get(stage + LEGACY) or base["stages"].get(stage)
            if old is None:
                continue
            rf = (r.get("roofline") or {}).get(stage)
            floor = max(rf["memory_floor_ms"], rf.get("compute_floor_ms", 0.0)) if rf else None
            cpu = f"{p['cpu_p50'] / old['cpu_p50']:.2f}" if old.get("cpu_p50") and p.get("cpu_p50") else ""
            ratio = lambda a, b: f"{a / b:.2f}" if b else ""  # noqa: E731
            lines.append(f"| {r['model']} | {stage} | {old['p50']:.1f} | {p['p50']:.1f} | "
                         f"{ratio(p['p50'], old['p50'])} | {old['p95']:.1f} | {p['p95']:.1f} | "
                         f"{ratio(p['p95'], old['p95'])} | {cpu} | {ratio(p['p50'], floor or 0)} |")
    return lines


def write_results(rows: list[dict], out: str | None, command: str, note: str | None = None) -> None:
    """OUT.json and OUT.md, written atomically, with the command and the machine."""
    if not out:
        return
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    tv = torch.__version__ if torch is not None else "none (onnxruntime)"
    doc = {"command": command, "machine": device_name("cpu"), "torch": tv, "note": note, "rows": rows,
           "cpu_bandwidth_gbs": cpu_bandwidth_gbs(), "cpu_matmul_tflops": cpu_matmul_tflops()}
    head = (f"Command: `{command}`  \nMachine: {doc['machine']}, torch {tv}; measured copy bandwidth "
            f"{doc['cpu_bandwidth_gbs']:.1f} GB/s"
            + (f", fp32 matmul {doc['cpu_matmul_tflops'] * 1000:.0f} GFLOP/s" if doc["cpu_matmul_tflops"] else "")
            + "  \n" + (f"{note}  \n" if note else "") + "\n")
    atomic.write_json(p.with_suffix(".json"), doc)
    atomic.write_text(p.with_suffix(".md"), head + markdown(rows) + "\n")


if __name__ == "__main__":  # a child of run_isolated: one job as JSON in argv, one JSON line out
    print(json.dumps(run_job(json.loads(sys.argv[1]))))
