"""`respi-edge predict` on the golden tiny checkpoint prints the golden probabilities for all six cases."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import shared_path
from respi_edge.runtime.cli import main

# case -> (input, task flags, DMS flags): the DMS is given as dataset codes / fields, not as the golden text
CASES = {
    "c1_S1_full": ("mel/inputs/a1_breath_cough_16k_mono_float_9s5.wav", ["--task", "S1"],
                   ["--gender", "Female", "--age", "45-54", "--history", "respiratory_condition_asthma",
                    "--symptoms", "cough_any,new_continuous_cough,fatigue"]),
    "c2_S7_full": ("mel/inputs/a3_lung_8k_mono_int16.wav", ["--task", "S7"],
                   ["--gender", "M", "--age", "74", "--location", "Lr"]),
    "c3_T6_partial": ("mel/inputs/a5_breath_16k_int16_4s.wav", ["--task", "T6"],
                      ["--gender", "M", "--location", "P R L "]),
    "c4_composed_empty": ("encoder/r1_uniform.npz:spec", ["--task", "sprsound_normal_vs_adventitious"], []),
    "c5_S1_partial": ("mel/inputs/a2_speech_cough_44k1_stereo_int16.wav", ["--task", "S1"],
                      ["--gender", "pnts", "--age", "pnts", "--history", "pnts", "--symptoms", "pnts"]),
    "c6_S7_empty": ("mel/inputs/a7_click_clipping_16k_int16.wav", ["--task", "S7"], []),
}


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt):
    return tiny_ckpt


@pytest.mark.parametrize("name", list(CASES))
def test_predict_prints_golden_probability(ckpt, name):
    expected = np.load(shared_path("golden", "respllm_tiny", "expected.npz"))
    man = json.loads(shared_path("golden", "respllm_tiny", "manifest.json").read_text())
    case = next(c for c in man["cases"] if c["case"] == name)
    inp, task, dms = CASES[name]
    golden = shared_path("golden")
    args = ["predict", str(golden / inp), "--checkpoint", str(ckpt), "--llm",
            str(shared_path("golden", "respllm_tiny", "llm")), *task, *dms, "--json"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert abs(out["prob"] - float(expected[f"{name}/prob1"][0])) < 1e-4
    np.testing.assert_allclose(out["logits"], case["logits"], atol=1e-4, rtol=0)
    assert out["disclaimer"].lower().startswith("screening aid, not a diagnosis")


def test_predict_text_output_and_bad_audio(ckpt, tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF0000WAVEjunk")
    good = shared_path("golden", "mel", "inputs", "a3_lung_8k_mono_int16.wav")
    args = ["predict", str(good), str(bad), "--checkpoint", str(ckpt), "--llm",
            str(shared_path("golden", "respllm_tiny", "llm")), "--task", "S7"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2  # one file failed: reported by its error's name, the other still scored
    assert "P(COPD) = " in r.output and "broken.wav: error: UnreadableAudioError: " in r.output
    assert "Traceback" not in r.output


def test_predict_needs_a_task_for_foreign_checkpoints(ckpt):
    good = shared_path("golden", "mel", "inputs", "a3_lung_8k_mono_int16.wav")
    r = CliRunner().invoke(main, ["predict", str(good), "--checkpoint", str(ckpt), "--llm",
                                  str(shared_path("golden", "respllm_tiny", "llm"))])
    assert r.exit_code == 2 and "--task" in r.output and "Traceback" not in r.output


def test_tasks_lists_the_catalogue():
    r = CliRunner().invoke(main, ["tasks", "--json"])
    assert r.exit_code == 0
    ids = [t["id"] for t in json.loads(r.stdout)]
    assert {"S1", "S7", "T6", "sprsound_normal_vs_adventitious"} <= set(ids) and len(ids) >= 14


@pytest.mark.parametrize("command", [["predict"], ["screen"]])
def test_help_lists_options_as_a_user_needs_them(command):
    """Input, patient (DMS), task, model/bundle, output, then the expert options."""
    text = CliRunner().invoke(main, [*command, "--help"]).output
    order = ["--gender", "--dms", "--task", "--threshold", "--bundle", "--checkpoint", "--llm", "--json",
             "--merge-lora", "--d-ff", "--lora-alpha"]
    if command == ["screen"]:
        order = ["--input-device", "--file", "--hop", *order]
    pos = [text.index(f"  {o}") for o in order]
    assert pos == sorted(pos), text


@pytest.mark.parametrize("command, order", [
    ("score", ["--data", "--task", "--bundle", "--checkpoint", "--out", "--json", "--engine", "--address",
               "--workers", "--gpus-per-worker"]),
    ("verify", ["--data", "--task", "--bundle", "--reference", "--out", "--json", "--engine", "--address",
                "--workers"]),
])
def test_cohort_options_follow_the_same_order(command, order):
    """Input, task, model, output, then the expert (engine) options."""
    text = CliRunner().invoke(main, [command, "--help"]).output
    pos = [text.index(f"  {o}") for o in order]
    assert pos == sorted(pos), text
