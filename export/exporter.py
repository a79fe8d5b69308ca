"""`respi-edge export`: checkpoint (or the built-in model) → a verified edge bundle, written atomically.

Order matters: LoRA is merged in full precision, then quantized (peft's merge into an already-quantized
bitsandbytes layer is off by 66 % relative, measured). Everything is written into a temporary folder beside
`--out` and renamed at the very end, so an export killed at any point leaves no bundle that looks complete.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.resources
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from respi_edge.runtime import bundle as B
from respi_edge.runtime.api import softmax, to_numpy
from respi_edge.runtime import checkpoint as ckpt
from respi_edge.runtime import contract
from respi_edge.runtime.builtin import DEMO_TASK
from respi_edge.runtime.checkpoint import Checkpoint, open_checkpoint
from respi_edge.runtime.hashing import sha256_file
from respi_edge.runtime.errors import BundleError
from respi_edge.runtime.llm import load_config, load_tokenizer, resolve_llm
from respi_edge.runtime.load import assemble, base_llm_weights, encoder_from_checkpoint

from .llm_writer import merged_tensors, write_llm
from .onnx_encoder import export_fp16, export_fp32, export_int8, optimize_variants
from .partials import make_partial, remove_stale_partials
from .quantize import QuantScheme

VERSIONED = ("respi-edge", "torch", "transformers", "peft", "bitsandbytes", "onnx", "onnxruntime", "numpy", "soxr",
             "soundfile", "safetensors")


@dataclass
class ExportOptions:
    bits: int = 4
    quant: str | None = None
    double_quant: bool = False
    quantize_embeddings: bool = True
    encoder_variants: tuple[str, ...] = ("fp16", "int8")
    parity: bool = True
    parity_manifest: str | None = None  # extra real recordings for the parity check
    backend: str = "torch-bnb"  # torch-bnb (bitsandbytes LLM) | onnx (whole model in ONNX Runtime)
    block_size: int = 32  # onnx backend: MatMulNBits block
    accuracy_level: int | None = None  # onnx backend, 4/8-bit: MatMulNBits compute type (4: int8 activations)
    optimize_encoder: bool = False  # save each encoder variant as ONNX Runtime's offline-optimised graph
    encoder_default: str = "fp32"  # the variant a bundle runs unless told otherwise (bench/results/throughput_cpu.md)
    calibration: str | None = None  # manifest: static int8 encoder variant, and the drift budget's data
    static_int8: bool = True  # with --calibration: also build the static int8 encoder variant (slow: ORT's QDQ pass)
    max_drift: float | None = None  # keep the most sensitive LLM layers at 8/16 bits until mean |Δp| <= this
    calibration_size: int | None = None  # recordings the drift budget plans on (None: sensitivity.CALIBRATION_SIZE)
    device: str = "cpu"
    shard_bytes: int = 512 << 20


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


class Models:
    """The full-precision models an export needs, each built at most once: the merged one (LoRA folded in; the
    ONNX trunk, the drift planner and parity all use it) and the unmerged reference (parity only)."""

    def __init__(self, ck: Checkpoint, llm_spec):
        self.ck, self.llm_spec = ck, llm_spec

    @functools.cached_property
    def merged(self):
        return assemble(self.ck, self.llm_spec, merge_lora=True)

    @functools.cached_property
    def reference(self):
        return assemble(self.ck, self.llm_spec)  # full precision, LoRA unmerged: the reference computation

    def release(self) -> None:
        """Drop what was built (the bitsandbytes shard writer streams from the checkpoint, not from these)."""
        self.__dict__.pop("merged", None)
        self.__dict__.pop("reference", None)


def _open(checkpoint: str | None) -> tuple[Checkpoint, str, str]:
    if checkpoint is None:
        from respi_edge.runtime.builtin import builtin_checkpoint

        ck = builtin_checkpoint()
        digest = sha256_file(ck.path) if os.path.isfile(ck.path) else "built-in-untrained"
        return ck, "built-in", digest
    return open_checkpoint(checkpoint), str(checkpoint), sha256_file(checkpoint)


def parity_inputs(extra_manifest: str | None, limit: int = 8) -> list[tuple[str, np.ndarray, str]]:
    """(name, spectrogram, DMS) for the shipped real recordings (+ a user manifest), scored by both models."""
    from respi_edge.runtime import audio
    from respi_edge.runtime.dms import dms_from_row
    from respi_edge.runtime.manifest import read_manifest

    out = []
    with importlib.resources.as_file(importlib.resources.files("respi_edge.configs") / "parity" / "manifest.csv") as p:
        rows = read_manifest(p).rows
    if extra_manifest:
        rows += read_manifest(extra_manifest).rows[:limit]
    for r in rows:
        out.append((os.path.basename(r.path), audio.spectrogram(r.path), dms_from_row(r.dms)))
    rng = np.random.default_rng(0)
    out.append(("synthetic_uniform", rng.random(contract.SPEC_SHAPE, dtype=np.float32), ""))
    return out


def _max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def compute_parity(models: Models, bundle_dir: Path, man: dict, opts: ExportOptions, task_prompt: str,
                   say: Callable[[str], None]) -> dict:
    """Max |Δ| of each encoder variant vs torch (batch of all inputs, and B=1 vs B=3), merged vs unmerged logits,
    bundle vs reference logits/P. Logits of both torch models come from the same audio embeddings (the encoder is
    identical in both, so it runs once per input instead of once per model)."""
    from respi_edge.runtime.backends.onnx_audio import OnnxAudio

    ref, merged = models.reference, models.merged
    bundle_files = B.open_bundle(bundle_dir, manifest=man)
    inputs = parity_inputs(opts.parity_manifest)
    specs = np.stack([s for _, s, _ in inputs])
    emb_ref = ref.embed_audio(torch.from_numpy(specs))
    par: dict = {}
    for name in man["encoder"]["variants"]:
        onnx = OnnxAudio(bundle_files.encoder_file(name), "cpu")
        par[f"encoder_{name}_max_abs"] = _max_abs(onnx.embed(specs), emb_ref.numpy())
        if name == "fp32":  # dynamic batch: B=3 against B=1, and both against torch
            b3 = onnx.embed(specs[:3])
            singles = [onnx.embed(specs[i:i + 1])[0] for i in range(min(3, len(specs)))]
            par["encoder_fp32_batch3_vs_single_max_abs"] = max(_max_abs(b3[i], s) for i, s in enumerate(singles))
            par["encoder_fp32_batch1_max_abs"] = max(_max_abs(s, emb_ref[i].numpy()) for i, s in enumerate(singles))
            par["encoder_fp32_batch3_max_abs"] = _max_abs(b3, emb_ref[:3].numpy())
    say("parity: scoring the reference and the bundle")
    bundle = B.load_bundle(bundle_dir, device=opts.device, manifest=man)
    d_merge, d_logit, d_prob = [], [], []
    per_input = []
    p_ids = ref.tokenize(task_prompt)
    for i, (name, spec, dms) in enumerate(inputs):
        d_ids = ref.tokenize(dms)
        lr = ref.forward_embeds(emb_ref[i:i + 1], p_ids, d_ids)[0]
        lm = merged.forward_embeds(emb_ref[i:i + 1], p_ids, d_ids)[0]
        lb = to_numpy(bundle.score(bundle.prefix(bundle.tokenize(task_prompt), bundle.tokenize(dms)),
                                   bundle.embed_audio(spec))[0])
        pr, pb = float(softmax(lr)[1]), float(softmax(lb)[1])
        d_merge.append(_max_abs(lm, lr))
        d_logit.append(_max_abs(lb, lr))
        d_prob.append(abs(pb - pr))
        per_input.append({"input": name, "p_reference": pr, "p_bundle": pb})
    par.update({"merged_vs_unmerged_logits_max_abs": max(d_merge), "bundle_vs_reference_logits_max_abs": max(d_logit),
                "bundle_vs_reference_prob_max_abs": max(d_prob)})
    par["inputs"] = per_input
    return par


def drift_plan(ck: Checkpoint, models: Models, opts: ExportOptions, scheme: QuantScheme, say) -> dict:
    """Per-layer sensitivity on the calibration manifest, then the cheapest plan within --max-drift."""
    from respi_edge.calibration.sensitivity import CALIBRATION_SIZE, DriftMeter, calibration_set, precision_plan
    from respi_edge.runtime.prompts import get_task

    if opts.calibration is None:
        raise BundleError("--max-drift needs --calibration MANIFEST (the recordings the drift is measured on)")
    if scheme.bits != 4:
        raise BundleError("--max-drift plans 4-bit exports (layers are kept at 8 or 16 bits as needed)")
    task = get_task(ck.meta.get("task") or DEMO_TASK)
    say(f"drift budget: per-layer sensitivity on {opts.calibration}")
    merged = models.merged
    cal = calibration_set(opts.calibration, opts.calibration_size or CALIBRATION_SIZE)
    meter = DriftMeter(merged, task.prompt, cal)
    info = precision_plan(meter, merged.llm.config.num_hidden_layers, opts.max_drift, scheme.quant, say,
                          embeddings=scheme.embeddings)
    info["plan"] = {int(k): int(v) for k, v in info["plan"].items()}
    return info


def write_onnx_llm(ck: Checkpoint, models: Models, llm_dir: Path, scheme: QuantScheme, tokenizer,
                   accuracy_level: int | None = None) -> dict:
    """Merged fp32 trunk → ONNX with past key/values → MatMulNBits (or fp16); embeddings and tokenizer beside it.

    Unlike the bitsandbytes path this needs the merged model in memory (torch.onnx needs a module)."""
    from safetensors.numpy import save_file as save_np

    from .onnx_llm import export_trunk, quantize_trunk

    llm_dir.mkdir(parents=True)
    llm = models.merged.llm
    cfg = llm.config
    emb = llm.get_input_embeddings().weight.detach().float().numpy().astype(np.float16)
    save_np({"weight": emb}, str(llm_dir / "embed.safetensors"))
    raw = llm_dir / "trunk.fp32.onnx"
    export_trunk(llm, ck.hparams.d_ff, raw)
    name = "trunk.onnx"
    quantize_trunk(raw, llm_dir / name, scheme.bits, scheme.blocksize or 32, accuracy_level)
    for f in llm_dir.glob("trunk.fp32.onnx*"):
        f.unlink()
    tokenizer.save_pretrained(llm_dir)  # tokenizer.json is what the torch-free runtime reads
    if not (llm_dir / "tokenizer.json").is_file():
        raise BundleError("the base LLM's tokenizer has no tokenizer.json (a 'fast' tokenizer is needed for the "
                          "ONNX backend)")
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return {"trunk": f"llm/{name}", "embeddings": "llm/embed.safetensors", "tokenizer": "llm/tokenizer.json",
            "n_layers": cfg.num_hidden_layers, "kv_heads": cfg.num_key_value_heads, "head_dim": hd,
            "hidden_size": cfg.hidden_size, "add_special_tokens": True}


def export_bundle(out: str | os.PathLike, checkpoint: str | None = None, llm: str | None = None,
                  opts: ExportOptions | None = None, say: Callable[[str], None] = print,
                  task: str | None = None, threshold: float | None = None) -> dict:
    opts = opts or ExportOptions()
    built = {"fp32", *opts.encoder_variants, *(("int8-static",) if opts.calibration and opts.static_int8 else ())}
    if opts.encoder_default not in built:
        raise BundleError(f"--encoder-default {opts.encoder_default}: this export builds the encoder variants "
                          f"{', '.join(sorted(built))}; add it to --encoder-variants (int8-static needs --calibration)")
    if opts.accuracy_level and (opts.backend != "onnx" or opts.bits == 16):
        raise BundleError("--accuracy-level sets the compute type of onnxruntime's 4/8-bit MatMulNBits: it needs "
                          "--backend onnx with --bits 4 or 8")
    if opts.backend == "onnx":
        if opts.quant not in (None, "int8", "fp16") or opts.double_quant or opts.max_drift is not None:
            raise BundleError("--backend onnx quantizes with onnxruntime's MatMulNBits: --bits 4/8 (block "
                              "--block-size) or 16 (fp16); --quant nf4/fp4, --double-quant and --max-drift are "
                              "bitsandbytes-only")
        scheme = QuantScheme(opts.bits, {4: "matmulnbits-int4", 8: "matmulnbits-int8", 16: "fp16"}[opts.bits],
                             False, opts.block_size if opts.bits != 16 else 0, False)
    else:
        scheme = QuantScheme.parse(opts.bits, opts.quant, opts.double_quant, opts.quantize_embeddings)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out} exists and is not an empty folder: choose another --out or remove it first")
    stale = remove_stale_partials(out)  # work folders of killed exports: removed when their process is dead
    for p in stale.removed:
        say(f"removed a stale partial export: {p.describe()}")
    for p in stale.kept:
        say(f"kept a partial export: {p.describe()}")
    t0 = time.time()
    ck, source, digest = _open(checkpoint)
    if task is not None:
        from respi_edge.runtime.prompts import get_task

        ck.meta["task"] = get_task(task).id
    if threshold is not None:
        ck.meta["threshold"] = float(threshold)
    llm_spec = llm if llm is not None else ck.meta.get("base_llm")
    models = Models(ck, llm_spec)
    base = resolve_llm(llm_spec)
    config, tokenizer = load_config(base), load_tokenizer(base)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_partial(out)
    try:
        llm_dir = tmp / "llm"
        if opts.backend == "onnx":
            say(f"LLM: merging LoRA in float32, exporting the trunk to ONNX, {scheme.quant}")
            onnx_llm = write_onnx_llm(ck, models, llm_dir, scheme, tokenizer, opts.accuracy_level)
            info = {"files": [onnx_llm["trunk"].split("/", 1)[1]], "tensors": None}
        else:
            plan = None
            if opts.max_drift is not None:
                plan_info = drift_plan(ck, models, opts, scheme, say)
                plan = plan_info["plan"]
            say(f"LLM: merging LoRA in float32 and writing {scheme.bits}-bit {scheme.quant} shards")
            llm_part = ck.part(ckpt.LLM_PREFIX)
            if not ck.has_llm_weights:
                llm_part = {**base_llm_weights(base), **llm_part}
            if not opts.parity:
                models.release()  # the drift planner's merged model is not needed again
            info = write_llm(merged_tensors(llm_part, ck.hparams.llm_lora_alpha, mmapped=True), llm_dir,
                             scheme, opts.shard_bytes, plan=plan)
            del llm_part
            config.save_pretrained(llm_dir)
            tokenizer.save_pretrained(llm_dir)

        say("encoder + projector: exporting ONNX")
        encoder = encoder_from_checkpoint(ck)
        aligner = torch.nn.Linear(ck.hparams.enc_dim, ck.hparams.d_llm)
        aligner.load_state_dict({"weight": ck.state[ckpt.ALIGNER_W].float(), "bias": ck.state[ckpt.ALIGNER_B].float()})
        variants = {"fp32": "encoder.onnx"}
        export_fp32(encoder, aligner, tmp / "encoder.onnx")
        del encoder
        if "fp16" in opts.encoder_variants:
            export_fp16(tmp / "encoder.onnx", tmp / "encoder.fp16.onnx")
            variants["fp16"] = "encoder.fp16.onnx"
        if "int8" in opts.encoder_variants:
            export_int8(tmp / "encoder.onnx", tmp / "encoder.int8.onnx")
            variants["int8"] = "encoder.int8.onnx"
        if opts.calibration and opts.static_int8:  # static int8 with activation ranges from real recordings
            from respi_edge.calibration.static_int8 import calibration_specs, export_int8_static

            say("encoder: static int8 calibration")
            export_int8_static(tmp / "encoder.onnx", tmp / "encoder.int8s.onnx", calibration_specs(opts.calibration))
            variants["int8-static"] = "encoder.int8s.onnx"
        tuning = optimize_variants({v: tmp / rel for v, rel in variants.items()}, say) if opts.optimize_encoder else {}
        if opts.accuracy_level:
            tuning["matmulnbits_accuracy_level"] = opts.accuracy_level

        save_file({"weight": ck.state[ckpt.HEAD_W].float().contiguous(),
                   "bias": ck.state[ckpt.HEAD_B].float().contiguous()}, str(tmp / "head.safetensors"))
        cfg_dir = tmp / "configs"
        cfg_dir.mkdir()
        for name in ("tasks.tsv", "prompt_parts.tsv", "dms_maps.tsv"):
            (cfg_dir / name).write_bytes((importlib.resources.files("respi_edge.configs") / name).read_bytes())
        frontend = {k: getattr(contract, k) for k in dir(contract) if k.isupper()}
        (tmp / "frontend.json").write_text(json.dumps(frontend, indent=1, default=list))

        hp = ck.hparams.to_dict()
        caveats = list(ck.meta.get("caveats", []))
        if base.caveat and base.caveat not in caveats:
            caveats.append(base.caveat)
        man = B.new_manifest(
            backend=opts.backend, name=ck.meta.get("name", Path(source).name), task=ck.meta.get("task"),
            threshold=float(ck.meta.get("threshold", 0.5)), untrained=bool(ck.meta.get("untrained")),
            caveats=caveats, source={"checkpoint": source, "sha256": digest, "base_llm": base.name, "epoch": ck.epoch},
            hparams=hp, quantization={**scheme.to_dict(), **({"layer_plan": plan_info["plan"], "drift_budget": plan_info}
                                                             if opts.max_drift is not None else {})},
            llm={"dir": "llm", "format": f"respi-edge-llm/{scheme.bits}bit", "tensors": info["tensors"]},
            encoder_variants=variants,
            sizes={"llm_bytes": sum(f.stat().st_size for f in llm_dir.rglob("*")
                                    if f.is_file() and not f.name.startswith("tokenizer"))},
            versions=versions(), onnx_llm=onnx_llm if opts.backend == "onnx" else None)
        man["encoder"]["default"] = opts.encoder_default
        if tuning:
            man["tuning"] = tuning
        man["files"] = B.file_table(tmp)  # hashed once: parity reads the bundle through it, the seal reuses it
        if opts.parity:
            from respi_edge.runtime.prompts import get_task

            task = ck.meta.get("task") or DEMO_TASK
            man["parity_task"] = task
            man["parity"] = compute_parity(models, tmp, man, opts, get_task(task).prompt, say)
        man["seconds"] = round(time.time() - t0, 1)
        B.write_manifest(tmp, man, files=man["files"])
        for p in [tmp, *tmp.rglob("*")]:  # mkdtemp and safetensors create owner-only files
            p.chmod(0o755 if p.is_dir() else 0o644)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return B.read_manifest(out, verify_hashes=False)
