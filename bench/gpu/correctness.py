"""Correctness of the CUDA paths on the tiny golden RespLLM (bench/gpu/golden, copied from ../shared/golden).

* the reference-exact torch model on the device in fp32 and fp16, with and without prefix reuse, against the
  goldens' logits (fp32 tolerance 1e-4 as in golden/README.md; fp16 has no golden bound: reported);
* bitsandbytes 4-bit and 8-bit bundles exported on the CPU, scored on the CPU and on the device: max |Δp|
  between the two (bitsandbytes' CUDA and CPU kernels round differently).
"""
from __future__ import annotations

import contextlib
import json
import lzma
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

FP32_ATOL = 1e-4  # golden/README.md, respllm_tiny: atol 1e-4 on logits


def prepare(golden: Path, work: Path) -> tuple[Path, Path]:
    """The tiny checkpoint (official format, rebuilt and sha256-verified by the golden's own script) and its base
    LLM folder (config + tokenizer; the tokenizer travels xz-compressed: 3.5 MB -> 0.45 MB)."""
    llm = work / "tiny_llm"
    llm.mkdir(parents=True, exist_ok=True)
    src = golden / "respllm_tiny" / "llm"
    for f in ("config.json", "tokenizer_config.json"):
        shutil.copyfile(src / f, llm / f)
    with lzma.open(src / "tokenizer.json.xz") as f:
        (llm / "tokenizer.json").write_bytes(f.read())
    ck = work / "model_OpenBioLLM_3epoch.pt"
    if not ck.is_file():
        r = subprocess.run([sys.executable, str(golden / "respllm_tiny" / "make_checkpoint.py"), str(ck),
                            "--weights", str(golden)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"make_checkpoint.py failed: {(r.stdout + r.stderr).strip()[-500:]}")
    return ck, llm


def cases(golden: Path, limit: int | None = None) -> list[dict]:
    """Per case: spec, the golden's prompt/DMS ids and texts, logits and P(class 1) (the first `limit`)."""
    man = json.loads((golden / "respllm_tiny" / "manifest.json").read_text())
    exp = np.load(golden / "respllm_tiny" / "expected.npz")
    out = []
    for c in man["cases"]:
        n = c["case"]
        out.append({"name": n, "prompt": c["prompt"], "dms": c["dms"], "spec": exp[f"{n}/spec"],
                    "prompt_ids": exp[f"{n}/prompt_ids"], "dms_ids": exp[f"{n}/dms_ids"],
                    "logits": exp[f"{n}/logits"].astype(np.float64), "prob1": float(exp[f"{n}/prob1"][0])})
    return out[:limit]


def _p1(logits: np.ndarray) -> float:
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max())
    return float(e[1] / e.sum())


def score_cases(model, cs: list[dict], device: str, reuse: bool) -> list[np.ndarray]:
    """Logits per case: prefix (prompt + DMS) computed once and the audio run on its cache, or the full pass."""
    out = []
    for c in cs:
        spec = torch.from_numpy(c["spec"]).to(device)
        pid = torch.from_numpy(c["prompt_ids"])[None].to(device)
        did = torch.from_numpy(c["dms_ids"]).reshape(1, -1).to(device)
        with torch.inference_mode():
            if reuse:
                logits = model.score(model.prefix(pid, did), model.embed_audio(spec))[0]
            else:
                logits = model.forward(spec, pid, did)[0]
        out.append(logits.detach().float().cpu().numpy().astype(np.float64))
    return out


def compare(logits: list[np.ndarray], cs: list[dict]) -> dict:
    dl = [float(np.abs(lg - c["logits"]).max()) for lg, c in zip(logits, cs)]
    dp = [abs(_p1(lg) - c["prob1"]) for lg, c in zip(logits, cs)]
    return {"max_abs_dlogit_vs_golden": max(dl), "max_abs_dp_vs_golden": max(dp),
            "per_case_dlogit": dict(zip((c["name"] for c in cs), dl))}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reference_model(golden: Path, work: Path, device: str, say, limit: int | None = None) -> dict:
    """fp32 and fp16 on `device`, reuse and no reuse, vs the golden logits; tokenization checked too."""
    from respi_edge.runtime.load import load_model

    ck, llm = prepare(golden, work)
    cs = cases(golden, limit)
    out: dict = {"tolerance_fp32_logits": FP32_ATOL, "cases": len(cs)}
    if device == "cuda":  # exact fp32 (cuDNN convolutions default to TF32 on Ampere+)
        out["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    for name, dtype in (("fp32", None), ("fp16", torch.float16)):
        say(f"correctness: tiny RespLLM {name} on {device}")
        t0 = time.perf_counter()
        model = load_model(ck, llm, dtype=dtype).to(device)
        load_s = time.perf_counter() - t0
        first = score_cases(model, cs[:1], device, reuse=True)
        sync(device)
        row = {"load_and_move_s": load_s, "cold_start_s": time.perf_counter() - t0,
               "first_case_logits": first[0].tolist()}
        if name == "fp32":
            row["tokenization_matches_golden"] = all(
                np.array_equal(model.tokenize(c["prompt"])[0].numpy(), c["prompt_ids"])
                and np.array_equal(model.tokenize(c["dms"]).reshape(-1).numpy(), c["dms_ids"]) for c in cs)
        for reuse in (False, True):
            key = "prefix_reuse" if reuse else "full_pass"
            row[key] = compare(score_cases(model, cs, device, reuse), cs)
        if name == "fp32":
            row["pass"] = all(row[k]["max_abs_dlogit_vs_golden"] <= FP32_ATOL for k in ("prefix_reuse", "full_pass"))
        out[name] = row
        del model
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = out["tf32"]["matmul"]
        torch.backends.cudnn.allow_tf32 = out["tf32"]["cudnn"]
        torch.cuda.empty_cache()
    return out


@contextlib.contextmanager
def onnx_encoder_on_cpu():
    """The GPU machine's onnxruntime is a CPU build: run a bundle's ONNX encoder there on the CPU (the LLM, whose
    bitsandbytes kernels are under test, still runs on CUDA). The bundle loader itself insists on a CUDA
    provider when asked for device cuda; this is recorded before the patch is used."""
    from respi_edge.runtime.backends import torch_bundle

    orig = torch_bundle.OnnxAudio
    torch_bundle.OnnxAudio = lambda path, device="auto", threads=None: orig(path, "cpu", threads)
    try:
        yield
    finally:
        torch_bundle.OnnxAudio = orig


def _bundle_logits(bundle, cs: list[dict], reuse: bool) -> list[np.ndarray]:
    out = []
    for c in cs:
        pid = torch.from_numpy(c["prompt_ids"])[None]
        did = torch.from_numpy(c["dms_ids"]).reshape(1, -1)
        with torch.inference_mode():
            if reuse:
                lg = bundle.score(bundle.prefix(pid, did), bundle.embed_audio(c["spec"]))[0]
            else:
                lg = bundle.forward(c["spec"], pid, did)[0]
        out.append(lg.detach().float().cpu().numpy().astype(np.float64))
    return out


def bnb_bundles(golden: Path, work: Path, device: str, say, bits: tuple[int, ...] = (4, 8),
                limit: int | None = None) -> dict:
    """Export 4/8-bit torch-bnb bundles of the tiny model on the CPU; score them on the CPU and on `device`."""
    from respi_edge.export.exporter import ExportOptions, export_bundle
    from respi_edge.runtime.bundle import load_bundle
    from respi_edge.runtime.errors import RespiEdgeError

    ck, llm = prepare(golden, work)
    cs = cases(golden, limit)
    out: dict = {}
    for b in bits:
        say(f"correctness: {b}-bit bitsandbytes bundle, export on the CPU, score on cpu and {device}")
        dst = work / f"tiny_bundle_{b}bit"
        if dst.exists():
            shutil.rmtree(dst)
        t0 = time.perf_counter()
        export_bundle(dst, str(ck), str(llm), ExportOptions(bits=b, encoder_variants=(), parity=False),
                      say=lambda m: None)
        row: dict = {"export_s": time.perf_counter() - t0,
                     "llm_bytes": sum(f.stat().st_size for f in (dst / "llm").rglob("*")
                                      if f.is_file() and not f.name.startswith("tokenizer"))}
        cpu = load_bundle(dst, device="cpu")
        ref = {r: _bundle_logits(cpu, cs, r) for r in (True, False)}
        del cpu
        try:
            dev = load_bundle(dst, device=device)
            row["load_bundle_device_as_shipped"] = "ok"
        except RespiEdgeError as e:
            row["load_bundle_device_as_shipped"] = f"{type(e).__name__}: {e}"
            with onnx_encoder_on_cpu():
                dev = load_bundle(dst, device=device)
            row["encoder_onnx_provider"] = dev.audio.provider
        got = {r: _bundle_logits(dev, cs, r) for r in (True, False)}
        for r in (True, False):
            key = "prefix_reuse" if r else "full_pass"
            dp = [abs(_p1(a) - _p1(c)) for a, c in zip(got[r], ref[r])]
            dl = [float(np.abs(a - c).max()) for a, c in zip(got[r], ref[r])]
            row[key] = {"max_abs_dp_cpu_vs_device": max(dp), "max_abs_dlogit_cpu_vs_device": max(dl),
                        "device_vs_golden_fp32": compare(got[r], cs), "cpu_vs_golden_fp32": compare(ref[r], cs)}
        row["p_cpu"] = [_p1(x) for x in ref[True]]
        row["p_device"] = [_p1(x) for x in got[True]]
        out[f"{b}bit"] = row
        del dev
        if device == "cuda":
            torch.cuda.empty_cache()
    return out
