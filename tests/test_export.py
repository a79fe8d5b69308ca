"""Export of the golden tiny checkpoint to 4/8/16-bit bundles: verification, tampering, atomicity, parity."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib.resources import files

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import shared_path
from respi_edge.export.exporter import ExportOptions, export_bundle
from respi_edge.runtime.bundle import load_bundle, verify
from respi_edge.runtime.cli import main
from respi_edge.runtime.errors import BundleError


@pytest.fixture(scope="module")
def tiny(tiny_ckpt, tiny_llm):
    return tiny_ckpt, tiny_llm


@pytest.fixture(scope="module")
def bundles(tiny, tmp_path_factory):
    ck, llm = tiny
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    calib = str(files("respi_edge.configs") / "parity" / "manifest.csv")  # 4 real recordings: static int8 is slow
    for bits, variants in ((16, ("fp16", "int8")), (8, ()), (4, ())):
        out[bits] = root / f"b{bits}"
        export_bundle(out[bits], str(ck), str(llm), ExportOptions(bits=bits, encoder_variants=variants,
                                                                  calibration=calib if bits == 16 else None),
                      say=lambda m: None, task="S7")
    return out


def test_bundles_verify_and_record_parity(bundles, tiny):
    from respi_edge.runtime.hashing import sha256_file

    for bits, b in bundles.items():
        man, v = verify(b)
        assert v.ok, v.problems
        assert man["source"]["sha256"] == sha256_file(tiny[0]) and man["task"] == "S7"
        assert man["quantization"]["bits"] == bits
        p = man["parity"]
        assert p["encoder_fp32_max_abs"] < 1e-4 and p["encoder_fp32_batch3_vs_single_max_abs"] < 1e-5
        assert p["encoder_fp32_batch1_max_abs"] < 1e-4 and p["encoder_fp32_batch3_max_abs"] < 1e-4
        assert p["merged_vs_unmerged_logits_max_abs"] < 1e-4
        assert len(p["inputs"]) >= 5 and not any(f.endswith(".pt") or f.endswith(".pkl") for f in man["files"])
    assert bundles[16].joinpath("encoder.int8.onnx").is_file()
    p16 = verify(bundles[16])[0]["parity"]
    assert p16["encoder_fp16_max_abs"] < 5e-2
    # static int8 (ranges from real recordings) is recorded next to dynamic int8, both far from fp32 exactness
    assert 0 < p16["encoder_int8-static_max_abs"] and 0 < p16["encoder_int8_max_abs"]


def test_four_bit_llm_is_at_most_30_percent_of_fp16(bundles):
    b4 = verify(bundles[4])[0]["sizes"]["llm_bytes"]
    b16 = verify(bundles[16])[0]["sizes"]["llm_bytes"]
    assert b4 <= 0.30 * b16, (b4, b16)


@pytest.mark.parametrize("bits,tol", [(16, 5e-3), (8, 0.15), (4, 0.5)])
def test_bundle_scores_golden_cases_like_the_core(bundles, bits, tol):
    man = json.loads(shared_path("golden", "respllm_tiny", "manifest.json").read_text())
    exp = np.load(shared_path("golden", "respllm_tiny", "expected.npz"))
    model = load_bundle(bundles[bits])
    worst = 0.0
    for c in man["cases"]:
        spec = torch.from_numpy(exp[f"{c['case']}/spec"])
        pre = model.prefix(model.tokenize(c["prompt"]), model.tokenize(c["dms"]))
        logits = model.score(pre, model.embed_audio(spec))[0].float()
        full = model.forward(spec, model.tokenize(c["prompt"]), model.tokenize(c["dms"]))[0].float()
        assert (logits - full).abs().max().item() < 1e-2  # prefix reuse on the quantized trunk
        worst = max(worst, float(np.abs(logits.numpy() - exp[f"{c['case']}/logits"]).max()))
    assert worst < tol


def test_api_load_takes_a_bundle_or_a_checkpoint_and_refuses_a_mismatch(bundles, tiny):
    """One entry for every source; each result satisfies the one Backend protocol; wrong combinations are named
    errors, not silent fallbacks."""
    from respi_edge.runtime import api
    from respi_edge.runtime.backends import Backend
    from respi_edge.runtime.errors import ModelError
    from respi_edge.runtime.model import RespLLM

    b = api.load(bundles[16], device="cpu", encoder_variant="fp16")
    assert isinstance(b, Backend) and b.device == "cpu" and "encoder ONNX fp16" in b.info.caveats[-1]
    assert api.Session(b, "S7").score_spec(np.load(shared_path("golden", "respllm_tiny", "expected.npz"))
                                           ["c2_S7_full/spec"]).threshold == b.info.threshold
    ck = api.load(str(tiny[0]), llm=str(tiny[1]))
    assert isinstance(ck, RespLLM) and isinstance(ck, Backend) and ck.device == "cpu"
    with pytest.raises(ModelError, match="torch-bnb bundle; engine onnx"):
        api.load(bundles[16], engine="onnx")
    with pytest.raises(ModelError, match="apply to checkpoints"):
        api.load(bundles[16], llm=str(tiny[1]))
    with pytest.raises(ModelError, match="runs exported bundles"):
        api.load(str(tiny[0]), llm=str(tiny[1]), engine="onnx")
    with pytest.raises(BundleError, match="encoder variant 'int8-static' not in this bundle"):
        api.load(bundles[8], encoder_variant="int8-static")


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def test_any_flipped_byte_is_refused(bundles, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(bundles[4], b)
    files = [p for p in b.rglob("*") if p.is_file()]
    assert len(files) >= 10
    for p in files:
        off = p.stat().st_size // 2
        _flip(p, off)
        with pytest.raises(BundleError, match="refusing a damaged bundle|unreadable manifest"):
            load_bundle(b)
        r = CliRunner().invoke(main, ["inspect", str(b)])
        assert r.exit_code != 0, p
        _flip(p, off)
    assert verify(b)[1].ok


def test_truncated_missing_extra_and_foreign_files(bundles, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(bundles[4], b)
    shard = next((b / "llm").glob("model-*.safetensors"))
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    assert any("truncated" in p for p in verify(b)[1].problems)
    shard.write_bytes(data)
    (b / "head.safetensors").rename(b / "head.bak")
    problems = verify(b)[1].problems
    assert any("head.safetensors: missing" in p for p in problems) and any("head.bak" in p for p in problems)
    (b / "head.bak").rename(b / "head.safetensors")
    (b / "MANIFEST.sha256").unlink()
    assert not verify(b)[1].ok
    with pytest.raises(BundleError, match="not found"):
        verify(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path / "empty")


def test_failed_export_leaves_nothing(tiny, tmp_path, monkeypatch):
    import respi_edge.export.exporter as ex

    def boom(*a, **k):
        raise RuntimeError("simulated crash during ONNX export")

    monkeypatch.setattr(ex, "export_fp32", boom)
    with pytest.raises(RuntimeError):
        export_bundle(tmp_path / "out", str(tiny[0]), str(tiny[1]), ExportOptions(bits=4, parity=False),
                      say=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_killed_export_leaves_no_complete_looking_bundle(tiny, tmp_path):
    out = tmp_path / "bundle"
    proc = subprocess.Popen([sys.executable, "-m", "respi_edge.runtime.cli", "export", "--checkpoint", str(tiny[0]),
                             "--llm", str(tiny[1]), "--bits", "4", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once the LLM shards are on disk, mid-export
        partial = [p for p in tmp_path.glob(".bundle.partial-*") if (p / "llm" / "config.json").exists()]
        if partial:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert partial, "the export never reached the LLM stage"
    assert not out.exists()
    for p in tmp_path.iterdir():
        assert not (p / "manifest.json").exists()
        with pytest.raises(BundleError):
            load_bundle(p)


def test_existing_output_is_not_overwritten(bundles, tiny):
    with pytest.raises(BundleError, match="not an empty folder"):
        export_bundle(bundles[4], str(tiny[0]), str(tiny[1]), ExportOptions(bits=4), say=lambda m: None)


def test_predict_and_inspect_cli_on_a_bundle(bundles):
    wav = shared_path("golden", "mel", "inputs", "a3_lung_8k_mono_int16.wav")
    r = CliRunner().invoke(main, ["predict", str(wav), "--bundle", str(bundles[16]), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["task"] == "S7" and 0 <= out["prob"] <= 1
    assert any("quantized bundle" in c for c in out["caveats"])
    r = CliRunner().invoke(main, ["inspect", str(bundles[4])])
    assert r.exit_code == 0 and "verified" in r.output and "OK" in r.output


def test_drift_budget_keeps_sensitive_layers_at_higher_precision(tiny, bundles, tmp_path):
    calib = str(files("respi_edge.configs") / "parity" / "manifest.csv")
    out = tmp_path / "budget"
    man = export_bundle(out, str(tiny[0]), str(tiny[1]),
                        ExportOptions(bits=4, encoder_variants=(), calibration=calib, max_drift=5e-4,
                                      calibration_size=3, static_int8=False),
                        say=lambda m: None, task="S7")
    q = man["quantization"]
    plan = {int(k): v for k, v in q["layer_plan"].items()}
    budget = q["drift_budget"]
    # two decoder layers and the embedding table (quantized in a bundle too: plan key -1)
    assert set(plan) == {-1, 0, 1} and budget["within_budget"] and budget["drift"] <= 5e-4
    assert budget["n_recordings"] == 3  # --calibration-size
    assert any(b > 4 for b in plan.values())  # an all-4-bit model drifts more than 5e-4 (all-fp16: ~1.5e-4)
    assert budget["steps"][0]["drift"] > 5e-4 and len(budget["sensitivity"]) == 3
    assert verify(out)[1].ok
    p_plan = man["parity"]["bundle_vs_reference_prob_max_abs"]
    p_all4 = verify(bundles[4])[0]["parity"]["bundle_vs_reference_prob_max_abs"]
    assert p_plan < p_all4
