"""Peak memory of `respi-edge export` on synthetic official-format checkpoints with real Llama layer shapes.

The claim under test: an export reads the checkpoint through mmap tensor by tensor and writes the LLM shard by
shard, so its peak RSS does not grow with the model (a 32 GB fp32 8 B checkpoint must export on 24 GB).

    python -m respi_edge.bench.export_memory --out bench/results/export_memory

Each export runs in a fresh subprocess; its peak RSS is the child's ru_maxrss. Weights are random (seeded), the
layout is the reference's (LoRA on q/v, frozen OPERA-CT encoder, aligner, head).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from respi_edge.runtime import atomic
from respi_edge.runtime.builtin import DEMO_TASK

SHAPES = {  # hidden, intermediate, layers, heads, kv heads (vocab 49152: the SmolLM2 tokenizer)
    "llama-0.4b": (1024, 4096, 24, 16, 8),
    "llama-1.5b": (2048, 5632, 32, 32, 4),  # TinyLlama-1.1B layer shapes, 32 layers
}
VOCAB = 49152


def make_llm_folder(name: str, root: Path) -> Path:
    """config.json + tokenizer (from the built-in SmolLM2) for a synthetic Llama."""
    from transformers import LlamaConfig

    from respi_edge.runtime.llm import resolve_llm

    hidden, inter, layers, heads, kv = SHAPES[name]
    d = root / f"{name}-llm"
    d.mkdir(parents=True, exist_ok=True)
    LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv, vocab_size=VOCAB, max_position_embeddings=8192, rms_norm_eps=1e-5,
                tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2).save_pretrained(d)
    src = Path(resolve_llm(None).path)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, d / f)
    return d


def make_checkpoint(name: str, path: Path, seed: int = 0) -> int:
    """An official-format checkpoint (`{"epoch", "model_state_dict"}`); returns its parameter count."""
    from respi_edge.runtime.builtin import encoder_init, synthetic_encoder_state

    hidden, inter, layers, heads, kv = SHAPES[name]
    hd = hidden // heads
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    sd = collections.OrderedDict()
    p = "llm_model.base_model.model."
    sd[p + "embed_tokens.weight"] = rnd(VOCAB, hidden)
    for i in range(layers):
        L = f"{p}layers.{i}."
        for proj, (o, n) in {"q_proj": (hidden, hidden), "k_proj": (kv * hd, hidden), "v_proj": (kv * hd, hidden),
                             "o_proj": (hidden, hidden)}.items():
            if proj in ("q_proj", "v_proj"):
                sd[f"{L}self_attn.{proj}.base_layer.weight"] = rnd(o, n)
                sd[f"{L}self_attn.{proj}.lora_A.default.weight"] = rnd(16, n)
                sd[f"{L}self_attn.{proj}.lora_B.default.weight"] = rnd(o, 16)
            else:
                sd[f"{L}self_attn.{proj}.weight"] = rnd(o, n)
        sd[f"{L}mlp.gate_proj.weight"] = rnd(inter, hidden)
        sd[f"{L}mlp.up_proj.weight"] = rnd(inter, hidden)
        sd[f"{L}mlp.down_proj.weight"] = rnd(hidden, inter)
        sd[f"{L}input_layernorm.weight"] = torch.ones(hidden)
        sd[f"{L}post_attention_layernorm.weight"] = torch.ones(hidden)
    sd[p + "norm.weight"] = torch.ones(hidden)
    for k, v in synthetic_encoder_state(encoder_init()).items():
        sd["audio_encoder." + k] = v
    sd["aligner.weight"] = rnd(hidden, 768)
    sd["aligner.bias"] = torch.zeros(hidden)
    sd["output_projection.linear.weight"] = rnd(2, 32 * 64)
    sd["output_projection.linear.bias"] = torch.zeros(2)
    n = sum(v.numel() for k, v in sd.items() if k.startswith("llm_model."))
    torch.save({"epoch": 2, "model_state_dict": sd}, path)
    return n


def run_export(ckpt: Path, llm: Path, bits: int, out: Path) -> dict:
    """One export in a fresh process: wall time and peak RSS of that process."""
    cmd = [sys.executable, "-m", "respi_edge.runtime.cli", "export", "--checkpoint", str(ckpt), "--llm", str(llm),
           "--bits", str(bits), "--no-parity", "--encoder-variants", "", "--task", DEMO_TASK,
           "--out", str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t
    if r.returncode != 0:
        raise SystemExit(f"export failed: {r.stderr[-2000:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kb <= before:
        raise SystemExit("peak RSS not measurable: run one export per bench process (ru_maxrss is a running max)")
    llm_bytes = sum(f.stat().st_size for f in (out / "llm").glob("model-*.safetensors"))
    return {"seconds": round(wall, 1), "peak_rss_mb": round(peak_kb / 1024, 1), "llm_bytes": llm_bytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/export_memory")
    ap.add_argument("--models", nargs="+", default=list(SHAPES))
    ap.add_argument("--bits", nargs="+", type=int, default=[4, 8])
    ap.add_argument("--work", default=None, help="scratch folder (needs ~8 GB)")
    ap.add_argument("--one", nargs=3, metavar=("CKPT", "LLM", "BITS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="respi-edge-membench-"))
    rows = []
    try:
        for name in a.models:
            llm = make_llm_folder(name, work)
            ck = work / f"{name}.pt"
            n = make_checkpoint(name, ck)
            for bits in a.bits:
                out = work / f"{name}-b{bits}"
                # a fresh interpreter per export so ru_maxrss of RUSAGE_CHILDREN is this export's own peak
                res = json.loads(subprocess.run([sys.executable, "-c", (
                    "import json,sys;from pathlib import Path;from respi_edge.bench.export_memory import run_export;"
                    f"print(json.dumps(run_export(Path({str(ck)!r}),Path({str(llm)!r}),{bits},Path({str(out)!r}))))")],
                    capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
                row = {"model": name, "llm_params": n, "checkpoint_bytes": ck.stat().st_size, "bits": bits, **res}
                rows.append(row)
                print(json.dumps(row), flush=True)
                shutil.rmtree(out)
            ck.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"command": "python -m respi_edge.bench.export_memory " + " ".join(sys.argv[1:]),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                         f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, no GPU",
              "torch": torch.__version__, "rows": rows}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out.with_suffix(".json"), result)
    md = ["| model | LLM params | checkpoint | bits | peak RSS | time | LLM in bundle |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['model']} | {r['llm_params'] / 1e9:.2f} B | {r['checkpoint_bytes'] / 2**30:.2f} GiB | "
                  f"{r['bits']} | {r['peak_rss_mb']:.0f} MB | {r['seconds']:.0f} s | {r['llm_bytes'] / 2**20:.0f} MiB |")
    atomic.write_text(out.with_suffix(".md"), f"Command: `{result['command']}`  \nMachine: {result['machine']}\n\n"
                                      + "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
