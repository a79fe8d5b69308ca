"""Edge bundles: a self-verifying folder the runtime loads without the training code or the checkpoint.

    bundle/
      manifest.json          format, source checkpoint sha256, quantization, parity, every file's sha256 + size
      MANIFEST.sha256        sha256 of manifest.json (a flipped byte in the manifest itself is caught too)
      llm/                   LLM without LM head (sharded safetensors, LoRA merged, quantized), config, tokenizer
      encoder.onnx           spectrogram (B, 256, 64) → audio embeddings (B, 64, d_llm); + .fp16 / .int8 variants
      head.safetensors       the flatten-head
      configs/               task catalogue and prompt parts used at export
      frontend.json          the front-end contract (REFERENCE.md §1)

This module is the only owner of that format: the exporter and the threshold calibration write manifests with
`write_manifest`, every reader goes through `open_bundle` (a typed `BundleManifest`, paths resolved by
`Bundle.file`, confined to the hashed file list inside the folder), and the backends receive plain paths and
values from `load_bundle`, importing nothing back.

Hashes give integrity (truncation, bit rot, a half-copied bundle), not authenticity: sign bundles if that matters.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from . import atomic
from .errors import BundleError
from .hashing import sha256_file
from .hparams import HParams
from .info import DISCLAIMER, ModelInfo

FORMAT = "respi-edge-bundle/1"
MANIFEST = "manifest.json"
MANIFEST_SUM = "MANIFEST.sha256"
ONNX_OPSET = 17  # every ONNX graph in a bundle (encoder variants, the LLM trunk)
BACKENDS = ("torch-bnb", "onnx")


def file_table(root: Path) -> dict[str, dict]:
    """sha256 and size of every file under root except the manifest pair, by relative POSIX path."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name not in (MANIFEST, MANIFEST_SUM):
            out[p.relative_to(root).as_posix()] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return out


def write_manifest(root: Path, manifest: dict, *, files: dict[str, dict] | None = None) -> dict:
    """Seal a bundle: manifest.json (format + file table) and its checksum, each replaced atomically.

    `files`: the table to keep (a calibration changes only the threshold, not a weight file); default: hash the
    folder. The checksum is written last, so a crash in between leaves a bundle that verify() flags, never one
    that passes with an unsealed manifest."""
    manifest = {**manifest, "format": FORMAT, "files": files if files is not None else file_table(root)}
    data = json.dumps(manifest, indent=1, sort_keys=False).encode()
    atomic.write_bytes(root / MANIFEST, data)
    atomic.write_text(root / MANIFEST_SUM, hashlib.sha256(data).hexdigest() + "  " + MANIFEST + "\n")
    return manifest


def new_manifest(*, backend: str, name: str, task: str | None, threshold: float, untrained: bool, caveats: list[str],
                 source: dict, hparams: dict, quantization: dict, llm: dict, encoder_variants: dict[str, str],
                 sizes: dict, versions: dict, onnx_llm: dict | None = None) -> dict:
    """A new bundle's manifest (everything but the file table, which `write_manifest` adds)."""
    man = {"backend": backend, "name": name, "task": task, "threshold": float(threshold), "untrained": untrained,
           "caveats": caveats, "disclaimer": DISCLAIMER, "source": source, "hparams": hparams,
           "quantization": quantization, "llm": llm,
           "encoder": {"default": "fp32", "variants": encoder_variants, "opset": ONNX_OPSET},
           "head": "head.safetensors", "configs": "configs", "frontend": "frontend.json", "sizes": sizes,
           "versions": versions, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if onnx_llm is not None:
        man["onnx_llm"] = {**onnx_llm, "opset": ONNX_OPSET}
    return man


def files_identity(man: dict) -> str:
    """Hash of a bundle's files (weights, encoder variants, configs) as its manifest lists them: the threshold and
    its calibration live only in manifest.json, so re-calibrating a bundle keeps its cached scores."""
    return hashlib.sha256(json.dumps(man["files"], sort_keys=True).encode()).hexdigest()


def _safe_rel(rel) -> bool:
    """A relative POSIX path that stays inside the folder (no absolute path, no `..`, no drive)."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        return False
    p = PurePosixPath(rel)
    return not p.is_absolute() and ".." not in p.parts and not Path(rel).is_absolute()


@dataclass(frozen=True)
class BundleManifest:
    """manifest.json as the runtime reads it; `raw` is the whole document as written (parity, versions, ...)."""

    backend: str
    name: str
    task: str | None
    threshold: float
    untrained: bool
    caveats: tuple[str, ...]
    hparams: HParams
    quantization: dict
    llm_dir: str
    encoder_default: str
    encoder_variants: dict[str, str]
    head: str
    onnx_llm: dict | None
    files: dict[str, dict]
    raw: dict

    @classmethod
    def from_dict(cls, man: dict, where: str = "bundle") -> "BundleManifest":
        try:
            backend = man.get("backend", "torch-bnb")
            if backend not in BACKENDS:
                raise BundleError(f"{where}: unknown backend {backend!r} (this respi-edge runs {', '.join(BACKENDS)})")
            enc = man["encoder"]
            variants = dict(enc["variants"])
            onnx_llm = man.get("onnx_llm")
            if backend == "onnx" and not isinstance(onnx_llm, dict):
                raise KeyError("onnx_llm")
            return cls(backend=backend, name=str(man.get("name", Path(where).name)), task=man.get("task"),
                       threshold=float(man.get("threshold", 0.5)), untrained=bool(man.get("untrained")),
                       caveats=tuple(man.get("caveats", [])), hparams=HParams(**man["hparams"]),
                       quantization=dict(man["quantization"]), llm_dir=str(man["llm"]["dir"]),
                       encoder_default=str(enc["default"]), encoder_variants=variants, head=str(man["head"]),
                       onnx_llm=onnx_llm, files=dict(man.get("files") or {}), raw=man)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BundleError(f"{where}: the manifest lacks or mangles {e}; the bundle is damaged or from another "
                              f"respi-edge version, export it again") from None

    def encoder_variant(self, variant: str | None = None) -> str:
        """The variant to run (None: the bundle's default); BundleError naming the ones it has."""
        v = variant or self.encoder_default
        if v not in self.encoder_variants:
            raise BundleError(f"encoder variant {v!r} not in this bundle ({', '.join(self.encoder_variants)})")
        return v

    def model_info(self, source: str, engine_caveat: str) -> ModelInfo:
        return ModelInfo(name=self.name, untrained=self.untrained, caveats=[*self.caveats, engine_caveat],
                         threshold=self.threshold, task=self.task, source=source)

    def engine_caveat(self, variant: str) -> str:
        q = self.quantization
        if self.backend == "onnx":
            return f"ONNX bundle: LLM {q['bits']}-bit {q['quant']}; encoder ONNX {variant}"
        return (f"quantized bundle: LLM {q['bits']}-bit {q['quant']}" + (" (double quant)" if q.get("double_quant")
                                                                            else "") + f"; encoder ONNX {variant}")


@dataclass(frozen=True)
class Bundle:
    """A bundle folder and its typed manifest; every path a reader opens comes from `file` / `folder`."""

    root: Path
    manifest: BundleManifest

    def file(self, rel: str) -> Path:
        """The path of one hashed file, refused unless the manifest lists it and it stays inside the folder
        (no absolute path, no `..`, no link leading out)."""
        if not _safe_rel(rel) or rel not in self.manifest.files:
            raise BundleError(f"{self.root}: {rel!r} is not one of the bundle's hashed files; the manifest is "
                              f"damaged, export the bundle again")
        return self._inside(self.root / rel, rel)

    def folder(self, rel: str) -> Path:
        """A folder of hashed files (the LLM's): every listed file under it must resolve inside the bundle."""
        if not _safe_rel(rel):
            raise BundleError(f"{self.root}: malformed folder entry {rel!r}; export the bundle again")
        listed = [f for f in self.manifest.files if f.startswith(rel.rstrip("/") + "/")]
        if not listed:
            raise BundleError(f"{self.root}: the manifest lists no files under {rel!r}; export the bundle again")
        for f in listed:
            self.file(f)
        return self._inside(self.root / rel, rel)

    def _inside(self, p: Path, rel: str) -> Path:
        if not p.resolve().is_relative_to(self.root.resolve()):
            raise BundleError(f"{self.root}: {rel} is a link leading out of the bundle; refusing it")
        return p

    def encoder_file(self, variant: str | None = None) -> Path:
        return self.file(self.manifest.encoder_variants[self.manifest.encoder_variant(variant)])


@dataclass
class Verification:
    ok: bool
    problems: list[str]
    files: int
    bytes: int


def verify(root: str | os.PathLike) -> tuple[dict, Verification]:
    """Read the manifest and check every listed file (presence, size, sha256, inside the folder) and that nothing
    is extra."""
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
    inside = root.resolve()
    for rel, info in listed.items():
        if not _safe_rel(rel) or not isinstance(info, dict) \
                or not isinstance(info.get("sha256"), str) or not isinstance(info.get("bytes"), int):
            raise BundleError(f"{mpath}: malformed file entry {rel!r}; the bundle is damaged, export it again")
        p = root / rel
        if not p.resolve().is_relative_to(inside):
            problems.append(f"{rel}: a link leading out of the bundle")
            continue
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
        if p.is_symlink() and not p.resolve().is_relative_to(inside) and rel not in listed:
            problems.append(f"{rel}: a link leading out of the bundle")
        elif p.is_file() and rel not in listed and p.name not in (MANIFEST, MANIFEST_SUM):
            problems.append(f"{rel}: not listed in the manifest")
    check_references(man, mpath)
    return man, Verification(not problems, problems, len(listed), total)


def referenced_paths(man: dict) -> list[tuple[str, str, bool]]:
    """(manifest field, path, is a folder) of every file or folder the runtime opens by a manifest field."""
    out: list[tuple[str, str, bool]] = []

    def add(name: str, rel, folder: bool = False) -> None:
        if rel is not None:
            out.append((name, rel, folder))

    add("head", man.get("head"))
    add("frontend", man.get("frontend"))
    add("configs", man.get("configs"), True)
    llm = man.get("llm")
    add("llm.dir", llm.get("dir") if isinstance(llm, dict) else llm, True)
    enc = man.get("encoder")
    variants = enc.get("variants") if isinstance(enc, dict) else None
    for k, v in (variants.items() if isinstance(variants, dict) else []):
        add(f"encoder.variants.{k}", v)
    o = man.get("onnx_llm")
    for k in ("trunk", "embeddings", "tokenizer"):
        add(f"onnx_llm.{k}", o.get(k) if isinstance(o, dict) else None)
    return out


def check_references(man: dict, where) -> None:
    """Every path a manifest field names is a hashed file (or a folder of them) inside the bundle: an edited
    manifest with a recomputed checksum must not point the runtime at a file no hash covers (issue 17 item 3)."""
    listed = man.get("files") or {}
    for name, rel, folder in referenced_paths(man):
        if not _safe_rel(rel):
            raise BundleError(f"{where}: {name} is {rel!r}, a path outside the bundle folder; the manifest was "
                              f"edited or damaged, export the bundle again")
        ok = any(f.startswith(rel.rstrip("/") + "/") for f in listed) if folder else rel in listed
        if not ok:
            raise BundleError(f"{where}: {name} is {rel!r}, which is not one of the bundle's hashed files; the "
                              f"manifest was edited or damaged, export the bundle again")


def refuse_damaged(root, v: Verification, limit: int = 5) -> None:
    if not v.ok:
        raise BundleError(f"{root}: refusing a damaged bundle: " + "; ".join(v.problems[:limit])
                          + (f" (+{len(v.problems) - limit} more)" if len(v.problems) > limit else "")
                          + ". Export it again or copy it completely.")


def read_manifest(root: str | os.PathLike, *, verify_hashes: bool = True) -> dict:
    """The manifest of a bundle as written; verified (every file's hash) unless `verify_hashes` is False."""
    root = Path(root)
    if verify_hashes:
        man, v = verify(root)
        refuse_damaged(root, v)
        return man
    try:
        return json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise BundleError(f"{root}: no {MANIFEST}; not a respi-edge bundle") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{root / MANIFEST}: unreadable manifest ({e}); export the bundle again") from None


def open_bundle(root: str | os.PathLike, *, verify_hashes: bool = True, manifest: dict | None = None) -> Bundle:
    """A bundle with its typed manifest. `manifest`: one already read (and verified), or an export checking its own,
    not yet sealed bundle."""
    root = Path(root)
    man = manifest if manifest is not None else read_manifest(root, verify_hashes=verify_hashes)
    return Bundle(root, BundleManifest.from_dict(man, str(root)))


def is_bundle(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


def load_bundle(root: str | os.PathLike, *, device: str = "auto", encoder_variant: str | None = None,
                verify_hashes: bool = True, threads: int | None = None, manifest: dict | None = None):
    """A verified bundle as a model satisfying `backends.Backend` (tokenize / embed_audio / prefix / score)."""
    b = open_bundle(root, verify_hashes=verify_hashes, manifest=manifest)
    m = b.manifest
    variant = m.encoder_variant(encoder_variant)
    info = m.model_info(str(b.root), m.engine_caveat(variant))
    encoder = b.encoder_file(variant)
    head = b.file(m.head)
    if m.backend == "torch-bnb":
        from .backends.torch_bundle import TorchBundleModel

        return TorchBundleModel(b.folder(m.llm_dir), m.quantization, head, encoder, m.hparams, info,
                                device=device, threads=threads)
    from .backends.ort_bundle import OrtBundleModel, OrtLayout

    o = m.onnx_llm
    layout = OrtLayout(n_layers=int(o["n_layers"]), kv_heads=int(o["kv_heads"]), head_dim=int(o["head_dim"]),
                       add_special_tokens=bool(o.get("add_special_tokens", True)))
    return OrtBundleModel(b.file(o["trunk"]), b.file(o["embeddings"]), b.file(o["tokenizer"]), layout, head, encoder,
                          m.hparams, info, quantization=m.quantization, device=device, threads=threads)


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
