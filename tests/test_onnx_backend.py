"""The torch-free backend: whole model in ONNX Runtime, run from a virtual environment without torch.

`.ci/run` builds that environment (`.venv-edge`: `pip install -e .[cpu,audio,plots]`, no torch, no
transformers); RESPI_EDGE_EDGE_PYTHON may point elsewhere. A missing environment fails, it never skips.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, shared_path, write_manifest
from respi_edge.export.exporter import ExportOptions, export_bundle
from respi_edge.runtime.bundle import load_bundle
from respi_edge.runtime.load import load_model


@pytest.fixture(scope="module")
def edge_python():
    py = Path(os.environ.get("RESPI_EDGE_EDGE_PYTHON", ROOT / ".venv-edge" / "bin" / "python"))
    if not py.exists():
        pytest.fail(f"torch-free environment missing ({py}); create it as .ci/run does: python3 -m venv .venv-edge "
                    f"&& .venv-edge/bin/pip install -e '.[cpu,audio,plots]'", pytrace=False)
    r = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True)
    assert r.returncode != 0 and "No module named 'torch'" in r.stderr, "the edge environment must not have torch"
    r = subprocess.run([str(py), "-c", "import transformers"], capture_output=True, text=True)
    assert r.returncode != 0, "the edge environment must not have transformers"
    return py


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_ckpt, tiny_llm):
    d = tmp_path_factory.mktemp("onnx")
    ck, llm = tiny_ckpt, tiny_llm
    out = {}
    for bits in (16, 4):
        out[bits] = d / f"onnx{bits}"
        export_bundle(out[bits], str(ck), str(llm), ExportOptions(bits=bits, backend="onnx", encoder_variants=()),
                      say=lambda m: None, task="S7")
    return ck, llm, out, d


def test_onnx_trunk_with_past_equals_the_torch_reference(tiny):
    ck, llm, b, _ = tiny
    ref = load_model(ck, llm)
    model = load_bundle(b[16])
    man = json.loads(shared_path("golden", "respllm_tiny", "manifest.json").read_text())
    exp = np.load(shared_path("golden", "respllm_tiny", "expected.npz"))
    for c in man["cases"]:
        # the tokenizers JSON gives exactly the ids transformers gives (and the golden holds)
        assert model.tokenize(c["prompt"]).tolist() == [exp[f"{c['case']}/prompt_ids"].tolist()]
        assert model.tokenize(c["dms"]).reshape(-1).tolist() == exp[f"{c['case']}/dms_ids"].tolist()
        spec = exp[f"{c['case']}/spec"]
        pre = model.prefix(model.tokenize(c["prompt"]), model.tokenize(c["dms"]))
        cached = model.score(pre, model.embed_audio(spec))[0]
        full = model.forward(spec, model.tokenize(c["prompt"]), model.tokenize(c["dms"]))[0]
        assert np.abs(cached - full).max() < 1e-4  # explicit past key/values: prefix reuse is exact
        # fp16 weights and embeddings: close to the golden logits
        assert np.abs(cached - exp[f"{c['case']}/logits"]).max() < 5e-3
    # 4-bit MatMulNBits vs fp16 weights (block-32 scales and graph overhead weigh a lot in a 64-wide model)
    assert (b[4] / "llm" / "trunk.onnx").stat().st_size < 0.6 * (b[16] / "llm" / "trunk.onnx").stat().st_size
    logits_ref = ref.logits(torch.from_numpy(exp["c2_S7_full/spec"]), man["cases"][1]["prompt"],
                            man["cases"][1]["dms"])[0].numpy()
    assert np.abs(logits_ref - exp["c2_S7_full/logits"]).max() < 1e-4


def _run(py, *args):
    env = {**os.environ, "PYTHONPATH": ""}
    return subprocess.run([str(Path(py).parent / "respi-edge"), *args], capture_output=True, text=True, env=env)


def test_torch_free_environment_screens_predicts_verifies_and_benches(edge_python, tiny):
    ck, llm, b, d = tiny
    wav = shared_path("golden", "mel", "inputs", "a3_lung_8k_mono_int16.wav")
    r = _run(edge_python, "predict", str(wav), "--bundle", str(b[4]), "--json")
    assert r.returncode == 0, r.stderr
    p4 = json.loads(r.stdout.strip().splitlines()[-1])["prob"]
    ref = load_model(ck, llm)
    from respi_edge.runtime import api

    p_ref = api.Session(ref, "S7").score_file(wav).prob
    drift = json.loads((b[4] / "manifest.json").read_text())["parity"]["bundle_vs_reference_prob_max_abs"]
    assert abs(p4 - p_ref) <= max(0.15, 2 * drift), (p4, p_ref, drift)  # within the drift export measured
    rec = shared_path("data", "sprsound2022", "audio", "40138127_14.7_0_p3_139.flac")
    r = _run(edge_python, "screen", "--bundle", str(b[4]), "--file", str(rec), "--fast", "--json", "--hop", "1")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert lines[-1]["type"] == "summary" and lines[-1]["scored"] >= 1
    man = write_manifest(d / "six.csv", "test_intra", 3, 3)
    r = _run(edge_python, "verify", "--bundle", str(b[4]), "--reference", str(b[16]), "--data", str(man),
             "--bootstrap", "50", "--out", str(d / "verify"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n"] == 6 and (d / "verify" / "roc.png").is_file()
    r = _run(edge_python, "bench", "latency", "--bundle", str(b[4]), "--repeat", "2", "--warmup", "1")
    assert r.returncode == 0 and "LLM+head, prefix reuse" in r.stdout and "end to end" in r.stdout, r.stderr


def test_retuned_bundle_int8_compute_and_optimised_encoder(tiny, tmp_path):
    """The faster CPU graph (issue 15): MatMulNBits at accuracy level 4 and the encoder optimised offline give a
    sealed bundle with the same weights; the encoder is unchanged within fp32 rounding and the trunk within the
    int8 activation rounding; refused for a bundle that is not ONNX or a folder that exists."""
    from respi_edge.export.onnx_llm import accuracy_level_of, retune_bundle
    from respi_edge.runtime.bundle import verify
    from respi_edge.runtime.errors import BundleError

    _, _, b, _ = tiny
    out = tmp_path / "fast"
    man = retune_bundle(b[4], out, accuracy_level=4, say=lambda m: None)
    assert man["tuning"]["matmulnbits_accuracy_level"] == 4 and verify(out)[1].ok
    assert accuracy_level_of(b[4] / man["onnx_llm"]["trunk"]) == 0
    assert accuracy_level_of(out / man["onnx_llm"]["trunk"]) == 4
    old, new = load_bundle(b[4]), load_bundle(out)
    exp = np.load(shared_path("golden", "respllm_tiny", "expected.npz"))
    spec = np.stack([exp["c2_S7_full/spec"], exp["c1_S1_full/spec"]])
    assert np.abs(new.embed_audio(spec) - old.embed_audio(spec)).max() < 1e-4
    pre_old = old.prefix(old.tokenize("Is it normal?"), old.tokenize("Gender: F."))
    pre_new = new.prefix(new.tokenize("Is it normal?"), new.tokenize("Gender: F."))
    a, c = old.score(pre_old, old.embed_audio(spec)), new.score(pre_new, new.embed_audio(spec))
    assert 0 < np.abs(a - c).max() < 0.05  # int8 activations: close, not identical
    with pytest.raises(BundleError, match="exists"):
        retune_bundle(b[4], out, say=lambda m: None)


def test_export_flags_build_the_faster_graph_directly(tiny, tmp_path):
    """`export --backend onnx --accuracy-level 4 --optimize-encoder` gives what retuning today's bundle gives:
    the same trunk compute type and optimised encoder, the same scores, recorded in the manifest's `tuning`;
    `--encoder-default int8` makes the dynamic int8 encoder the one a bundle runs unless told otherwise."""
    from click.testing import CliRunner

    from respi_edge.export.onnx_llm import accuracy_level_of, retune_bundle
    from respi_edge.runtime.bundle import verify
    from respi_edge.runtime.cli import main

    ck, llm, b, _ = tiny
    out = tmp_path / "direct"
    r = CliRunner().invoke(main, ["export", "--checkpoint", str(ck), "--llm", str(llm), "--bits", "4", "--backend",
                                  "onnx", "--encoder-variants", "int8", "--encoder-default", "int8", "--no-parity",
                                  "--task", "S7", "--accuracy-level", "4", "--optimize-encoder", "--out", str(out)])
    assert r.exit_code == 0, r.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["tuning"] == {"encoder_optimized": "onnxruntime extended (offline)", "matmulnbits_accuracy_level": 4}
    assert accuracy_level_of(out / man["onnx_llm"]["trunk"]) == 4 and verify(out)[1].ok
    retuned = retune_bundle(b[4], tmp_path / "retuned", accuracy_level=4, say=lambda m: None)
    assert retuned["tuning"]["encoder_optimized"] == man["tuning"]["encoder_optimized"]
    assert man["encoder"]["default"] == "int8"
    direct, other = load_bundle(out, encoder_variant="fp32"), load_bundle(tmp_path / "retuned")
    exp = np.load(shared_path("golden", "respllm_tiny", "expected.npz"))
    spec = np.stack([exp["c2_S7_full/spec"], exp["c1_S1_full/spec"]])
    e1, e2 = direct.embed_audio(spec), other.embed_audio(spec)
    by_default, int8 = load_bundle(out).embed_audio(spec), load_bundle(out, encoder_variant="int8").embed_audio(spec)
    assert np.array_equal(by_default, int8) and np.abs(by_default - e1).max() > 1e-4
    np.testing.assert_allclose(e1, e2, atol=1e-6)
    p1 = direct.prefix(direct.tokenize("Is it normal?"), direct.tokenize("Gender: F."))
    p2 = other.prefix(other.tokenize("Is it normal?"), other.tokenize("Gender: F."))
    np.testing.assert_allclose(direct.score(p1, e1), other.score(p2, e2), atol=1e-6)


def test_encoder_threads_sleep_between_windows(tiny):
    """The encoder's worker threads must not spin after a window: they took the CPU from the LLM step that follows
    (bench/results/ort_spinning.md); the LLM trunk keeps onnxruntime's default."""
    _, _, b, _ = tiny
    bundle = load_bundle(b[4])
    key = "session.intra_op.allow_spinning"
    assert bundle.audio.session.get_session_options().get_session_config_entry(key) == "0"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # unset: onnxruntime's default
        bundle.trunk.get_session_options().get_session_config_entry(key)
