"""A live screening session on the virtual microphone fed with real recordings: per-stage latency, real-time
factor, overflows, and agreement with offline scoring of the same captured samples.

    ../shared/tools/virtual-mic.sh start
    python -m respi_edge.bench.stream_session --bundle BUNDLE --seconds 60 --out bench/results/stream_session

RTF = compute per window (front end + encoder + LLM + head) / hop: below 1 the runtime keeps up.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from respi_edge.runtime import atomic


def main() -> None:
    from respi_edge.runtime import api
    from respi_edge.runtime import contract as C
    from respi_edge.runtime.audio import spec_from_window
    from respi_edge.runtime.stream import StreamConfig, screen

    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", help="bundle folder (default: the built-in model in full precision)")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--hop", type=float, default=2.0)
    ap.add_argument("--data", default=os.environ.get("RESPI_EDGE_DATA", "../shared/data") + "/sprsound2022")
    ap.add_argument("--mic-tool", default="../shared/tools/virtual-mic.sh")
    ap.add_argument("--out", default="bench/results/stream_session")
    a = ap.parse_args()

    model = api.load(a.bundle)
    session = api.Session(model, dms="Gender: F. Age: 9.7. Record location: left lateral chest.")
    files = sorted(Path(a.data, "audio").glob("*.flac"))[:12]
    stop = threading.Event()

    def player():
        time.sleep(0.5)
        while not stop.is_set():
            for f in files:
                if stop.is_set():
                    break
                subprocess.run([a.mic_tool, "play", str(f)], capture_output=True)

    work = Path(a.out).parent / ".stream_session"
    work.mkdir(parents=True, exist_ok=True)
    jsonl = work / "session.jsonl"
    jsonl.unlink(missing_ok=True)
    t = threading.Thread(target=player, daemon=True)
    t.start()
    summary = screen(session, device="virtmic", jsonl=str(jsonl), live=False, save_audio=str(work),
                     cfg=StreamConfig(hop=a.hop, duration=a.seconds))
    stop.set()
    recs = [json.loads(x) for x in jsonl.read_text().splitlines()]
    scored = [r for r in recs if r.get("status") == "scored"]
    captured, _ = sf.read(summary["saved_audio"], dtype="float32")
    dp = []
    for r in scored:
        win = captured[r["end_sample"] - C.WINDOW_SAMPLES:r["end_sample"]]
        dp.append(abs(session.prediction(session.logits(spec_from_window(win)), "offline").prob - r["prob"]))
    stages = ["capture_to_window", "queue", "front_end", "encoder", "llm_and_head", "total"]
    lat = {s: [r["latency_ms"][s] for r in scored] for s in stages}
    compute = [r["latency_ms"]["front_end"] + r["latency_ms"]["encoder"] + r["latency_ms"]["llm_and_head"]
               for r in scored]
    table = {s: {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95))} for s, v in lat.items()}
    doc = {"command": "python -m respi_edge.bench.stream_session " + " ".join(
               f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if k in ("bundle", "seconds", "hop")),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU (compute: "
                      f"{model.device})",
           "model": model.info.name, "summary": summary, "latency_ms": table,
           "rtf": float(np.percentile(compute, 50)) / 1000 / a.hop,
           "offline_max_abs_dp": float(max(dp)) if dp else None, "windows_scored": len(scored)}
    Path(summary["saved_audio"]).unlink()
    out = Path(a.out)
    atomic.write_json(out.with_suffix(".json"), doc)
    md = [f"Command: `{doc['command']}`  \nMachine: {doc['machine']}  \nModel: {doc['model']}\n",
          "| stage | p50 ms | p95 ms |", "|---|---|---|"]
    md += [f"| {s} | {v['p50']:.1f} | {v['p95']:.1f} |" for s, v in table.items()]
    md.append(f"\n{summary['windows']} windows in {a.seconds:.0f} s of audio (hop {a.hop} s): {summary['scored']} "
              f"scored, {summary['rejected']} rejected, {summary['skipped']} skipped, {summary['overflows']} "
              f"overflows; RTF (compute p50 / hop) {doc['rtf']:.2f}; max |Δp| live vs offline on the same samples "
              f"{doc['offline_max_abs_dp']:.2e}.")
    atomic.write_text(out.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
