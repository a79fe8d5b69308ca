"""Encoder fine-tuning: stage split exactness, views, precision choice, dev-test split, compact round trip, resume."""
from __future__ import annotations

import csv
import json
from importlib.resources import files

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import shared_path
from respi_edge.runtime import audio as fe
from respi_edge.runtime import contract as C
from respi_edge.runtime.builtin import encoder_init, synthetic_encoder_state
from respi_edge.runtime.encoder import encode, load_encoder
from respi_edge.runtime.load import load_model
from respi_edge.runtime.manifest import read_manifest
from respi_edge.train import precision
from respi_edge.train.encoder_stages import back, front, opera_state, trained_prefixes
from respi_edge.train.run import run
from respi_edge.train.splits import apply_holdout, patient_split
from respi_edge.train.views import Event, crop_offset, read_events, spec_augment, view_rng, views

from test_train import N_PATIENTS, tiny_base  # noqa: F401  (fixture)

DATA = shared_path("data", "sprsound2022")
DEVTEST = files("respi_edge.configs") / "splits" / "sprsound2022_devtest.csv"


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(synthetic_encoder_state(encoder_init()))


def test_front_then_back_is_the_runtime_encoder(encoder):
    rows = read_manifest(DATA / "train.csv").rows[:2]
    spec = torch.from_numpy(np.stack([fe.spectrogram(r.path) for r in rows]))
    tokens, _ = encode(encoder, spec)
    with torch.no_grad():
        for cut in range(5):
            assert torch.equal(back(encoder, front(encoder, spec, cut), cut), tokens)


def test_opera_state_round_trips_through_the_loader_mapping(encoder):
    init = synthetic_encoder_state(encoder_init())
    got = opera_state(encoder, init, trained_prefixes(3))
    assert got and all(k.startswith(("encoder.htsat.layers.3.", "encoder.htsat.norm.")) for k in got)
    assert "encoder.htsat.layers.3.blocks.0.attn.qkv.weight" in got  # fused again in (query, key, value) order
    assert all(torch.equal(v, init[k]) for k, v in got.items())
    assert not any("relative_position_index" in k for k in got)


def test_crops_hold_the_adventitious_events():
    n = int(15.36 * C.SAMPLE_RATE)
    ev = [Event(12.0, 13.5, True), Event(1.0, 2.0, False)]
    for v in range(1, 20):
        o = crop_offset(n, ev, True, view_rng(0, "x.flac", v))
        start, end = o / C.SAMPLE_RATE, o / C.SAMPLE_RATE + C.WINDOW_SECONDS
        assert min(end, 13.5) - max(start, 12.0) >= 0.9 * 1.5  # the wheeze inside the window (≥ 90 % of it)
    offsets = {crop_offset(n, ev, False, view_rng(0, "x.flac", v)) for v in range(1, 20)}
    assert len(offsets) > 5 and max(offsets) <= n - C.WINDOW_SAMPLES  # negatives: uniform inside the file


def test_views_start_with_the_scoring_input_and_are_deterministic():
    row = next(r for r in read_manifest(DATA / "train.csv").rows if r.label == 1)
    events = read_events(DATA / "events.csv")[row.path]
    a = views(row.path, 3, positive=True, events=events, seed=1)
    b = views(row.path, 3, positive=True, events=events, seed=1)
    assert np.array_equal(a[0], fe.spectrogram(row.path))
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and not np.array_equal(a[0], a[1])
    masked = spec_augment(a[0], np.random.default_rng(3), time_width=30, freq_width=10)
    assert masked.shape == a[0].shape and (masked != a[0]).any()


def test_precision_follows_the_cpu():
    calls = []

    def step(bf16: bool) -> None:
        calls.append(bf16)

    got = precision.choose("auto", step)
    assert got["seconds_per_batch_fp32"] >= 0 and got["seconds_per_batch_bf16"] >= 0 and True in calls
    native = bool(precision.cpu_flags() & set(precision.BF16_FLAGS))
    if not native:
        assert got["precision"] == "fp32" and "no native bf16" in got["why"]
    assert precision.choose("fp32")["precision"] == "fp32" and precision.choose("bf16")["precision"] == "bf16"
    with pytest.raises(ValueError):
        precision.choose("fp8")


def test_devtest_split_is_patient_disjoint_and_reproducible():
    train = read_manifest(DATA / "train.csv")
    fit, dev = apply_holdout(train, DEVTEST)
    assert not {r.patient for r in fit} & {r.patient for r in dev}
    patients = {r.patient for r in train.rows}
    assert len({r.patient for r in dev}) >= 0.2 * len(patients)
    assert abs(np.mean([r.label for r in dev]) - np.mean(train.labels)) < 0.03  # stratified
    _, again = patient_split(train.rows, 0.2, 2027)  # the seed it was drawn with
    assert [r.rel for r in again] == [r.rel for r in dev]


@pytest.fixture(scope="module")
def finetuned(tiny_base, tmp_path_factory):  # noqa: F811
    rows = list(csv.DictReader(open(DATA / "train.csv")))
    pick, seen = [], {}
    for r in [r for r in rows if r["label"] == "1"] + [r for r in rows if r["label"] == "0"]:
        if len(seen) < N_PATIENTS or r["patient"] in seen:
            if seen.get(r["patient"], 0) < 2:
                seen[r["patient"]] = seen.get(r["patient"], 0) + 1
                pick.append(r)
    d = tmp_path_factory.mktemp("ft")
    with open(d / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in pick:
            w.writerow({**r, "path": str(DATA / r["path"])})
    ho_patient = pick[0]["patient"]
    with open(d / "holdout.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in pick:
            if r["patient"] == ho_patient:
                w.writerow({**r, "path": str(DATA / r["path"])})
    (d / "recipe.yaml").write_text(f"""name: tiny finetune
tasks:
  - task: sprsound_normal_vs_adventitious
    train: {d / 'train.csv'}
    holdout: {d / 'holdout.csv'}
    events: {DATA / 'events.csv'}
encoder_mode: finetune
encoder_views: 2
encoder_epochs: 2
encoder_batch_size: 4
epochs: 1
batch_size: 4
lr: 0.001
val_fraction: 0.25
precision: fp32
""")
    cache = tmp_path_factory.mktemp("ftcache")
    out = tmp_path_factory.mktemp("ftrun")
    metrics = run(str(d / "recipe.yaml"), [], str(out), official=True, llm=str(tiny_base), cache_dir=str(cache))
    return d, out, cache, metrics, ho_patient


def test_finetuned_encoder_ships_in_the_compact_form_and_loads(finetuned, tiny_base, encoder):  # noqa: F811
    d, out, cache, metrics, ho_patient = finetuned
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        enc_keys = [k for k in f.keys() if k.startswith("audio_encoder.")]
        meta = json.loads(f.metadata()["respi_edge"])
        dtypes = {f.get_tensor(k).dtype for k in enc_keys}
    assert enc_keys and all(k.startswith(("audio_encoder.encoder.htsat.layers.3.", "audio_encoder.encoder.htsat.norm."))
                            for k in enc_keys)
    assert dtypes == {torch.float16} and meta["encoder_trained"] == trained_prefixes(3)
    assert metrics["encoder"]["history"] and metrics["tasks"]["sprsound_normal_vs_adventitious"]["holdout"]["n"] == 2
    m = load_model(out / "model.safetensors", tiny_base)
    off = load_model(out / "official.pt", tiny_base)
    spec = torch.from_numpy(fe.spectrogram(read_manifest(d / "train.csv").rows[0].path))[None]
    t_tuned, _ = encode(m.encoder, spec)
    t_off, _ = encode(off.encoder, spec)
    t_init, _ = encode(encoder, spec)
    assert torch.equal(t_tuned, t_off) and not torch.allclose(t_tuned, t_init, atol=1e-3)
    with torch.no_grad():  # untouched stages are still the hash-checked initialisation
        assert torch.equal(front(m.encoder, spec, 3), front(encoder, spec, 3))


def test_finetune_run_resumes_from_its_caches(finetuned, tiny_base, tmp_path):  # noqa: F811
    d, out, cache, _, _ = finetuned
    import io

    from respi_edge.runtime.progress import LogProgress

    log = io.StringIO()
    again = run(str(d / "recipe.yaml"), [], str(out), llm=str(tiny_base), cache_dir=str(cache),
                progress=LogProgress(stream=log))
    assert again["encoder"]["resumed"] and again["encoder"]["feature_cache"]["misses"] == 0
    n = again["encoder"]["feature_cache"]["hits"]
    assert f"encoder features: {n}/{n} (100 %" in log.getvalue()  # cached rows count as done
