"""Edge bundles: a self-verifying folder the runtime loads without the training code or the checkpoint.

    bundle/
      manifest.json          format, source checkpoint sha256, quantization, parity, every file's sha256 + size
      MANIFEST.sha256        sha256 of manifest.json (a flipped byte in the manifest itself is caught too)
      llm/                   LLM without LM head (sharded safetensors, LoRA merged, quantized), config, tokenizer
      encoder.onnx           spectrogram (B, 256, 64) → audio embeddings (B, 64, d_llm); + .fp16 / .int8 variants
      head.safetensors       the flatten-head
      configs/               task catalogue and prompt parts used at export
      frontend.json          the front-end contract (REFERENCE.md §1)

Hashes give integrity (truncation, bit rot, a half-copied bundle), not authenticity: sign bundles if that matters.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .hashing import sha256_file
from .errors import BundleError

FORMAT = "respi-edge-bundle/1"
MANIFEST = "manifest.json"
MANIFEST_SUM = "MANIFEST.sha256"


def file_table(root: Path) -> dict[str, dict]:
    """sha256 and size of every file under root except the manifest pair, by relative POSIX path."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name not in (MANIFEST, MANIFEST_SUM):
            out[p.relative_to(root).as_posix()] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return out


def write_manifest(root: Path, manifest: dict) -> None:
    manifest = {**manifest, "format": FORMAT, "files": file_table(root)}
    data = json.dumps(manifest, indent=1, sort_keys=False).encode()
    (root / MANIFEST).write_bytes(data)
    (root / MANIFEST_SUM).write_text(hashlib.sha256(data).hexdigest() + "  " + MANIFEST + "\n")


@dataclass
class Verification:
    ok: bool
    problems: list[str]
    files: int
    bytes: int


def verify(root: str | os.PathLike) -> tuple[dict, Verification]:
    """Read the manifest and check every listed file (presence, size, sha256) and that nothing is extra."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"{root}: bundle folder not found")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{root}: no {MANIFEST}; not a respi-edge bundle, or an export that did not finish")
    data = mpath.read_bytes()
    problems: list[str] = []
    sum_path = root / MANIFEST_SUM
    if not sum_path.is_file():
        problems.append(f"{MANIFEST_SUM} is missing")
    elif sum_path.read_text().split()[0:1] != [hashlib.sha256(data).hexdigest()]:
        problems.append(f"{MANIFEST} does not match {MANIFEST_SUM} (the manifest was modified)")
    try:
        man = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath}: unreadable manifest ({e}); the bundle is damaged, export it again") from None
    if not isinstance(man, dict):
        raise BundleError(f"{mpath}: not a bundle manifest (a JSON object is expected); export it again")
    if man.get("format") != FORMAT:
        raise BundleError(f"{root}: unknown bundle format {man.get('format')!r} (this respi-edge reads {FORMAT})")
    listed = man.get("files")
    if not isinstance(listed, dict) or not listed:
        raise BundleError(f"{mpath}: the manifest lists no files; the bundle is damaged, export it again")
    total = 0
    for rel, info in listed.items():
        parts = Path(rel).parts
        if Path(rel).is_absolute() or ".." in parts or not isinstance(info, dict) \
                or not isinstance(info.get("sha256"), str) or not isinstance(info.get("bytes"), int):
            raise BundleError(f"{mpath}: malformed file entry {rel!r}; the bundle is damaged, export it again")
        p = root / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
            continue
        size = p.stat().st_size
        total += size
        if size != info["bytes"]:
            problems.append(f"{rel}: {size} bytes, manifest says {info['bytes']} (truncated or replaced)")
        elif sha256_file(p) != info["sha256"]:
            problems.append(f"{rel}: sha256 mismatch (modified or corrupted)")
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in listed and p.name not in (MANIFEST, MANIFEST_SUM):
            problems.append(f"{rel}: not listed in the manifest")
    return man, Verification(not problems, problems, len(listed), total)


def load_bundle(root: str | os.PathLike, *, device: str = "auto", encoder_variant: str | None = None,
                verify_hashes: bool = True, threads: int | None = None, manifest: dict | None = None):
    """A verified bundle as a model with the RespLLM interface (tokenize / embed_audio / prefix / score)."""
    root = Path(root)
    if manifest is not None:  # an export checking its own, not yet finished bundle
        man = manifest
    elif verify_hashes:
        man, v = verify(root)
        if not v.ok:
            raise BundleError(f"{root}: refusing a damaged bundle: " + "; ".join(v.problems[:5])
                              + (f" (+{len(v.problems) - 5} more)" if len(v.problems) > 5 else "")
                              + ". Export it again or copy it completely.")
    else:
        man = json.loads((root / MANIFEST).read_text())
    backend = man.get("backend", "torch-bnb")
    if backend == "torch-bnb":
        from .backends.torch_bundle import TorchBundleModel

        return TorchBundleModel(root, man, device=device, encoder_variant=encoder_variant, threads=threads)
    if backend == "onnx":
        from .backends.ort_bundle import OrtBundleModel

        return OrtBundleModel(root, man, device=device, encoder_variant=encoder_variant, threads=threads)
    raise BundleError(f"{root}: unknown backend {backend!r}")


def summary(man: dict, v: Verification | None = None) -> list[str]:
    q = man.get("quantization", {})
    lines = [
        f"bundle      {man.get('name')}  (format {man.get('format')}, backend {man.get('backend')})",
        f"task        {man.get('task')}  threshold {man.get('threshold')}",
        f"source      {man.get('source', {}).get('checkpoint')}  sha256 {str(man.get('source', {}).get('sha256'))[:16]}…",
        f"base LLM    {man.get('source', {}).get('base_llm')}",
        f"LLM         {q.get('bits')}-bit {q.get('quant')}" + (" + double quant" if q.get("double_quant") else "")
        + f"  {man.get('sizes', {}).get('llm_bytes', 0) / 1e6:.1f} MB",
        "encoder     " + ", ".join(f"{k}: {v_}" for k, v_ in man.get("encoder", {}).get("variants", {}).items()),
    ]
    par = man.get("parity", {})
    if par:
        lines.append("parity      " + ", ".join(f"{k} {v_:.2e}" for k, v_ in par.items() if isinstance(v_, float)))
    for c in man.get("caveats", []):
        lines.append(f"caveat      {c}")
    if v is not None:
        lines.append(f"verified    {v.files} files, {v.bytes / 1e6:.1f} MB: " + ("OK" if v.ok else
                     "FAILED: " + "; ".join(v.problems)))
    return lines


def spec_array(spec) -> np.ndarray:
    a = spec.detach().cpu().numpy() if hasattr(spec, "detach") else np.asarray(spec)
    return a.astype(np.float32, copy=False)
