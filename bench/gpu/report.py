"""The run's results as Markdown (the JSON beside it holds every number)."""
from __future__ import annotations

from . import roofline

AUDIO = 64


def _f(x, fmt=".2f") -> str:
    return "" if x is None else format(x, fmt)


def _pct(p: dict) -> str:
    return f"{p['p50']:.2f} | {p['p95']:.2f} | {p['p99']:.2f} | {p['n']}"


def markdown(doc: dict) -> str:
    env = doc["env"]
    lines = [f"# {doc['title']}", ""]
    if doc.get("dry_run_banner"):
        lines += [f"> **{doc['dry_run_banner']}**", ""]
    lines += [f"Command: `{doc['command']}`  ",
              f"Device: **{env['device_name']}**; host CPU {env['cpu']}; torch {env['torch']} (CUDA "
              f"{env.get('cuda') or 'n/a'}), transformers {env.get('transformers')}, bitsandbytes "
              f"{env.get('bitsandbytes')}, Python {env['python']}  ",
              f"LLM shape: {doc['shape_name']} {doc['shape']} (hidden, intermediate, layers, heads, kv heads, vocab, "
              f"family), deterministic random weights made on this machine; prompt + DMS prefix {doc['prefix_tokens']} "
              f"tokens, {AUDIO} audio tokens per window.  ",
              f"Run time {doc.get('elapsed_s', 0):.0f} s of a {doc['budget_s']:.0f} s budget."
              + (f" Skipped: {'; '.join(doc['skipped'])}." if doc.get("skipped") else ""), ""]
    if doc.get("errors"):
        lines += ["**Errors** (section: message; tracebacks in the JSON):", ""]
        lines += [f"- {k}: {v['message']}" for k, v in doc["errors"].items()] + [""]
    m = doc.get("roofline")
    if m:
        lines += [f"Measured roofline: memory bandwidth **{m['bandwidth_gbs']:.0f} GB/s** ({m['bandwidth_method']}), "
                  f"matmul peak **{m['matmul_tflops'] * 1e3:.0f} GFLOP/s** ({m['matmul_method']}).", ""]
    c = doc.get("correctness")
    if c:
        lines += ["## Correctness: tiny golden RespLLM", "",
                  f"{c['cases']} golden cases; fp32 tolerance {c['tolerance_fp32_logits']} on logits "
                  f"(golden/README.md). Tokenization matches the goldens: "
                  f"{c.get('fp32', {}).get('tokenization_matches_golden')}.", "",
                  "| model | path | max abs Δlogit vs golden | max abs ΔP vs golden | "
                  "cold start s (load + first window) |",
                  "|---|---|---|---|---|"]
        for name in ("fp32", "fp16"):
            r = c.get(name)
            if not r:
                continue
            for key, label in (("full_pass", "full pass"), ("prefix_reuse", "prefix reuse")):
                lines.append(f"| {name} on {env['device_kind']} | {label} | {r[key]['max_abs_dlogit_vs_golden']:.2e} | "
                             f"{r[key]['max_abs_dp_vs_golden']:.2e} | {r['cold_start_s']:.2f} |")
        lines += [f"\nfp32 within tolerance: **{c.get('fp32', {}).get('pass')}**.", ""]
    b = doc.get("bundles")
    if b:
        lines += ["## Correctness: bitsandbytes bundles (exported on the CPU), CPU vs device", ""]
        if env["device_kind"] == "cpu":
            lines += ["(The device is the CPU in a dry run: CPU vs device is 0 by construction.)", ""]
        lines += [
                  "| bundle | LLM bytes | path | max abs ΔP CPU vs device | max abs Δlogit CPU vs device | "
                  "max abs ΔP device vs golden fp32 | max abs ΔP CPU vs golden fp32 |", "|---|---|---|---|---|---|---|"]
        for name, r in b.items():
            for key, label in (("full_pass", "full pass"), ("prefix_reuse", "prefix reuse")):
                x = r[key]
                lines.append(f"| {name} | {r['llm_bytes']} | {label} | {x['max_abs_dp_cpu_vs_device']:.2e} | "
                             f"{x['max_abs_dlogit_cpu_vs_device']:.2e} | "
                             f"{x['device_vs_golden_fp32']['max_abs_dp_vs_golden']:.2e} | "
                             f"{x['cpu_vs_golden_fp32']['max_abs_dp_vs_golden']:.2e} |")
        first = next(iter(b.values()))
        lines += ["", f"`load_bundle(device={env['device_kind']!r})` as shipped: "
                      f"{first.get('load_bundle_device_as_shipped')}"
                  + (f"; measured with the bundle's ONNX encoder on {first['encoder_onnx_provider']} "
                     "(onnxruntime CPU build)" if first.get("encoder_onnx_provider") else ""), ""]
    s = doc.get("shared_stages")
    if s:
        lines += ["## Latency: stages that do not depend on the LLM", "",
                  "| stage | p50 ms | p95 ms | p99 ms | n |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {_pct(v)} |" for k, v in s.items() if isinstance(v, dict)]
        if "encoder_fp16_vs_fp32_tokens_max_abs" in s:
            lines += ["", f"Encoder fp16 vs fp32 tokens: max abs {s['encoder_fp16_vs_fp32_tokens_max_abs']:.2e}."]
        lines.append("")
    rows = doc.get("llm") or []
    if rows:
        lines += [f"## Latency: LLM ({doc['shape_name']}) per variant", "",
                  "| variant | stage | p50 ms | p95 ms | p99 ms | n | floor ms (bound) | p50 / floor |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            for k, p in r["stages"].items():
                f = r["floors"].get(k)
                fl = f"{f['floor_ms']:.2f} ({f['bound']})" if f else ""
                ratio = f"{f['ratio_p50_to_floor']:.1f}" if f else ""
                lines.append(f"| {r['variant']} ({r['compute_dtype']}) | {k} | {_pct(p)} | {fl} | {ratio} |")
        bs = " / ".join(f"b{b}" for b in doc["batches"])
        lines += ["", "| variant | weights MB (no embedding) | embedding MB | build s | first window s | "
                      f"cold start s | peak memory MB | windows/s LLM step {bs} | windows/s whole window on device {bs} |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            t = r["throughput_windows_per_s"]
            mem = r.get("peak_gpu_mb") or r.get("peak_rss_mb_process")
            lines.append(f"| {r['variant']} | {r['weight_bytes'] / 1e6:.1f} | {r['embedding_bytes'] / 1e6:.1f} | "
                         f"{r['build_s']:.1f} | {r['first_window_s']:.2f} | {r['cold_start_s']:.1f} | "
                         f"{_f(mem, '.0f')} | "
                         + " / ".join(f"{t[b]['llm_step']:.1f}" for b in t) + " | "
                         + " / ".join(f"{t[b]['window_on_device']:.1f}" for b in t) + " |")
        lines += ["", "Peak memory: torch.cuda.max_memory_allocated per variant (reset before its build) on a GPU; "
                      "the process's peak RSS so far on a CPU. Cold start = building the random weights on the device "
                      "+ the first window (prefix + step); loading real weights from disk would replace the build.", ""]
        goal = doc.get("goal")
        if goal:
            lines += ["**Goal (4-bit LLM step with prefix reuse within 2x of its floor):** "
                      f"p50 {goal['p50_ms']:.2f} ms, "
                      f"floor {goal['floor_ms']:.2f} ms ({goal['bound']}), ratio {goal['ratio']:.1f}: "
                      f"**{'met' if goal['met'] else 'not met'}**.", ""]
    proj = doc.get("projection")
    if proj:
        lines += ["## PROJECTION to consumer GPUs (not measured)", "",
                  f"Basis: {roofline.SPEC_SOURCE}. Per stage: floor = max(bytes / bandwidth, FLOPs / peak) with the "
                  "bytes and FLOPs of this run; 'scaled' = that floor x (p50 / floor measured here), i.e. assuming the "
                  "same efficiency as on this device. Per window = encoder fp16 + projector + LLM step with prefix "
                  "reuse (front end and head excluded: CPU and negligible). 'peak' names which published tensor "
                  "rate was used (fp32 accumulate is what torch's fp16 GEMMs use).", "",
                  "| target | peak | LLM variant | LLM weights fit? | encoder ms | LLM step floor ms (bound) | "
                  "window floor ms | window scaled ms |", "|---|---|---|---|---|---|---|---|"]
        for r in proj:
            st = r["stages"]
            llm = st["LLM step, prefix reuse"]
            win = sum(v["floor_ms"] for v in st.values())
            sc = [v.get("efficiency_scaled_ms") for v in st.values()]
            scaled = f"{sum(sc):.1f}" if all(x is not None for x in sc) else ""
            lines.append(f"| {r['target']} | {r['peak']} ({r['tflops']}) | {r['variant']} | {r['fits']} | "
                         f"{st['encoder fp16']['floor_ms']:.2f} | {llm['floor_ms']:.2f} ({llm['bound']}) | {win:.2f} | "
                         f"{scaled} |")
        lines.append("")
    return "\n".join(lines) + "\n"
