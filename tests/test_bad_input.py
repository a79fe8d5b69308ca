"""Bad input and faults (issue 17): one table, input -> expected exit code and error or warning name.

Each row runs one thing and reduces it to an Outcome (exit code, error name, warning names, output):
* `call(fn)`: a library function; a named error (RespiEdgeError) counts as exit 2 with its class name, the
  `InputWarning`s it returns as warnings, any other exception fails the row (a traceback in the CLI);
* `cli(args)`: `respi-edge ARGS` through click's CliRunner, with model loading forbidden: rows that need no
  model must be answered before one is loaded (issue 17: "validate arguments before loading a model").
Files the rows read are made once by the `files` fixture (`files["dir"]`, `files["zeros.wav"]`, ...; in
`cli` arguments `@zeros.wav`).

Every numbered item of the issue has rows: 1 (no degenerate threshold), 2 (screen arguments), 3 (tampered bundles),
4 (score cache keys), 5 (no traceback when nothing is readable), 6 (no NaN result), 7 (audio), 8 (patient input,
prompt length), 9 (stale partial exports; also tests below the table), 10 (CLI checks, exit codes, SIGTERM). Rows
that need a model use the golden tiny checkpoint and a 16-bit bundle of it, made once per module on first use.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from respi_edge.runtime import audio as A
from respi_edge.runtime import validate as V
from respi_edge.runtime.errors import RespiEdgeError


@dataclasses.dataclass
class Outcome:
    code: int
    error: str | None = None
    warnings: tuple[str, ...] = ()
    output: str = ""
    messages: tuple[str, ...] = ()  # the warnings' texts


@dataclasses.dataclass
class Case:
    id: str
    item: int  # the numbered item
    run: Callable[[dict, pytest.MonkeyPatch], Outcome]
    code: int
    error: str | tuple[str, ...] | None = None  # class name of the named error (a tuple: any of these)
    warnings: tuple[str, ...] = ()  # class names of the warnings, in order
    text: str | None = None  # a piece of the message the user sees


def call(fn: Callable[[dict], object]) -> Callable[[dict, pytest.MonkeyPatch], Outcome]:
    def run(files, _mp):
        try:
            result = fn(files)
        except RespiEdgeError as e:
            return Outcome(2, type(e).__name__, output=str(e))
        ws = tuple(result) if isinstance(result, list) else ()
        return Outcome(0, warnings=tuple(type(w).__name__ for w in ws), output="\n".join(map(str, ws)),
                       messages=tuple(V.format_warning(w) for w in ws))
    return run


MODEL_LOADERS = [("respi_edge.runtime.api", "load_model"), ("respi_edge.runtime.load", "load_model"),
                 ("respi_edge.runtime.bundle", "load_bundle")]


ERROR_LINE = re.compile(r"^(?:.*: )?error: (\w+): ", re.M)
WARNING_LINE = re.compile(r"^warning: (\w+): ", re.M)


def cli(*args: str, load: bool = False) -> Callable[[dict, pytest.MonkeyPatch], Outcome]:
    """`respi-edge ARGS`; `@name` is files[name]. Model loading is forbidden unless `load` (rows that need a
    model use the golden tiny checkpoint: `@tiny` `@tiny_llm`). The error name is read from the CLI's
    `error: <Name>: ...` line, the warnings from its `warning: <Name>: ...` lines."""
    def run(files, mp):
        import importlib

        from respi_edge.runtime.cli import main

        def forbidden(*_a, **_k):
            raise AssertionError("a model was loaded before the arguments were checked")

        patched = 0
        for mod, name in MODEL_LOADERS:
            try:
                m = importlib.import_module(mod)
            except ImportError:
                continue
            if hasattr(m, name):
                if not load:
                    mp.setattr(m, name, forbidden)
                patched += 1
        assert patched, f"none of {MODEL_LOADERS} exists any more: update MODEL_LOADERS"
        r = CliRunner().invoke(main, [str(files[a[1:]]) if a.startswith("@") else a for a in args])
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            raise r.exception
        out = r.output  # stdout and stderr interleaved as a terminal shows them
        errors = ERROR_LINE.findall(out)
        return Outcome(r.exit_code, errors[-1] if errors else None, tuple(WARNING_LINE.findall(out)), output=out,
                       messages=tuple(line for line in out.splitlines() if line.startswith("warning: ")))
    return run


def tampered(edit: Callable[[dict, Path, Path], None]) -> Callable[[dict], Path]:
    """A copy of the tiny bundle (weights hard-linked) with `edit(manifest, bundle, outside)` applied and
    MANIFEST.sha256 recomputed, as someone editing a bundle by hand would; `outside` is a folder beside it."""
    def make(files) -> Path:
        import hashlib
        import json
        import shutil
        import tempfile

        from respi_edge.runtime.bundle import MANIFEST, MANIFEST_SUM

        root = Path(tempfile.mkdtemp(dir=files["dir"], prefix="tampered-"))
        b, outside = root / "bundle", root / "outside"
        shutil.copytree(files["bundle"], b, copy_function=os.link)
        outside.mkdir()
        for name in (MANIFEST, MANIFEST_SUM):  # replaced, never written through the shared links
            data = (b / name).read_bytes()
            (b / name).unlink()
            (b / name).write_bytes(data)
        man = json.loads((b / MANIFEST).read_text())
        edit(man, b, outside)
        data = json.dumps(man).encode()
        (b / MANIFEST).write_bytes(data)
        (b / MANIFEST_SUM).write_text(hashlib.sha256(data).hexdigest() + "  " + MANIFEST + "\n")
        return b
    return make


def outside_copy(name: str, rel: str, field: Callable[[dict, str], None]):
    """Copy bundle file `rel` outside the bundle and point manifest field at it by `name`: 'abs' (absolute
    path) or 'up' (`../outside/...`)."""
    def edit(man, b, outside):
        import shutil

        shutil.copy(b / rel, outside / Path(rel).name)
        field(man, str(outside / Path(rel).name) if name == "abs" else f"../outside/{Path(rel).name}")
    return edit


def set_head(man, v):
    man["head"] = v


def set_encoder(man, v):
    man["encoder"]["variants"]["fp32"] = v


def set_llm_dir(man, v):
    man["llm"]["dir"] = v


def onnx_field(key: str):
    def set_(man, v):
        man["backend"] = "onnx"
        man["onnx_llm"] = {"trunk": "llm/model-00001-of-00001.safetensors", "embeddings": "llm/config.json",
                           "tokenizer": "llm/tokenizer.json", "n_layers": 1, "kv_heads": 1, "head_dim": 8, key: v}
    return set_


def head_link_out(man, b, outside):
    """head.safetensors replaced by a link to an identical file outside (its hash still matches)."""
    import shutil

    shutil.copy(b / "head.safetensors", outside / "head.safetensors")
    (b / "head.safetensors").unlink()
    os.symlink(outside / "head.safetensors", b / "head.safetensors")


def folder_link_out(man, b, outside):
    os.symlink(outside, b / "llm" / "extra")


def listed_up(man, b, outside):
    (outside / "x.bin").write_bytes(b"x")
    man["files"]["../outside/x.bin"] = {"sha256": "0" * 64, "bytes": 1}


def bundle_cli(cmd: str, edit, *extra: str) -> Callable[[dict, pytest.MonkeyPatch], Outcome]:
    """`respi-edge inspect|predict` on a freshly tampered bundle (no model may load: the bundle is refused first)."""
    def run(files, mp):
        files = {**files, "tampered": tampered(edit)(files)}
        args = ("inspect", "@tampered") if cmd == "inspect" else ("predict", "@sprsound0", "--bundle", "@tampered")
        return cli(*args, *extra)(files, mp)
    return run


def loads_unverified(edit) -> Callable[[dict], object]:
    """`load_bundle(..., verify_hashes=False)`: the path confinement holds even when the hashes are not checked."""
    def run(files):
        from respi_edge.runtime.bundle import load_bundle

        load_bundle(tampered(edit)(files), verify_hashes=False)
        return []
    return run


def manifest_csv(rows: list[tuple[str, int, dict]]) -> Callable[[dict], Path]:
    """A manifest over files[name] (or a SPRSound path) with label and DMS fields, written under files["dir"]."""
    def make(files) -> Path:
        import csv
        import tempfile

        p = Path(tempfile.mkstemp(dir=files["dir"], suffix=".csv")[1])
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["path", "label", "patient", "gender", "age", "location"])
            w.writeheader()
            for i, (name, label, dms) in enumerate(rows):
                w.writerow({"path": str(files[name]), "label": label, "patient": f"p{i}", **dms})
        return p
    return make


def calibrate(rows, mutate=None) -> Callable[[dict, pytest.MonkeyPatch], Outcome]:
    """`respi-edge calibrate` on a hard-linked copy of the tiny bundle; the bundle's manifest must be unchanged
    whenever the command fails (no threshold written)."""
    def run(files, mp):
        import shutil
        import tempfile

        b = Path(tempfile.mkdtemp(dir=files["dir"], prefix="cal-")) / "bundle"
        shutil.copytree(files["bundle"], b, copy_function=os.link)  # calibrate replaces manifest.json atomically
        before = (b / "manifest.json").read_bytes()
        if mutate:
            mutate(mp)
        got = cli("calibrate", "--bundle", str(b), "--data", str(manifest_csv(rows)(files)), load=True)(files, mp)
        if got.code != 0:
            assert (b / "manifest.json").read_bytes() == before, "a failed calibration changed the bundle"
        return got
    return run


def verify_run(rows, *extra: str, mutate=None) -> Callable[[dict, pytest.MonkeyPatch], Outcome]:
    """`respi-edge verify` of the tiny bundle against the tiny checkpoint; with --json, stdout must be strict JSON
    (a bare NaN fails the row)."""
    def run(files, mp):
        import json

        if mutate:
            mutate(mp)
        data = manifest_csv(rows)(files)
        got = cli("verify", "--bundle", "@bundle", "--reference", "@tiny", "--llm", "@tiny_llm", "--data", str(data),
                  "--bootstrap", "50", "--out", str(data.with_suffix("")), *extra, load=True)(files, mp)
        if "--json" in extra and got.code in (0, 1):
            def strict(c):
                raise ValueError(f"not strict JSON: {c}")

            report = json.loads(got.output[got.output.index("{"):got.output.rindex("}") + 1], parse_constant=strict)
            got.output += f"\npassed={report['passed']}"
        return got
    return run


def nan_auroc(mp):
    """Every AUROC the report computes is NaN (as a degenerate model or data would give)."""
    from respi_edge.runtime import evaluate, stats

    mp.setattr(evaluate.stats, "auroc_ci", lambda *a, **k: stats.CI(math.nan, math.nan, math.nan))


def degenerate_threshold(mp):
    """The threshold rule returns 1.0 (what sklearn's ROC gives when the scores do not separate the classes)."""
    from respi_edge.runtime import stats

    mp.setattr(stats, "youden_threshold", lambda y, p: 1.0)


def cached_rescoring_matches(files) -> list:
    """Item 4: the same recording twice with two DMS texts: the cached re-run gives the first run's scores, and
    the two scores differ (the DMS reaches the model)."""
    from respi_edge.runtime import api
    from respi_edge.runtime.evaluate import score_manifest
    from respi_edge.runtime.manifest import read_manifest

    rows = [("sprsound0", 0, {"gender": "M", "age": "5", "location": "p1"}),
            ("sprsound0", 1, {"gender": "F", "age": "70", "location": "p4"}),
            ("sprsound1", 0, {"gender": "M", "age": "5", "location": "p1"})]
    m = read_manifest(manifest_csv(rows)(files), require_both_classes=False)
    out = files["dir"] / "item4.jsonl"
    model = api.load(files["tiny"], llm=str(files["tiny_llm"]))
    first = [s.prob for s in score_manifest(model, m, "S7", out, model_id="tiny")]

    def no_model():
        raise AssertionError("the cached re-run loaded a model")

    again = [s.prob for s in score_manifest(None, m, "S7", out, loader=no_model, model_id="tiny")]
    assert again == first and first[0] != first[1], (first, again)
    assert len(out.read_text().splitlines()) == 3
    return []


def screen_sigterm(files, _mp) -> Outcome:
    """Item 10: SIGTERM ends `screen` like Ctrl-C: its summary line, exit 0 (a subprocess: a real signal)."""
    import time

    cmd = [sys.executable, "-m", "respi_edge.runtime.cli", "screen", "--file", str(files["sprsound0"]), "--realtime",
           "--checkpoint", str(files["tiny"]), "--llm", str(files["tiny_llm"]), "--task", "S7"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while not line.startswith("compute:"):  # the model is loaded and capture starts
            line = p.stderr.readline()
            assert line or p.poll() is None, "screen ended before it started"
        time.sleep(1.0)
        p.send_signal(signal.SIGTERM)
        rest, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    out = line + err + rest
    errors = ERROR_LINE.findall(out)
    return Outcome(p.returncode, errors[-1] if errors else None, output=out)


def killed_then_export(files, mp) -> Outcome:
    """An export killed with SIGKILL leaves its partial folder; the next export of the same --out removes and names
    it before anything else (here it then fails on a missing checkpoint, before loading a model)."""
    out = files["dir"] / "exported"
    r = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(out)], capture_output=True, text=True)
    left = files["dir"] / r.stdout.strip().rsplit("/", 1)[-1]
    assert left.is_dir()
    got = cli("export", "--checkpoint", str(files["dir"] / "missing.pt"), "--out", str(out))(files, mp)
    assert not left.exists() and left.name in got.output
    return got


NAN, INF = math.nan, math.inf

CASES = [
    # -- item 7 / 10: audio files (the reader streams; bad files still get their named error) ---------------
    Case("audio: a directory", 10, call(lambda f: A.spectrogram(f["dir"])), 2, "UnreadableAudioError",
         text="is a directory"),
    Case("audio: missing file", 10, call(lambda f: A.spectrogram(f["dir"] / "missing.wav")), 2,
         "UnreadableAudioError", text="file not found"),
    Case("audio: random bytes", 7, call(lambda f: A.spectrogram(f["junk.wav"])), 2, "UnreadableAudioError"),
    Case("audio: no samples", 7, call(lambda f: A.spectrogram(f["empty.wav"])), 2, "EmptyAudioError"),
    Case("audio: NaN after 20 s", 7, call(lambda f: A.spectrogram(f["late_nan.wav"])), 2, "NonFiniteAudioError"),
    Case("audio: all zeros", 7, call(lambda f: A.spectrogram(f["zeros.wav"])), 2, "SilentAudioError"),
    Case("audio: 0.05 s of sound", 7, call(lambda f: A.spectrogram(f["short.wav"])), 2, "TooShortAudioError"),
    Case("audio: 10 min at 8 kHz is scored", 7, call(lambda f: [A.spectrogram(f["long.wav"])] and []), 0),

    # -- item 2 / 6 / 8: argument checks (pure; the CLI calls them before loading a model) -------------------
    Case("--hop 0", 2, call(lambda f: V.check_hop(0)), 2, "InvalidArgumentError", text="at least"),
    Case("--hop -1", 2, call(lambda f: V.check_hop(-1)), 2, "InvalidArgumentError"),
    Case("--hop nan", 2, call(lambda f: V.check_hop(NAN)), 2, "InvalidArgumentError", text="finite"),
    Case("--hop inf", 2, call(lambda f: V.check_hop(INF)), 2, "InvalidArgumentError"),
    Case("--hop 2", 2, call(lambda f: V.check_hop(2.0) and []), 0),
    Case("--duration 0", 2, call(lambda f: V.check_duration(0)), 2, "InvalidArgumentError", text="one window"),
    Case("--duration -5", 2, call(lambda f: V.check_duration(-5)), 2, "InvalidArgumentError"),
    Case("--duration 5 (shorter than a window)", 2, call(lambda f: V.check_duration(5)), 2, "InvalidArgumentError"),
    Case("--duration nan", 2, call(lambda f: V.check_duration(NAN)), 2, "InvalidArgumentError"),
    Case("--duration 60", 2, call(lambda f: V.check_duration(60) and []), 0),
    Case("no --duration", 2, call(lambda f: V.check_duration(None) or []), 0),
    Case("--threshold nan", 6, call(lambda f: V.check_threshold(NAN)), 2, "InvalidArgumentError"),
    Case("--threshold inf", 6, call(lambda f: V.check_threshold(INF)), 2, "InvalidArgumentError"),
    Case("--threshold 1.5", 6, call(lambda f: V.check_threshold(1.5)), 2, "InvalidArgumentError", text="between 0"),
    Case("--threshold -0.1", 6, call(lambda f: V.check_threshold(-0.1)), 2, "InvalidArgumentError"),
    Case("--threshold 0.3", 6, call(lambda f: V.check_threshold(0.3) and []), 0),
    Case("--threshold 0 and 1 are allowed", 6, call(lambda f: [V.check_threshold(0), V.check_threshold(1)] and []),
         0),

    # -- item 8: patient input: named warnings, still scored ---------------------------------------------
    Case("--location p9", 8, call(lambda f: V.patient_warnings(location="p9")), 0, warnings=("UnknownCodeWarning",),
         text="p1-p4"),
    Case("--location P1", 8, call(lambda f: V.patient_warnings(location="P1")), 0, warnings=("UnknownCodeWarning",),
         text="did you mean 'p1'"),
    Case("--location L7", 8, call(lambda f: V.patient_warnings(location="L7")), 0, warnings=("UnknownCodeWarning",)),
    Case("--location 'P X L'", 8, call(lambda f: V.patient_warnings(location="P X L")), 0,
         warnings=("UnknownCodeWarning",)),
    Case("--age -5", 8, call(lambda f: V.patient_warnings(age="-5")), 0, warnings=("AgeWarning",)),
    Case("--age abc", 8, call(lambda f: V.patient_warnings(age="abc")), 0, warnings=("AgeWarning",)),
    Case("--age nan", 8, call(lambda f: V.patient_warnings(age="nan")), 0, warnings=("AgeWarning",)),
    Case("--age 7-5", 8, call(lambda f: V.patient_warnings(age="7-5")), 0, warnings=("AgeWarning",)),
    Case("--age 300", 8, call(lambda f: V.patient_warnings(age="300")), 0, warnings=("AgeWarning",)),
    Case("--gender X", 8, call(lambda f: V.patient_warnings(gender="X")), 0, warnings=("GenderWarning",)),
    Case("--symptoms drycuogh", 8, call(lambda f: V.patient_warnings(symptoms="drycuogh")), 0,
         warnings=("UnknownCodeWarning",), text="did you mean 'drycough'"),
    Case("--history cough (a symptom code)", 8, call(lambda f: V.patient_warnings(history="cough")), 0,
         warnings=("UnknownCodeWarning",), text="a --symptoms code"),
    Case("several at once", 8, call(lambda f: V.patient_warnings("X", "abc", "p9")), 0,
         warnings=("GenderWarning", "AgeWarning", "UnknownCodeWarning")),
    Case("dataset-like DMS: no warning", 8,
         call(lambda f: V.patient_warnings("M", "14.7", "p3", "asthma,hbp", "drycough, fever")), 0),
    Case("ranges, pnts, KAUH, free text: no warning", 8,
         call(lambda f: V.patient_warnings("Female", "45-54", "P R L ", "none", "night cough for two weeks")
              + V.patient_warnings("pnts", "pnts", "left upper back", "pnts", "wheezing")
              + V.patient_warnings(age="80+", location="Tc") + V.patient_warnings(age=0.75, location=" p1 ")), 0),
    Case("25,000-token prompt, 8,192 positions", 8, call(lambda f: V.prompt_length_check(25_000, 8192)), 0,
         warnings=("PromptTruncatedWarning",), text="first 2048"),
    Case("prompt that cannot fit the positions", 8,
         call(lambda f: V.prompt_length_check(3000, 2048, truncate_at=None)), 2, "PromptTooLongError"),
    Case("2,048-token prompt, 8,192 positions", 8, call(lambda f: V.prompt_length_check(2048, 8192, reserved=2112)),
         0),

    # -- the CLI: what click rejects before any model is loaded ------------------------------------------
    Case("cli: predict without a file", 10, cli("predict"), 2, text="Missing argument"),
    Case("cli: predict --threshold abc", 6, cli("predict", "--threshold", "abc", "@short.wav"), 2,
         text="Invalid value"),
    Case("cli: screen --hop abc", 2, cli("screen", "--hop", "abc"), 2, text="Invalid value"),

    # -- item 2 / 6 / 10: the CLI checks every argument before loading a model -------------------------------
    *[Case(f"cli: screen {' '.join(a)}", 2, cli("screen", *a, "--task", "S7"), 2, "InvalidArgumentError")
      for a in (("--hop", "0"), ("--hop", "-1"), ("--hop", "nan"), ("--duration", "0"), ("--duration", "-5"),
                ("--duration", "5"))],
    Case("cli: screen --threshold nan", 6, cli("screen", "--threshold", "nan"), 2, "InvalidArgumentError"),
    Case("cli: predict --threshold nan", 6, cli("predict", "--threshold", "nan", "@short.wav"), 2,
         "InvalidArgumentError", text="finite"),
    Case("cli: predict --threshold 1.5", 6, cli("predict", "--threshold", "1.5", "@short.wav"), 2,
         "InvalidArgumentError"),
    Case("cli: export --threshold nan", 6, cli("export", "--threshold", "nan", "--out", "@dir"), 2,
         "InvalidArgumentError"),
    Case("cli: export --max-drift nan", 6, cli("export", "--max-drift", "nan", "--out", "@dir"), 2,
         "InvalidArgumentError"),
    Case("cli: export --encoder-default int8 without building it (before loading)", 10,
         cli("export", "--encoder-variants", "", "--encoder-default", "int8", "--out", "@dir"), 2, "BundleError",
         text="--encoder-variants"),
    Case("cli: export --accuracy-level 4 on the bitsandbytes backend (before loading)", 10,
         cli("export", "--accuracy-level", "4", "--out", "@dir"), 2, "BundleError", text="--backend onnx"),
    Case("cli: verify --budget nan", 6, cli("verify", "--budget", "nan", "--bundle", "@dir", "--data", "@short.wav"),
         2, "InvalidArgumentError"),
    Case("cli: calibrate --target-sensitivity nan", 6,
         cli("calibrate", "--target-sensitivity", "nan", "--bundle", "@dir", "--data", "@short.wav"), 2,
         "InvalidArgumentError"),
    Case("cli: predict --task nope (before loading)", 10, cli("predict", "--task", "nope", "@short.wav"), 2,
         "PromptError", text="unknown task"),
    Case("cli: predict --task and --prompt", 10, cli("predict", "--task", "S7", "--prompt", "x", "@short.wav"), 2,
         "PromptError"),
    Case("cli: screen --task nope (before loading)", 10, cli("screen", "--task", "nope"), 2, "PromptError"),
    Case("cli: screen --input-device 9999 (before loading)", 10, cli("screen", "--input-device", "9999"), 2,
         ("DeviceError", "DependencyError")),
    Case("cli: score --out x.json (before hashing or loading)", 10,
         cli("score", "--data", "@short.wav", "--out", "x.json"), 2, "ResultsError"),
    Case("cli: error lines name the error type", 10, cli("predict", "--bundle", "@nobundle", "@short.wav"), 2,
         "BundleError", text="error: BundleError: "),

    # -- item 3: a tampered bundle (MANIFEST.sha256 recomputed) is refused before any model loads ---------------
    *[Case(f"bundle: {what} {how} -> {cmd}", 3,
           bundle_cli(cmd, outside_copy(how, rel, setter)), 2, "BundleError",
           text="a path outside the bundle" if cmd == "inspect" else None)
      for what, rel, setter in (("head", "head.safetensors", set_head),
                                ("encoder fp32", "encoder.onnx", set_encoder),
                                ("ONNX trunk", "llm/model-00001-of-00001.safetensors", onnx_field("trunk")),
                                ("ONNX tokenizer", "llm/tokenizer.json", onnx_field("tokenizer")))
      for how in ("abs", "up") for cmd in ("inspect", "predict")],
    Case("bundle: llm dir absolute -> predict", 3,
         bundle_cli("predict", lambda m, b, o: set_llm_dir(m, str(b / "llm"))), 2, "BundleError"),
    Case("bundle: a hashed entry ../ -> inspect", 3, bundle_cli("inspect", listed_up), 2, "BundleError",
         text="malformed file entry"),
    Case("bundle: head linked out -> inspect reports it (exit 1)", 3, bundle_cli("inspect", head_link_out), 1,
         text="head.safetensors: a link leading out of the bundle"),
    Case("bundle: head linked out -> predict", 3, bundle_cli("predict", head_link_out), 2, "BundleError",
         text="link leading out"),
    Case("bundle: folder linked out -> predict", 3, bundle_cli("predict", folder_link_out), 2, "BundleError",
         text="llm/extra: a link leading out"),
    Case("bundle: head ../ loaded without hash checks", 3,
         call(loads_unverified(outside_copy("up", "head.safetensors", set_head))), 2, "BundleError"),
    Case("bundle: head linked out loaded without hash checks", 3, call(loads_unverified(head_link_out)), 2,
         "BundleError", text="link leading out"),

    # -- items 1, 5, 6: no degenerate threshold, no traceback, no NaN result (tiny model and bundle) -----------
    Case("calibrate: every negative unreadable", 1,
         calibrate([("pos0", 1, {}), ("pos1", 1, {}), ("junk.wav", 0, {}), ("junk2.flac", 0, {})]), 2,
         "ManifestError", text="every scorable one has label 1"),
    Case("calibrate: a threshold that flags no one", 1,
         calibrate([("pos0", 1, {}), ("pos1", 1, {}), ("sprsound0", 0, {}), ("sprsound1", 0, {})],
                   degenerate_threshold), 2, "ManifestError", text="flags no one"),
    Case("calibrate: every row unreadable", 5, calibrate([("junk.wav", 1, {}), ("junk2.flac", 0, {})]), 2,
         "ManifestError", text="none of its 2 recording(s)"),
    Case("verify: every row unreadable", 5, verify_run([("junk.wav", 1, {}), ("junk2.flac", 0, {})]), 2,
         "ManifestError", text="none of its 2 recording(s)"),
    Case("verify --json: strict JSON", 6,
         verify_run([("pos0", 1, {}), ("pos1", 1, {}), ("sprsound0", 0, {}), ("sprsound1", 0, {})], "--json"), 0,
         text="passed=True"),
    Case("verify --json with NaN AUROC: failed, null, strict JSON", 6,
         verify_run([("pos0", 1, {}), ("pos1", 1, {}), ("sprsound0", 0, {}), ("sprsound1", 0, {})], "--json",
                    mutate=nan_auroc), 1, text="passed=False"),
    Case("verify with NaN AUROC: text says why", 6,
         verify_run([("pos0", 1, {}), ("pos1", 1, {}), ("sprsound0", 0, {}), ("sprsound1", 0, {})],
                    mutate=nan_auroc), 1, text="FAILED: the AUROC is undefined"),

    # -- item 4: the score cache is keyed by content, DMS, prompt and model --------------------------------
    Case("same path twice, two DMS, cached re-run", 4, call(cached_rescoring_matches), 0),

    # -- item 8: patient input and prompt length through the CLI (tiny model) --------------------------------
    Case("cli: predict --location p9 --age abc --gender X", 8,
         cli("predict", "@sprsound0", "--checkpoint", "@tiny", "--llm", "@tiny_llm", "--task", "S7", "--location",
             "p9", "--age", "abc", "--gender", "X", load=True), 0,
         warnings=("GenderWarning", "AgeWarning", "UnknownCodeWarning"), text="P(COPD) = "),
    Case("cli: predict with a 25,000-token --prompt", 8,
         cli("predict", "@sprsound0", "--checkpoint", "@tiny", "--llm", "@tiny_llm", "--prompt",
             "Is this recording normal? " * 5000, load=True), 0, warnings=("PromptTruncatedWarning",),
         text="only its first 2048"),

    # -- item 9 / 10: export after a killed export; per-file errors; SIGTERM ------------------------------------
    Case("cli: export names and removes a killed export's folder", 9, lambda f, mp: killed_then_export(f, mp), 2,
         "CheckpointError", text="removed a stale partial export"),
    Case("cli: predict with one unreadable file exits 2, still scores the other", 10,
         cli("predict", "@junk.wav", "@sprsound0", "--checkpoint", "@tiny", "--llm", "@tiny_llm", "--task", "S7",
             load=True), 2, "UnreadableAudioError", text="P(COPD) = "),
    Case("cli: screen ends on SIGTERM with its summary", 10, screen_sigterm, 0, text="summary: "),
]


class LazyFiles(dict):
    """files[name]: made on first use by `makers[name]` (the tiny model and bundle only when a row needs them)."""

    def __init__(self, makers: dict[str, Callable[[], object]], **eager):
        super().__init__(**eager)
        self.makers = makers

    def __missing__(self, key):
        self[key] = self.makers[key]()
        return self[key]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    import csv

    from conftest import shared_path

    d = tmp_path_factory.mktemp("bad_input")
    rng = np.random.default_rng(17)
    data = shared_path("data", "sprsound2022")
    rows = list(csv.DictReader(open(data / "test_intra.csv")))
    pos = [data / r["path"] for r in rows if r["label"] == "1"][:2]
    neg = [data / r["path"] for r in rows if r["label"] == "0"][:2]

    def tiny() -> Path:
        out = d / "tiny" / "model_OpenBioLLM_3epoch.pt"
        out.parent.mkdir()
        r = subprocess.run([sys.executable, str(shared_path("golden", "respllm_tiny", "make_checkpoint.py")),
                            str(out)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        return out

    def bundle() -> Path:
        from respi_edge.export.exporter import ExportOptions, export_bundle

        export_bundle(d / "bundle", str(out["tiny"]), str(out["tiny_llm"]),
                      ExportOptions(bits=16, encoder_variants=(), parity=False), say=lambda m: None, task="S7")
        return d / "bundle"

    out: dict = LazyFiles({"tiny": tiny, "bundle": bundle}, dir=d,
                          tiny_llm=shared_path("golden", "respllm_tiny", "llm"),
                          sprsound0=neg[0], sprsound1=neg[1], pos0=pos[0], pos1=pos[1], nobundle=d / "nobundle")

    def wav(name, y, sr=16000, subtype="PCM_16"):
        p = d / name
        sf.write(p, y, sr, subtype=subtype)
        out[name] = p

    (d / "junk.wav").write_bytes(rng.bytes(5000))
    out["junk.wav"] = d / "junk.wav"
    (d / "junk2.flac").write_bytes(rng.bytes(5000))
    out["junk2.flac"] = d / "junk2.flac"
    wav("empty.wav", np.zeros(0, np.int16))
    late_nan = (0.1 * rng.standard_normal(16000 * 30)).astype(np.float32)
    late_nan[16000 * 20] = np.nan
    wav("late_nan.wav", late_nan, subtype="FLOAT")
    wav("zeros.wav", np.zeros(32000, np.int16))
    wav("short.wav", 0.3 * rng.standard_normal(800))
    wav("long.wav", 0.1 * rng.standard_normal(8000 * 600), sr=8000)
    return out


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    """Score caches of this module in its own folder (shared by its rows: a cached row costs no inference)."""
    monkeypatch.setenv("RESPI_EDGE_CACHE", str(tmp_path_factory.getbasetemp() / "bad_input_cache"))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"item{c.item}: {c.id}")
def test_bad_input(case: Case, files, monkeypatch):
    got = case.run(files, monkeypatch)
    error = got.error if not isinstance(case.error, tuple) or got.error not in case.error else case.error
    assert (got.code, error, got.warnings) == (case.code, case.error, case.warnings), got.output
    if case.text is not None:
        assert case.text in got.output
    assert "Traceback" not in got.output
    for line, name in zip(got.messages, got.warnings):  # every warning prints as one named stderr line
        assert line.startswith(f"warning: {name}: ") and "\n" not in line


def test_table_covers_every_item():
    assert {c.item for c in CASES} >= set(range(1, 11))


def test_warnings_print_as_one_named_line():
    (w,) = V.patient_warnings(location="p9")
    line = V.format_warning(w)
    assert line.startswith("warning: UnknownCodeWarning: --location 'p9'") and "\n" not in line
    assert isinstance(w, UserWarning) and issubclass(V.InvalidArgumentError, RespiEdgeError)


# -- item 9: partial exports of killed processes are removed by the next export ------------------------------

KILLED_EXPORT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from respi_edge.export.partials import make_partial
    tmp = make_partial(Path(sys.argv[1]))
    (tmp / "llm").mkdir()
    (tmp / "llm" / "shard-0.safetensors").write_bytes(b"x" * 100_000)
    print(tmp, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_partial_of_a_killed_export_is_removed(tmp_path):
    from respi_edge.export.partials import find_partials, remove_stale_partials

    out = tmp_path / "bundle"
    r = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(out)], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL
    left = tmp_path / r.stdout.strip().rsplit("/", 1)[-1]
    assert left.is_dir() and left.name.startswith(".bundle.partial-")
    (found,) = find_partials(out)
    assert (found.path, found.owner, found.bytes) == (left, "dead", 100_000)
    done = remove_stale_partials(out)
    assert [p.path for p in done.removed] == [left] and done.kept == [] and not left.exists()
    assert "no longer running" in done.removed[0].describe() and "0.1 MB" in done.removed[0].describe()


def test_partials_that_cannot_be_judged_are_named_not_removed(tmp_path):
    from respi_edge.export.partials import host_tag, make_partial, partial_prefix, remove_stale_partials

    out = tmp_path / "bundle"
    mine = make_partial(out)  # this process: alive
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        alive = tmp_path / f"{partial_prefix(out)}{host_tag()}-{sleeper.pid}-abc"
        other_host = tmp_path / f"{partial_prefix(out)}{'0' * 8 if host_tag() != '0' * 8 else '1' * 8}-1-abc"
        old_form = tmp_path / f"{partial_prefix(out)}k2j4h5g6"
        other_bundle = tmp_path / ".other.partial-x"
        for p in (alive, other_host, old_form, other_bundle):
            p.mkdir()
        target = tmp_path / "precious"
        target.mkdir()
        (target / "keep.txt").write_text("keep")
        os.symlink(target, tmp_path / f"{partial_prefix(out)}{host_tag()}-999999999-link")  # never followed
        done = remove_stale_partials(out)
        assert done.removed == []
        assert {p.path: p.owner for p in done.kept} == {
            mine: "this process", alive: "alive", other_host: "other host", old_form: "unknown"}
        assert all(p.exists() for p in (mine, alive, other_host, old_form, other_bundle))
        assert (target / "keep.txt").read_text() == "keep"
    finally:
        sleeper.kill()
        sleeper.wait()
    # once its owner has died, the next export removes it
    assert [p.path for p in remove_stale_partials(out).removed] == [alive]
