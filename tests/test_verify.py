"""verify end to end on real SPRSound recordings with the golden tiny checkpoint; manifest errors."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import shared_path, write_manifest
from respi_edge.export.exporter import ExportOptions, export_bundle
from respi_edge.runtime.cli import main
from respi_edge.runtime.errors import ManifestError
from respi_edge.runtime.manifest import read_manifest


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_ckpt, tiny_llm):
    d = tmp_path_factory.mktemp("verify")
    ck, llm = tiny_ckpt, tiny_llm
    bundle = d / "b16"
    export_bundle(bundle, str(ck), str(llm), ExportOptions(bits=16, encoder_variants=(), parity=False),
                  say=lambda m: None, task="S7")
    man = write_manifest(d / "small.csv", "test_intra", 8, 8)
    return ck, llm, bundle, man, d


def _verify(setup, *extra):
    ck, llm, bundle, man, d = setup
    return CliRunner().invoke(main, ["verify", "--bundle", str(bundle), "--reference", str(ck), "--llm", str(llm),
                                     "--data", str(man), "--bootstrap", "200", "--out", str(d / "report"), *extra])


def test_report_png_and_gate(setup, monkeypatch, tmp_path):
    monkeypatch.setenv("RESPI_EDGE_CACHE", str(tmp_path))
    r = _verify(setup, "--budget", "0.5")
    assert r.exit_code == 0, r.output
    d = setup[4] / "report"
    rep = json.loads((d / "report.json").read_text())
    assert rep["n"] == 16 and rep["errors"] == 0 and rep["passed"]
    # 16-bit weights: tiny drift; the CI of the reference covers its estimate
    assert rep["abs_dp"]["max"] < 0.02 and rep["flip_rate"] <= 1 / 16
    a = rep["auroc_reference"]
    assert a["ci95"][0] <= a["value"] <= a["ci95"][1]
    png = (d / "roc.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "ΔAUROC" in (d / "report.md").read_text()
    # the gate: a budget nobody can meet exits 1
    r = _verify(setup, "--budget", "-1")
    assert r.exit_code == 1 and "EXCEEDS" in r.output


def test_reference_cache_is_reused(setup, monkeypatch, tmp_path):
    monkeypatch.setenv("RESPI_EDGE_CACHE", str(tmp_path))
    assert _verify(setup).exit_code == 0
    cache = list((tmp_path / "verify").glob("reference-*.jsonl"))
    assert len(cache) == 1
    lines = cache[0].read_text().splitlines()
    assert len(lines) == 16
    # a half-written line (a killed run) is scored again, finished lines are kept
    cache[0].write_text("\n".join(lines[:10]) + '\n{"path": "aud')
    assert _verify(setup).exit_code == 0
    again = cache[0].read_text().splitlines()
    assert again[:10] == lines[:10] and len([ln for ln in again if ln.endswith("}")]) == 16


def _csv(tmp_path, text):
    p = tmp_path / "m.csv"
    p.write_text(text)
    return p


def test_manifest_errors(tmp_path):
    audio = shared_path("data", "sprsound2022", "audio", "40138127_14.7_0_p3_139.flac")
    with pytest.raises(ManifestError, match="missing column"):
        read_manifest(_csv(tmp_path, "file,label\nx.wav,1\n"))
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(_csv(tmp_path, "path,label,patient\nnope.flac,1,p1\nnope2.flac,0,p2\n"))
    with pytest.raises(ManifestError, match="not an integer"):
        read_manifest(_csv(tmp_path, f"path,label,patient\n{audio},yes,p1\n"))
    with pytest.raises(ManifestError, match="outside"):
        read_manifest(_csv(tmp_path, f"path,label,patient\n{audio},2,p1\n"))
    with pytest.raises(ManifestError, match="both classes"):
        read_manifest(_csv(tmp_path, f"path,label,patient\n{audio},1,p1\n{audio},1,p2\n"))
    with pytest.raises(ManifestError, match="empty patient"):
        read_manifest(_csv(tmp_path, f"path,label,patient\n{audio},1,\n"))
    m = read_manifest(shared_path("data", "sprsound2022", "test_intra.csv"))
    assert len(m) == 324 and m.rows[0].dms.keys() == {"gender", "age", "location"}


def test_threshold_calibration_is_stored_and_the_bundle_still_verifies(setup, tmp_path):
    import shutil

    from respi_edge.runtime.bundle import load_bundle, verify as verify_bundle

    _, _, bundle, man, _ = setup
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    r = CliRunner().invoke(main, ["calibrate", "--bundle", str(b), "--data", str(man), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert 0 <= info["threshold"] <= 1 and info["method"] == "youden" and info["n"] == 16
    m, v = verify_bundle(b)
    assert v.ok and m["threshold"] == info["threshold"] and m["calibration"]["previous_threshold"] == 0.5
    assert load_bundle(b).info.threshold == info["threshold"]
    r = CliRunner().invoke(main, ["calibrate", "--bundle", str(b), "--data", str(man), "--target-sensitivity",
                                  "1.0", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["sensitivity"] == 1.0
