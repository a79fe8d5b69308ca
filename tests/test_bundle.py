"""Bundle manifest checks on small hand-made bundles, and the bitsandbytes CPU trap in the quantized LLM loader."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from respi_edge.runtime.bundle import MANIFEST, MANIFEST_SUM, verify, write_manifest
from respi_edge.runtime.errors import BundleError


def _bundle(root: Path) -> Path:
    (root / "llm").mkdir(parents=True)
    (root / "llm" / "model-00001-of-00001.safetensors").write_bytes(b"weights" * 100)
    (root / "head.safetensors").write_bytes(b"head")
    write_manifest(root, {"backend": "torch-bnb", "name": "t"})
    return root


def _rewrite_manifest(root: Path, man) -> None:
    """Replace the manifest and re-seal it, as someone editing a bundle by hand would."""
    data = json.dumps(man).encode()
    (root / MANIFEST).write_bytes(data)
    (root / MANIFEST_SUM).write_text(hashlib.sha256(data).hexdigest() + "  " + MANIFEST + "\n")


def test_manifest_lists_every_file_with_hash_and_size(tmp_path):
    b = _bundle(tmp_path / "b")
    man, v = verify(b)
    assert v.ok and v.files == 2 and v.bytes == 704
    assert man["files"]["head.safetensors"] == {"sha256": hashlib.sha256(b"head").hexdigest(), "bytes": 4}
    (b / MANIFEST).write_bytes((b / MANIFEST).read_bytes().replace(b'"name": "t"', b'"name": "u"'))
    assert any("manifest was modified" in p for p in verify(b)[1].problems)


@pytest.mark.parametrize("entry", ["../outside.bin", "/etc/hostname"])
def test_paths_outside_the_bundle_are_refused(tmp_path, entry):
    b = _bundle(tmp_path / "b")
    man = json.loads((b / MANIFEST).read_text())
    man["files"][entry] = {"sha256": "0" * 64, "bytes": 1}
    _rewrite_manifest(b, man)
    with pytest.raises(BundleError, match="malformed file entry"):
        verify(b)


@pytest.mark.parametrize("man", [[1, 2], {"format": "respi-edge-bundle/1"},
                                 {"format": "respi-edge-bundle/1", "files": {"head.safetensors": {"bytes": 4}}},
                                 {"format": "respi-edge-bundle/0", "files": {}}])
def test_malformed_manifests_are_bundle_errors(tmp_path, man):
    b = _bundle(tmp_path / "b")
    _rewrite_manifest(b, man)
    with pytest.raises(BundleError):
        verify(b)


def test_export_refuses_a_file_as_output(tmp_path):
    from respi_edge.export.exporter import export_bundle

    f = tmp_path / "x"
    f.write_text("not a folder")
    with pytest.raises(BundleError, match="not an empty folder"):
        export_bundle(f, say=lambda m: None)


def _has_avx512_bf16() -> bool:
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def test_quantized_llm_with_trap_shapes_loads_and_runs(tmp_path):
    """intermediate 200: gate/up have out % 32 != 0, down has in % 64 != 0 — the packed AVX512-BF16 kernel of
    bitsandbytes 0.50 crashes on both (ENVIRONMENT.md §3); the loader routes them to the generic kernel."""
    from transformers import AutoModel, LlamaConfig

    from respi_edge.export.llm_writer import write_llm
    from respi_edge.export.quantize import QuantScheme
    from respi_edge.runtime.backends.bnb_llm import avoid_avx512bf16_trap, load_quantized_llm
    from respi_edge.runtime.shards import read_sharded

    cfg = LlamaConfig(hidden_size=64, intermediate_size=200, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256)
    torch.manual_seed(0)
    ref = AutoModel.from_config(cfg).eval()
    x = torch.randn(1, 12, 64)
    with torch.inference_mode():
        want = ref(inputs_embeds=x).last_hidden_state
    scheme = QuantScheme.parse(4, "nf4", False)
    write_llm(iter(ref.state_dict().items()), tmp_path / "llm", scheme, shard_bytes=10_000)
    assert len(list((tmp_path / "llm").glob("model-*-of-*.safetensors"))) > 1  # sharded
    q = load_quantized_llm(cfg, read_sharded(tmp_path / "llm"), scheme.to_dict())
    # bitsandbytes enables the packed kernel only on CPUs with avx512_bf16: enable it everywhere, so the routing
    # is checked on any CPU (the failing call itself only where the kernel exists)
    from bitsandbytes.nn import Linear4bit

    layers = [m for m in q.modules() if isinstance(m, Linear4bit)]
    assert len(layers) == 7 * cfg.num_hidden_layers
    for m in layers:
        m.support_avx512bf16_for_cpu = True
    assert avoid_avx512bf16_trap(q) == 3 * cfg.num_hidden_layers
    rerouted = [n for n, m in q.named_modules() if getattr(m, "support_avx512bf16_for_cpu", True) is False]
    assert sorted({n.rsplit(".", 1)[-1] for n in rerouted}) == ["down_proj", "gate_proj", "up_proj"]
    assert len(rerouted) == 3 * cfg.num_hidden_layers
    with torch.inference_mode():
        got = q(inputs_embeds=x).last_hidden_state
    cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0).item()
    assert cos > 0.95, cos
    if _has_avx512_bf16():  # the trap is real on this CPU: without the reroute the same call fails
        q.get_submodule(rerouted[0]).support_avx512bf16_for_cpu = True
        with pytest.raises((AssertionError, RuntimeError)):
            with torch.inference_mode():
                q(inputs_embeds=x)


def test_a_link_leading_out_of_the_bundle_is_refused(tmp_path):
    """A listed file that is a symlink to a file outside the folder, even with the right bytes, fails verify, and
    the resolver refuses it (and any name the manifest does not list)."""
    from respi_edge.runtime.bundle import open_bundle

    b = _bundle(tmp_path / "b")
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"head")
    (b / "head.safetensors").unlink()
    (b / "head.safetensors").symlink_to(outside)
    man, v = verify(b)
    assert not v.ok and any("link leading out" in p for p in v.problems)
    bundle = open_bundle(b, verify_hashes=False, manifest={**man, "encoder": {"default": "fp32", "variants": {}},
                                                           "hparams": {"d_llm": 8}, "quantization": {},
                                                           "llm": {"dir": "llm"}, "head": "head.safetensors"})
    with pytest.raises(BundleError, match="link leading out"):
        bundle.file("head.safetensors")
    for name in ("config.json", "../outside.safetensors", "/etc/hostname"):
        with pytest.raises(BundleError, match="not one of the bundle's hashed files"):
            bundle.file(name)
    assert bundle.folder("llm") == b / "llm"


def test_calibration_rewrites_only_the_manifest_and_stays_verified(tmp_path):
    b = _bundle(tmp_path / "b")
    man, _ = verify(b)
    files = dict(man["files"])
    write_manifest(b, {**man, "threshold": 0.3}, files=man["files"])
    again, v = verify(b)
    assert v.ok and again["threshold"] == 0.3 and again["files"] == files
    assert not [p.name for p in b.iterdir() if "tmp" in p.name]  # the atomic writes left nothing behind
