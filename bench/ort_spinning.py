"""Does the ONNX encoder's thread spinning slow the window that follows it? One process per configuration,
alternated, so no two sessions of different configurations ever share the cores.

    python -m respi_edge.bench.ort_spinning --bundle B [--bundle B2] [--rounds 3] --out bench/results/ort_spinning

Configurations: `spin everywhere` (onnxruntime's default: what every session did before), `encoder sleeps` (the
runtime's choice: `onnx_audio.session(spin=False)` for the encoder only), `all sleep` (the LLM trunk too).
Per process: 3 warm-up windows, then 20 windows end to end (`Session.score_file`), 20 encoder calls, 20 LLM steps
with prefix reuse, 4 batches of 8 files; p50 / p95 in ms. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MODES = {"spin everywhere": "spin", "encoder sleeps": "default", "all sleep": "sleep"}


def child(bundle: str, mode: str, audio: str) -> dict:
    from respi_edge.runtime import api
    from respi_edge.runtime import audio as fe
    from respi_edge.runtime.backends import onnx_audio, ort_bundle

    base = onnx_audio.session

    def configured(path, device="auto", threads=None, *, spin=True):
        return base(path, device, threads, spin={"spin": True, "sleep": False}.get(mode, spin))

    if mode != "default":
        onnx_audio.session = configured
        ort_bundle.session = configured
    model = api.load(bundle)
    s = api.Session(model, dms="Gender: F. Age: 9.7. Record location: left anterior chest.")
    spec = fe.spectrogram(audio)

    def timed(fn, n: int, per: int = 1) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3 / per)
        return out

    for _ in range(3):
        s.score_file(audio)
    emb = model.embed_audio(spec)
    runs = {"end to end": timed(lambda: s.score_file(audio), 20),
            "encoder": timed(lambda: model.embed_audio(spec), 20),
            "LLM+head, prefix reuse": timed(lambda: model.score(s.prefix, emb), 20),
            "end to end, batch 8 (per window)": timed(lambda: s.score_files([audio] * 8), 4, per=8)}
    return {k: {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)), "n": len(v)}
            for k, v in runs.items()}


def main(argv: list[str] | None = None) -> dict:
    from importlib.resources import files

    from respi_edge.runtime import atomic

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", action="append", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--audio", default=None, help="a recording (default: the first parity recording shipped)")
    ap.add_argument("--out", default="bench/results/ort_spinning")
    ap.add_argument("--child", nargs=2, metavar=("BUNDLE", "MODE"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    audio = a.audio or str(sorted(Path(str(files("respi_edge.configs") / "parity")).glob("*.flac"))[0])
    if a.child:
        print(json.dumps(child(a.child[0], a.child[1], audio)))
        return {}
    results: dict = {"command": "python -m respi_edge.bench.ort_spinning " + " ".join(
        f"--bundle {b}" for b in a.bundle) + f" --rounds {a.rounds}", "audio": os.path.basename(audio),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU",
        "load_before": os.getloadavg()[0], "bundles": {}}
    for b in a.bundle:
        runs: dict[str, list[dict]] = {name: [] for name in MODES}
        for _ in range(a.rounds):
            for name, mode in MODES.items():
                r = subprocess.run([sys.executable, "-m", "respi_edge.bench.ort_spinning", "--bundle", b,
                                    "--child", b, mode, "--audio", audio], capture_output=True, text=True,
                                   check=True)
                runs[name].append(json.loads(r.stdout.strip().splitlines()[-1]))
        results["bundles"][b] = runs
    results["load_after"] = os.getloadavg()[0]
    atomic.write_json(Path(a.out + ".json"), results)
    atomic.write_text(Path(a.out + ".md"), render(results))
    print(render(results))
    return results


def render(res: dict) -> str:
    stages = ["end to end", "encoder", "LLM+head, prefix reuse", "end to end, batch 8 (per window)"]
    lines = ["# ONNX Runtime thread spinning: encoder before the LLM step", "",
             f"Command: `{res['command']}`; {res['machine']}; 1-min load average {res['load_before']:.2f} before, "
             f"{res['load_after']:.2f} after (the bench's own processes). One process per configuration, "
             f"alternated; each cell: median over the rounds of each process's p50 / p95 (ms), range of the p50s "
             f"in brackets. Audio: `{res['audio']}`.", ""]
    for b, runs in res["bundles"].items():
        lines += [f"## {b}", "", "| configuration | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
        for name, rs in runs.items():
            cells = []
            for st in stages:
                p50 = [r[st]["p50"] for r in rs]
                p95 = [r[st]["p95"] for r in rs]
                cells.append(f"{np.median(p50):.0f} / {np.median(p95):.0f} [{min(p50):.0f}–{max(p50):.0f}]")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("`encoder sleeps` is the runtime's setting (runtime/backends/onnx_audio.py).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
