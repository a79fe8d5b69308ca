"""Batched scoring changes nothing (issue 15 item 1): windows of one Session (one prompt + DMS prefix) scored
together equal each window scored alone within 1e-5, on every engine: the torch checkpoint (the reference
computation), a torch-bnb bundle and an ONNX bundle (prefix keys/values bound or fed per call), on the golden
tiny RespLLM's cases and on real SPRSound recordings."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import shared_path
from respi_edge.export.exporter import ExportOptions, export_bundle
from respi_edge.runtime import api
from respi_edge.runtime.audio import spectrogram
from respi_edge.runtime.load import load_model

TOL = 1e-5
RECORDINGS = ["40138127_14.7_0_p3_139.flac", "40638274_9.7_1_p2_1684.flac"]


@pytest.fixture(scope="module")
def golden():
    man = json.loads(shared_path("golden", "respllm_tiny", "manifest.json").read_text())
    return man["cases"], np.load(shared_path("golden", "respllm_tiny", "expected.npz"))


@pytest.fixture(scope="module")
def specs(golden):
    """Two golden cases' spectrograms, then three real SPRSound recordings' first windows (5 windows: batches of 3
    leave a ragged last batch)."""
    cases, exp = golden
    out = [exp[f"{c['case']}/spec"] for c in cases[:2]]
    data = shared_path("data", "sprsound2022")
    rows = [ln.split(",")[0] for ln in (data / "test_intra.csv").read_text().splitlines()[1:4]]
    return out + [spectrogram(str(data / r)) for r in rows]


@pytest.fixture(scope="module")
def engines(tmp_path_factory, tiny_ckpt, tiny_llm):
    """The tiny golden RespLLM on each engine: checkpoint (torch), torch-bnb 4-bit, ONNX 16- and 4-bit."""
    d = tmp_path_factory.mktemp("batching")
    out = {"torch": load_model(tiny_ckpt, tiny_llm)}
    for name, opts in {"torch-bnb-4": ExportOptions(bits=4, encoder_variants=(), parity=False),
                       "onnx-16": ExportOptions(bits=16, backend="onnx", encoder_variants=(), parity=False),
                       "onnx-4": ExportOptions(bits=4, backend="onnx", encoder_variants=(), parity=False)}.items():
        export_bundle(d / name, str(tiny_ckpt), str(tiny_llm), opts, say=lambda m: None, task="S7")
        out[name] = api.load(d / name)
    return out


def one_by_one(session: api.Session, specs) -> np.ndarray:
    return np.stack([api.to_numpy(session.logits(s)) for s in specs])


@pytest.mark.parametrize("engine", ["torch", "torch-bnb-4", "onnx-16", "onnx-4"])
def test_batched_windows_equal_batch_one(engines, golden, specs, engine):
    cases, _ = golden
    model = engines[engine]
    # a full DMS, a partial one and an empty one (composed prompt): each case's prompt + DMS is one Session
    for c in [c for c in cases if c["case"] in ("c2_S7_full", "c3_T6_partial", "c4_composed_empty")]:
        s = api.Session(model, prompt=c["prompt"], dms=c["dms"])
        single = one_by_one(s, specs)
        batched = np.stack([api.to_numpy(x) for x in s.logits_many(specs, batch_size=3)])  # 3 + 2 windows
        assert batched.shape == single.shape
        assert np.abs(batched - single).max() < TOL, (engine, c["case"], np.abs(batched - single).max())
        preds = s.score_many(specs)  # one batch of 5
        assert [p.prob for p in preds] == pytest.approx([float(api.softmax(x)[1]) for x in single], abs=TOL)


def test_batched_golden_cases_match_the_reference_logits(engines, golden):
    """On the torch checkpoint the batched path still reproduces the official code's logits (golden)."""
    cases, exp = golden
    model = engines["torch"]
    for c in cases:
        s = api.Session(model, prompt=c["prompt"], dms=c["dms"])
        spec = exp[f"{c['case']}/spec"]
        got = api.to_numpy(s.logits_many([spec, spec, np.zeros_like(spec)], batch_size=3)[0])
        assert np.abs(got - exp[f"{c['case']}/logits"]).max() < 1e-4, c["case"]


def test_score_files_on_real_recordings(engines):
    """`score_files` decodes each file once and gives `score_file`'s predictions, on both bundle engines."""
    data = shared_path("data", "sprsound2022", "audio")
    files = [data / r for r in RECORDINGS] + [data / RECORDINGS[0]]
    for engine in ("torch-bnb-4", "onnx-4"):
        s = api.Session(engines[engine], "S7", gender="M", age="7.2", location="p3")
        preds = s.score_files(files, batch_size=2)
        assert [p.source for p in preds] == [str(f) for f in files]
        for p, f in zip(preds, files):
            assert p.prob == pytest.approx(s.score_file(f).prob, abs=TOL)
        assert preds[0].prob == pytest.approx(preds[2].prob, abs=TOL)  # the same recording in two batches


def test_onnx_bound_past_equals_past_fed_per_call(engines, specs):
    """Keys/values kept bound between windows (IOBinding) give the issue-14 path's logits exactly, and binding
    survives windows of several batch sizes on one prefix."""
    model = engines["onnx-4"]
    s = api.Session(model, "S7", dms="Gender: F. Age: 9.7.")
    emb = model.embed_audio(np.stack(specs[:4]))
    bound = [model.score_batch(s.prefix, emb[:k]) for k in (1, 4, 2, 1)]
    model.bind_past = False
    try:
        fed = [model.score_batch(s.prefix, emb[:k]) for k in (1, 4, 2, 1)]
    finally:
        model.bind_past = True
    for a, b in zip(bound, fed):
        assert np.array_equal(a, b)


def test_batches_of_one_session_never_mix_prefixes(engines, specs):
    """Two Sessions (two DMS) keep their own prefixes and batched caches: scoring one in batches leaves the other's
    batch-1 results unchanged, and the torch prefix cache is rewound to its length after every batch."""
    model = engines["torch"]
    a = api.Session(model, "S7", dms="Gender: F. Age: 9.7.")
    b = api.Session(model, "S7", dms="Gender: M. Age: 14.7. Record location: left posterior chest.")
    before = one_by_one(b, specs[:2])
    a.logits_many(specs, batch_size=3)
    assert np.abs(one_by_one(b, specs[:2]) - before).max() == 0
    assert all(layer.keys.shape[-2] == a.prefix.length for c in a.prefix.tiled.values() for layer in c.layers)
    assert all(layer.keys.shape[0] == 3 for layer in a.prefix.tiled[3].layers)
    assert not np.allclose(one_by_one(a, specs[:1]), one_by_one(b, specs[:1]))  # the DMS does matter


def test_bad_batch_arguments_are_named_errors(engines, specs):
    from respi_edge.runtime.errors import ModelError

    s = api.Session(engines["torch"], "S7")
    with pytest.raises(ModelError, match="batch size"):
        s.logits_many(specs, batch_size=0)
    with pytest.raises(ModelError, match="one source per window"):
        s.score_many(specs[:2], ["only-one"])
    assert s.score_many([]) == []


def test_drift_meter_groups_rows_by_dms(engines, specs):
    """The drift meter scores rows of one DMS in one batch; its probabilities equal the per-row ones."""
    from respi_edge.calibration.sensitivity import CalibrationSet, DriftMeter

    model = engines["torch"]
    dms = ["Gender: F.", "Gender: M. Age: 7.", "Gender: F.", "", "Gender: F."]
    meter = DriftMeter(model, "Is this recording normal?", CalibrationSet(list(specs), dms))
    per_row = []
    with torch.inference_mode():
        for spec, d in zip(specs, dms):
            s = api.Session(model, prompt="Is this recording normal?", dms=d)
            per_row.append(s.score_spec(spec).prob)
    assert meter.reference == pytest.approx(per_row, abs=TOL)
