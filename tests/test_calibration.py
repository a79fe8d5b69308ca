"""Calibration: fake quantization equals the bitsandbytes kernels, the drift-budgeted precision plan on the golden
tiny model and real recordings, and static int8 ONNX quantization fed by real spectrograms."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import write_manifest
from respi_edge.calibration.sensitivity import DriftMeter, calibration_set, fake_quant, layer_of, precision_plan


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("quant", ["nf4", "fp4"])
def test_fake_quant_is_what_the_4bit_kernel_multiplies_with(quant):
    import bitsandbytes as bnb

    torch.manual_seed(0)
    w, x = torch.randn(256, 512) * 0.05, torch.randn(3, 7, 512)
    lin = bnb.nn.Linear4bit(512, 256, bias=False, quant_type=quant, compute_dtype=torch.float32)
    lin.weight = bnb.nn.Params4bit(w.clone(), requires_grad=False, quant_type=quant, blocksize=64)
    with torch.no_grad():
        y = lin.to("cpu")(x)
    fq = x @ fake_quant(w, 4, quant).T
    assert _rel(y, fq) < 0.01 < _rel(y, x @ w.T)  # the kernel's rounding, not a different quantizer
    assert fake_quant(w, 32) is w  # full precision: untouched
    assert torch.equal(fake_quant(w, 16), w.half().float()) and not torch.equal(fake_quant(w, 16), w)  # fp16


def test_fake_quant_8bit_matches_llm_int8_and_is_finer_than_4bit():
    import bitsandbytes as bnb

    torch.manual_seed(1)
    w, x = torch.randn(256, 512) * 0.05, torch.randn(5, 512)
    lin = bnb.nn.Linear8bitLt(512, 256, bias=False, has_fp16_weights=False)
    lin.weight = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
    with torch.no_grad():  # train mode: the layer multiplies with its dequantized int8 weights
        y = lin.to("cpu")(x).float()
    assert _rel(y, x @ fake_quant(w, 8).T) < 1e-5
    with torch.no_grad():  # eval mode (every bundle): activations are rounded to int8 too, a larger error
        y_eval = lin.eval()(x).float()
    assert _rel(y_eval, x @ fake_quant(w, 8).T) > 1e-4
    e8, e4 = _rel(fake_quant(w, 8), w), _rel(fake_quant(w, 4, "nf4"), w)
    assert e8 < e4 / 5
    # vector-wise int8 (of the fp16 weights): every element within half a step of its row's absmax / 127
    step = w.abs().amax(1, keepdim=True) / 127
    assert bool(((fake_quant(w, 8) - w).abs() <= step / 2 + w.abs() * 2**-10 + 1e-6).all())


def test_layer_of_reads_decoder_layer_indices():
    assert layer_of("layers.3.self_attn.q_proj") == 3
    assert layer_of("model.layers.12.mlp.down_proj.weight") == 12
    assert layer_of("embed_tokens") is None and layer_of("norm") is None


@pytest.fixture(scope="module")
def meter(tiny_ckpt, tiny_llm, tmp_path_factory):
    from respi_edge.runtime.api import load_model
    from respi_edge.runtime.prompts import get_task

    model = load_model(str(tiny_ckpt), str(tiny_llm), merge_lora=True)
    man = write_manifest(tmp_path_factory.mktemp("cal") / "cal.csv", "train", 3, 3)
    cal = calibration_set(str(man), limit=6)
    assert len(cal.specs) == 6 and all(s.shape == (256, 64) for s in cal.specs)
    return DriftMeter(model, get_task("S7").prompt, cal), model.llm.config.num_hidden_layers


def test_a_zero_budget_promotes_everything_to_16_bits_and_restores_the_model(meter):
    m, n_layers = meter
    info = precision_plan(m, n_layers, 0.0, "nf4", say=lambda s: None)
    assert set(info["sensitivity"]) == set(range(n_layers)) and all(v > 0 for v in info["sensitivity"].values())
    first = info["steps"][0]
    assert first["plan"] == {i: 4 for i in range(n_layers)} and first["drift"] > 0
    # promotions follow the sensitivity ranking, 8 bits before 16
    promoted = [s["promoted"] for s in info["steps"][1:] if s["to"] == 8]
    assert promoted == sorted(info["sensitivity"], key=info["sensitivity"].get, reverse=True)[:len(promoted)]
    # nothing comes closer than 16 bits, which is fp16 in a bundle: a zero budget is met only if fp16 is exact
    assert set(info["plan"].values()) == {16} and 0 <= info["drift"] < first["drift"]
    assert info["within_budget"] == (info["drift"] == 0)
    np.testing.assert_array_equal(m.probs(), m.reference)  # weights put back exactly


def test_a_loose_budget_keeps_everything_at_4_bits(meter):
    m, n_layers = meter
    info = precision_plan(m, n_layers, 1.0, "fp4", say=lambda s: None)
    assert len(info["steps"]) == 1 and set(info["plan"].values()) == {4} and info["within_budget"]
    all4 = info["drift"]
    # the plan says how precisely the calibration set measured its drift
    m.apply(info["plan"], "fp4")
    err = np.abs(m.probs() - m.reference)
    assert info["n_recordings"] == 6 and np.isclose(info["drift"], err.mean())
    assert info["drift_se"] > 0 and np.isclose(info["drift_se"], err.std(ddof=1) / np.sqrt(6))
    # 8-bit everywhere drifts less than 4-bit everywhere
    assert m.drift({i: 8 for i in range(n_layers)}, "fp4") < all4
    m.apply({}, "fp4")


@pytest.mark.parametrize("bits,quant,mixed", [(8, "int8", None), (4, "nf4", None), (4, "nf4", "16,8,8")])
def test_the_meter_computes_what_the_exported_bundle_computes(meter, tiny_ckpt, tiny_llm, tmp_path, monkeypatch,
                                                              bits, quant, mixed):
    """The drift the plan budgets is the bundle's drift: same probabilities as the exported bundle (quantized
    embeddings included), so a budget met on the calibration set is met by the bundle on it. `mixed`: a plan's
    layer 0, layer 1 and embedding bits (a 16-bit entry is fp16 in the bundle, norms included)."""
    import respi_edge.export.exporter as exporter
    from respi_edge.calibration.sensitivity import EMBEDDING
    from respi_edge.export.exporter import ExportOptions, export_bundle
    from respi_edge.runtime.bundle import load_bundle
    from respi_edge.runtime.prompts import get_task

    m, n_layers = meter
    plan = {**{i: bits for i in range(n_layers)}, EMBEDDING: bits}
    if mixed:
        assert n_layers == 2
        plan = dict(zip((0, 1, EMBEDDING), map(int, mixed.split(","))))
        monkeypatch.setattr(exporter, "drift_plan", lambda *a: {"plan": dict(plan), "max_drift": 1.0})
    export_bundle(tmp_path / "b", str(tiny_ckpt), str(tiny_llm),
                  ExportOptions(bits=bits, quant=quant, encoder_variants=(), parity=False,
                                max_drift=1.0 if mixed else None), say=lambda s: None, task="S7")
    b = load_bundle(tmp_path / "b")
    prompt = b.tokenize(get_task("S7").prompt)
    with torch.inference_mode():  # the meter's audio embeddings: only the LLM differs
        p_bundle = np.zeros(m.n)
        for d, rows in m.groups.items():  # each row batch-1 on a fresh prefix of its own DMS
            for i in rows:
                logits = b.score(b.prefix(prompt, m.dms_ids[d]), m.emb[i:i + 1])
                p_bundle[i] = torch.softmax(logits[0].float(), -1)[1].item()
    if mixed:  # the bundle stores what the plan says
        assert b.quantization["layer_plan"] in (plan, {str(k): v for k, v in plan.items()})
    m.apply(plan, quant)
    p_meter = m.probs()
    m.apply({}, quant)
    np.testing.assert_allclose(p_meter, p_bundle, atol=2e-5)
    assert np.abs(p_meter - m.reference).max() > 1e-4  # and the quantization does move them


def test_static_int8_uses_calibration_ranges_from_real_spectrograms(tmp_path):
    import onnx
    import onnxruntime as ort

    from respi_edge.calibration.static_int8 import SpectrogramReader, calibration_specs, export_int8_static
    from respi_edge.export.onnx_encoder import export_int8

    man = write_manifest(tmp_path / "cal.csv", "train", 4, 4)
    specs = calibration_specs(str(man), limit=8)
    assert len(specs) == 8
    reader = SpectrogramReader(specs)
    assert sum(1 for _ in iter(reader.get_next, None)) == 8

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(1), torch.nn.Linear(256 * 64, 96), torch.nn.GELU(),
                              torch.nn.Linear(96, 32)).eval()
    src = tmp_path / "enc.onnx"
    torch.onnx.export(net, (torch.rand(1, 256, 64),), str(src), input_names=["spec"], output_names=["out"],
                      dynamic_axes={"spec": {0: "b"}, "out": {0: "b"}}, opset_version=17, dynamo=False)
    static, dynamic = tmp_path / "enc.int8s.onnx", tmp_path / "enc.int8.onnx"
    export_int8_static(src, static, specs)
    export_int8(src, dynamic)
    ops = {n.op_type for n in onnx.load(str(static)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and "DynamicQuantizeLinear" not in ops
    assert "DynamicQuantizeLinear" in {n.op_type for n in onnx.load(str(dynamic)).graph.node}

    held_out = calibration_specs(str(write_manifest(tmp_path / "ho.csv", "test_intra", 2, 2)), limit=4)
    x = np.stack(held_out).astype(np.float32)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"spec": x})[0]  # noqa
    ref = run(src)
    err = {p: np.linalg.norm(run(p) - ref) / np.linalg.norm(ref) for p in (static, dynamic)}
    assert all(0 < e < 0.05 for e in err.values())
    # the activation ranges really come from the calibration data: ranges of 100x quieter inputs clip real ones
    wrong = tmp_path / "enc.int8w.onnx"
    export_int8_static(src, wrong, [s * 0.01 for s in specs])
    assert np.linalg.norm(run(wrong) - ref) / np.linalg.norm(ref) > 5 * err[static]


def test_calibration_set_is_the_demo_validation_split(tmp_path, monkeypatch):
    """The committed drift results calibrate on the demo's validation split: the same recordings training held out
    (their count is the one training recorded), no patient shared with the fitted part, no test_intra recording.
    (test_intra is SPRSound's intra-patient split: its patients are also in train, hence in this split too.)"""
    import json
    from importlib.resources import files

    from conftest import shared_path
    from respi_edge.bench.calibration_set import validation_rows, write_manifest as write_rows
    from respi_edge.runtime.manifest import read_manifest

    monkeypatch.setenv("RESPI_EDGE_DATA", str(shared_path("data")))
    rows = validation_rows(str(files("respi_edge.configs") / "recipes" / "sprsound_demo.yaml"))
    metrics = json.loads((files("respi_edge.configs") / "demo" / "metrics.json").read_text())
    assert len(rows) == metrics["tasks"]["sprsound_normal_vs_adventitious"]["n_val"]
    val_patients = {r.patient for r in rows}
    train = read_manifest(shared_path("data", "sprsound2022", "train.csv"))
    test = read_manifest(shared_path("data", "sprsound2022", "test_intra.csv"))
    assert not {r.path for r in rows} & {r.path for r in test.rows}
    assert {r.patient for r in train.rows if r.path not in {v.path for v in rows}}.isdisjoint(val_patients)
    out = write_rows(rows, tmp_path / "sub" / "val.csv")  # relative paths from a folder elsewhere
    back = read_manifest(out)
    assert [(r.path, r.label, r.patient, r.dms) for r in back.rows] == [(r.path, r.label, r.patient, r.dms) for r in rows]
