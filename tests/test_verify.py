"""verify end to end on real SPRSound recordings with the golden tiny checkpoint: report, PNG, gate, cache."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from conftest import write_manifest
from respi_edge.export.exporter import ExportOptions, export_bundle
from respi_edge.runtime.cli import main

HEAD_W, HEAD_B = "output_projection.linear.weight", "output_projection.linear.bias"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_ckpt, tiny_llm):
    """The tiny checkpoint, its merged 16-bit bundle (tiny drift), and a bundle of the same model with the head's
    two rows swapped (P -> 1 - P: AUROC -> 1 - AUROC), on 6 + 6 real test_intra recordings."""
    d = tmp_path_factory.mktemp("verify")
    sd = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)  # the golden's own file, a test input
    for k in (HEAD_W, HEAD_B):
        sd["model_state_dict"][k] = sd["model_state_dict"][k].flip(0).clone()
    flipped = d / "flipped.pt"
    torch.save(sd, flipped)
    out = {}
    for name, ck in (("b16", tiny_ckpt), ("flipped", flipped)):
        out[name] = d / name
        export_bundle(out[name], str(ck), str(tiny_llm), ExportOptions(bits=16, encoder_variants=(), parity=False),
                      say=lambda m: None, task="S7")
    man = write_manifest(d / "small.csv", "test_intra", 6, 6)
    return {"ck": tiny_ckpt, "llm": tiny_llm, "man": man, "d": d, "cache": d / "cache", **out}


def _verify(s, bundle, out, *extra):
    return CliRunner().invoke(main, ["verify", "--bundle", str(s[bundle]), "--reference", str(s["ck"]), "--llm",
                                     str(s["llm"]), "--data", str(s["man"]), "--bootstrap", "200", "--out",
                                     str(s["d"] / out), *extra])


def _ref_cache(s):
    files = list((s["cache"] / "verify").glob("reference-*.jsonl"))
    assert len(files) == 1
    return files[0]


def test_report_png_and_the_tiny_drift_of_the_merged_bundle(setup, monkeypatch):
    monkeypatch.setenv("RESPI_EDGE_CACHE", str(setup["cache"]))
    r = _verify(setup, "b16", "r16", "--budget", "0.05", "--json")
    assert r.exit_code == 0, r.output
    d = setup["d"] / "r16"
    rep = json.loads((d / "report.json").read_text())
    assert json.loads(r.stdout) == rep
    assert rep["n"] == 12 and rep["patients"] >= 2 and rep["positives"] == 6 and rep["errors"] == 0
    assert rep["passed"] and rep["task"] == "S7" and rep["threshold"] == 0.5
    # LoRA merged, fp16 weights: probabilities move by far less than a decision needs
    assert rep["abs_dp"]["max"] < 0.02 and rep["flip_rate"] <= 1 / 12 and rep["mean_kl"] < 1e-3
    assert abs(rep["delta_auroc"]["value"]) <= 1 / 36 + 1e-9  # at most one of the 36 pos/neg pairs reordered
    for k in ("auroc_reference", "auroc_bundle"):
        assert rep[k]["ci95"][0] <= rep[k]["value"] <= rep[k]["ci95"][1]
    assert rep["delta_auroc"]["ci95"][0] <= 0 <= rep["delta_auroc"]["ci95"][1] and rep["delong"]["p"] > 0.05
    assert 0 <= rep["ece_reference"] <= 1 and len(rep["sens_spec_bundle"]) == 2
    png = (d / "roc.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    md = (d / "report.md").read_text()
    assert "ΔAUROC" in md and "DeLong p" in md and "patient-grouped" in md
    # scores were flushed one line per recording: the reference to the shared cache, the bundle's to --out
    assert len(_ref_cache(setup).read_text().splitlines()) == 12
    assert [len(p.read_text().splitlines()) for p in d.glob("bundle-*.jsonl")] == [12]


def test_gate_a_perturbed_bundle_with_the_cached_reference(setup, monkeypatch):
    monkeypatch.setenv("RESPI_EDGE_CACHE", str(setup["cache"]))
    assert _verify(setup, "b16", "r16").exit_code == 0  # the reference cache exists
    cache = _ref_cache(setup)
    before = cache.read_bytes()

    def no_load(*a, **k):
        raise AssertionError("the cached reference was loaded again")

    monkeypatch.setattr("respi_edge.runtime.api.load_model", no_load)
    r = _verify(setup, "flipped", "rflip", "--budget", "0")
    assert r.exit_code == 1 and "EXCEEDS the budget 0" in r.output, r.output
    rep = json.loads((setup["d"] / "rflip" / "report.json").read_text())
    a = rep["auroc_reference"]["value"]
    assert a > 0.55  # the tiny model is better than chance on these 12 recordings, so flipping it hurts
    assert rep["auroc_bundle"]["value"] == pytest.approx(1 - a, abs=1 / 36 + 1e-9)
    assert rep["auroc_drop"] > 0.05 and not rep["passed"] and rep["flip_rate"] > 0.5
    # a generous budget passes; everything is cached now, so nothing is scored again
    r = _verify(setup, "flipped", "rflip", "--budget", "0.9")
    assert r.exit_code == 0 and "within the budget 0.9" in r.output, r.output
    assert cache.read_bytes() == before


def test_a_killed_run_resumes_where_it_stopped(setup, monkeypatch):
    monkeypatch.setenv("RESPI_EDGE_CACHE", str(setup["cache"]))
    assert _verify(setup, "b16", "r16").exit_code == 0
    d = setup["d"] / "r16"
    first = json.loads((d / "report.json").read_text())
    cache = _ref_cache(setup)
    lines = cache.read_text().splitlines()
    bundle_jsonl = next(d.glob("bundle-*.jsonl"))
    blines = bundle_jsonl.read_text().splitlines()
    cache.write_text("\n".join(lines[:7]) + '\n{"path": "aud')  # killed while writing line 8
    bundle_jsonl.write_text("\n".join(blines[:3]) + "\n")  # killed between lines
    assert _verify(setup, "b16", "r16").exit_code == 0
    again = cache.read_text().splitlines()
    assert again[:7] == lines[:7] and len(again) == 12 and all(json.loads(ln)["prob"] for ln in again)

    def probs(rows):  # rows re-scored in other batches agree with batch 1 within 1e-5 (Session.score_many)
        return {r["key"]: r["prob"] for r in map(json.loads, rows)}

    for got, want in ((again, lines), (bundle_jsonl.read_text().splitlines(), blines)):
        got, want = probs(got), probs(want)
        assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-5 for k in want)
    rep = json.loads((d / "report.json").read_text())
    for k in ("value", "ci95"):
        assert rep["auroc_reference"][k] == pytest.approx(first["auroc_reference"][k], abs=1e-6)
    assert rep["abs_dp"] == pytest.approx(first["abs_dp"], abs=2e-5)


def test_threshold_calibration_is_stored_and_the_bundle_still_verifies(setup, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("RESPI_EDGE_CACHE", str(tmp_path / "cache"))

    from respi_edge.runtime.bundle import load_bundle, verify as verify_bundle

    b = tmp_path / "b"
    shutil.copytree(setup["b16"], b)
    r = CliRunner().invoke(main, ["calibrate", "--bundle", str(b), "--data", str(setup["man"]), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert 0 <= info["threshold"] <= 1 and info["method"] == "youden" and info["n"] == 12
    m, v = verify_bundle(b)
    assert v.ok and m["threshold"] == info["threshold"] and m["calibration"]["previous_threshold"] == 0.5
    assert load_bundle(b).info.threshold == info["threshold"]
    r = CliRunner().invoke(main, ["calibrate", "--bundle", str(b), "--data", str(setup["man"]), "--target-sensitivity",
                                  "1.0", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["sensitivity"] == 1.0
    # the scores were cached under the weights' hashes: the second rule cost no inference
    assert [len(p.read_text().splitlines()) for p in (tmp_path / "cache" / "calibrate").glob("*.jsonl")] == [12]
    # away from a terminal (a log file, CI) the progress comes as flushed lines on stderr, the answer alone on stdout
    r = CliRunner().invoke(main, ["calibrate", "--bundle", str(b), "--data", str(setup["man"])])
    assert r.exit_code == 0 and r.stdout.startswith("threshold ") and len(r.stdout.splitlines()) == 1
    assert "scoring the calibration data: 12/12 (100 %" in r.stderr
    # verify a re-calibrated bundle: same weights, so the same cached scores; decisions each at its own threshold
    monkeypatch.setenv("RESPI_EDGE_CACHE", str(setup["cache"]))
    assert _verify({**setup, "cal": b}, "cal", "r16").exit_code == 0
    rep = json.loads((setup["d"] / "r16" / "report.json").read_text())
    thr = verify_bundle(b)[0]["threshold"]
    assert rep["threshold"] == thr != 0.5 and rep["threshold_reference"] == 0.5
    assert 0 <= rep["flip_rate_own_thresholds"] <= 1 and len(list((setup["d"] / "r16").glob("bundle-*.jsonl"))) == 1


def test_bench_latency_stages_sizes_and_synthetic_shapes(setup, tmp_path):
    out = tmp_path / "lat"
    r = CliRunner().invoke(main, ["bench", "latency", "--bundle", str(setup["b16"]), "--synthetic", "smollm2-135m",
                                  "--bits", "16", "--repeat", "2", "--warmup", "0", "--in-process", "--out", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["command"].startswith("respi-edge bench latency") and "CPU" in doc["machine"]
    assert "no GPU number here was measured" in doc["note"] and doc["cpu_bandwidth_gbs"] > 0
    b, syn = doc["rows"]
    batched = {"LLM+head, prefix reuse, batch 8 (per window)", "end to end, batch 8 (per window)"}
    assert set(b["stages"]) == {"front end", "encoder", "prefix (once per session)", "LLM+head, prefix reuse",
                                "LLM+head, no reuse", "head", "end to end"} | batched
    # the prefix and the batched passes run at least 3 times
    assert all(s["n"] == (3 if k.startswith("prefix") or k in batched else 2)
               and 0 < s["p50"] <= s["p95"] <= s["p99"] <= s["max"] for k, s in b["stages"].items())
    # a batch-8 stage is the time of one window: a batch's wall time over 8, below the batch-1 end to end's 8 windows
    assert b["stages"]["end to end, batch 8 (per window)"]["p50"] < 8 * b["stages"]["end to end"]["p50"]
    man = json.loads((setup["b16"] / "manifest.json").read_text())
    assert b["bundle_bytes"] == sum(f["bytes"] for f in man["files"].values()) and b["peak_rss_mb"] > 0
    assert b["cold_start_s"] >= b["load_s"] > 0 and b["roofline"]["LLM+head, prefix reuse"]["memory_floor_ms"] > 0
    # the synthetic trunk has SmolLM2-135M's real shapes: 30 layers of q,k,v,o + gate,up,down, 31 norms, fp32 here
    per_layer = 576 * 576 * 2 + 576 * 192 * 2 + 576 * 1536 * 3 + 2 * 576
    assert syn["weight_bytes"] == 4 * (30 * per_layer + 576) and syn["quant"] == "fp32 on CPU"
    reuse, full = syn["roofline"].values()
    assert full["compute_floor_ms"] == pytest.approx(reuse["compute_floor_ms"] * 178 / 64)
    md = out.with_suffix(".md").read_text()
    assert "| synthetic smollm2-135m | 16 (fp32 on CPU) |" in md and "end to end" in md and "peak RSS MB" in md
