"""One call does every GPU check of issue 16 and writes `<name>.json` + `<name>.md` under --out.

    bash bench/gpu/run.sh [--budget-s 420] [--sections ...]        # on the lent GPU (see README.md)
    bash bench/gpu/run.sh --device cpu --dry-run --out DIR          # the same code on a CPU, tiny LLM shape

Sections run in order of importance and the results are rewritten after each one, so a run cut short still
leaves everything measured so far; a section that fails is recorded (message + traceback) and the next one runs.
`--budget-s` caps the whole run: repetitions shrink and the remaining LLM variants are skipped (and named) when
the time left runs short.
"""
from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

from respi_edge.bench import latency

from . import correctness, report, roofline, stages, synthetic_llm

SECTIONS = ("roofline", "correctness", "bundles", "stages", "llm", "projection")
AUDIO_FILE = "configs/parity/40638274_9.7_1_p2_1684.flac"
DRY_RUN_BANNER = ("CPU DRY RUN: proves the GPU script runs end to end; a tiny Llama shape, few repetitions, "
                  "bitsandbytes' CPU kernels. These are NOT GPU figures and not the 8B shape.")


class Budget:
    def __init__(self, seconds: float):
        self.seconds, self.t0 = seconds, time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.seconds - self.elapsed()


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: str, out: Path) -> dict:
    env = {"device_kind": device, "device_name": latency.device_name(device), "cpu": latency.cpu_name(),
           "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "platform": platform.platform()}
    for p in ("transformers", "tokenizers", "huggingface-hub", "safetensors", "bitsandbytes", "accelerate", "peft",
              "onnx", "onnxruntime", "numpy", "soxr", "soundfile"):
        env[p] = _version(p)
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update({"gpu_memory_gb": props.total_memory / 1e9, "sm_count": props.multi_processor_count,
                    "capability": f"{props.major}.{props.minor}",
                    "tf32_default": {"matmul": torch.backends.cuda.matmul.allow_tf32,
                                     "cudnn": torch.backends.cudnn.allow_tf32}})
    boot = out / "bootstrap.json"
    if boot.is_file():
        env["bootstrap"] = json.loads(boot.read_text())
    return env


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="the GPU run of issue 16 (correctness, 8B-shape latency, projection)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name", default=None, help="results file stem (default gpu_results, or gpu_dryrun_<device>)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--dry-run", action="store_true", help="tiny Llama shape, few repetitions (CPU proof run)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="wall-clock budget of the whole run (default 420 s; dry run 1800 s)")
    ap.add_argument("--batches", default=None, help="comma list of batch sizes (default 1,4,16; dry run 1,4)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--variants", default=None, help="LLM variants, comma list of nf4,fp16,int8,bf16")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--cases", type=int, default=None, help="golden cases to score (default all 6; dry run 2)")
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[2])
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (checkpoint, bundles)")
    ap.add_argument("--golden", type=Path, default=None, help="default REPO/bench/gpu/golden")
    return ap.parse_args(argv)


def write(doc: dict, out: Path, name: str) -> None:
    """<name>.json and <name>.md, atomically (a run cut short keeps the last complete pair)."""
    out.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(doc, indent=1, default=str)), (".md", report.markdown(doc))):
        tmp = out / f".{name}{suffix}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / f"{name}{suffix}")


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    a.budget_s = a.budget_s or (1800.0 if a.dry_run else 420.0)
    budget = Budget(a.budget_s)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("driver: --device cuda but torch sees no CUDA GPU (use --device cpu --dry-run on a CPU)",
              file=sys.stderr)
        return 2
    name = a.name or ("gpu_results" if not a.dry_run else f"gpu_dryrun_{a.device}")
    golden = a.golden or a.repo / "bench" / "gpu" / "golden"
    work = (a.work or a.repo / "out" / "gpu-work") / "scratch"  # never under --out: the checkpoint is 140 MB
    work.mkdir(parents=True, exist_ok=True)
    sections = [s for s in a.sections.split(",") if s]
    shape_name, shape = ("dry-run tiny llama", synthetic_llm.DRY_RUN_SHAPE) if a.dry_run \
        else ("llama3-8b", synthetic_llm.LLAMA3_8B)
    variants = a.variants.split(",") if a.variants else (["nf4", "int8", "fp16"] if a.dry_run
                                                          else ["nf4", "fp16", "int8", "bf16"])
    it = stages.Iters(reps=3, warmup=1, batch_reps=3, max_stage_s=3.0) if a.dry_run else stages.Iters()
    if a.reps:
        it.reps = a.reps
    batches = tuple(int(b) for b in a.batches.split(",")) if a.batches else ((1, 4) if a.dry_run else stages.BATCHES)
    n_cases = a.cases or (2 if a.dry_run else None)
    log = open(a.out / f"{name}.log", "a")

    def say(msg: str) -> None:
        line = f"[{budget.elapsed():6.1f}s] {msg}"
        print(line, file=sys.stderr, flush=True)
        log.write(line + "\n")
        log.flush()

    user_args = [x for x in (argv if argv is not None else sys.argv[1:])]
    drop = {"--out", "--repo", "--work"}
    shown = [x for i, x in enumerate(user_args) if x not in drop and (i == 0 or user_args[i - 1] not in drop)]
    doc: dict = {"title": ("GPU run (issue 16)" if not a.dry_run else "GPU script, CPU dry run (issue 16)"),
                 "dry_run_banner": DRY_RUN_BANNER if (a.dry_run or a.device == "cpu") else None,
                 "command": "bash bench/gpu/run.sh " + " ".join(shown), "budget_s": a.budget_s,
                 "shape_name": shape_name, "shape": list(shape), "prefix_tokens": stages.PREFIX,
                 "iterations": vars(it), "batches": list(batches), "env": environment(a.device, a.out),
                 "skipped": [], "errors": {}}
    say(f"device {doc['env']['device_name']}; sections {sections}; variants {variants}; budget {a.budget_s:.0f} s")
    write(doc, a.out, name)

    def section(key: str, fn):
        try:
            t = time.perf_counter()
            result = fn()
            say(f"{key}: done in {time.perf_counter() - t:.1f} s")
            return result
        except Exception as e:  # noqa: BLE001 - recorded, and the next section runs
            doc["errors"][key] = {"message": f"{type(e).__name__}: {e}"[:500], "traceback": traceback.format_exc()}
            say(f"{key}: FAILED {type(e).__name__}: {e}")
            return None
        finally:
            doc["elapsed_s"] = budget.elapsed()
            write(doc, a.out, name)

    measured = None
    if "roofline" in sections:
        measured = doc["roofline"] = section("roofline", lambda: roofline.measure(a.device, a.dry_run))
    if "correctness" in sections:
        doc["correctness"] = section("correctness", lambda: correctness.reference_model(golden, work, a.device, say,
                                                                                           n_cases))
    if "bundles" in sections:
        if budget.left() > (60 if not a.dry_run else 0):
            doc["bundles"] = section("bundles", lambda: correctness.bnb_bundles(golden, work, a.device, say,
                                                                                    limit=n_cases))
        else:
            doc["skipped"].append("bundles (budget)")
    shared = None
    if "stages" in sections or "llm" in sections:
        it.max_stage_s = min(it.max_stage_s, max(1.0, budget.left() / 40))
        res = section("stages", lambda: stages.shared_stages(a.device, shape[0], str(a.repo / AUDIO_FILE), it, say))
        if res:
            doc["shared_stages"], shared = res[0], res[1]
            doc["shared_work"] = shared["work"]
    if "llm" in sections and shared and measured:
        doc["llm"] = []
        need = 8 if a.dry_run else 45
        for v in variants:
            if budget.left() < need:
                doc["skipped"].append(f"LLM {v} (budget: {budget.left():.0f} s left)")
                continue
            it.max_stage_s = min(it.max_stage_s, max(0.5, budget.left() / 60))
            row = section(f"llm_{v}", lambda: stages.llm_variant(shape, v, a.device, it, shared, measured, say,
                                                                  batches))
            if row:
                doc["llm"].append(row)
                if v == "nf4":
                    k = f"LLM step, prefix reuse, batch 1 ({stages.AUDIO} tok)"
                    f = row["floors"][k]
                    doc["goal"] = {"p50_ms": row["stages"][k]["p50"], "floor_ms": f["floor_ms"], "bound": f["bound"],
                                   "ratio": f["ratio_p50_to_floor"], "met": f["ratio_p50_to_floor"] <= 2.0}
            gc.collect()
    if "projection" in sections and doc.get("llm") and measured:
        def proj():
            rows = []
            for r in doc["llm"]:
                work_ = stages.window_work(r, shared["work"])
                p = stages.p50s(r, doc["shared_stages"])
                st = {k: {**w, "p50_ms": p[k]} for k, w in work_.items()}
                for pr in roofline.project(st, measured):
                    gb = (r["weight_bytes"] + r["embedding_bytes"]) / 1e9
                    pr.update({"variant": r["variant"], "llm_weights_gb": gb,
                               "fits": f"{'yes' if gb < pr['memory_gb'] * 0.9 else 'NO'} ({gb:.1f} of "
                                       f"{pr['memory_gb']:.0f} GB)"})
                    rows.append(pr)
            return rows
        doc["projection"] = section("projection", proj)
    doc["elapsed_s"] = budget.elapsed()
    write(doc, a.out, name)
    say(f"wrote {a.out / (name + '.json')} and .md")
    return 0 if not doc["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
