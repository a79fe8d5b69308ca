"""Bad input and faults (issue 17): one table, input -> expected exit code and error or warning name.

Each row runs one thing and reduces it to an Outcome (exit code, error name, warning names, output):
* `call(fn)`: a library function; a named error (RespiEdgeError) counts as exit 2 with its class name, the
  `InputWarning`s it returns as warnings, any other exception fails the row (a traceback in the CLI);
* `cli(args)`: `respi-edge ARGS` through click's CliRunner, with model loading forbidden: rows that need no
  model must be answered before one is loaded (issue 17: "validate arguments before loading a model").
Files the rows read are made once by the `files` fixture (`files["dir"]`, `files["zeros.wav"]`, ...; in
`cli` arguments `@zeros.wav`).

Phase 1 holds the rows of items 7 (audio), 8 (argument and patient-input checks), 9 (stale partial exports, as
tests below the table) and 10 (a directory is not "file not found"). PHASE_2 at the bottom lists the rows the
CLI wiring and items 1-6 add.
"""
from __future__ import annotations

import dataclasses
import math
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable

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
    error: str | None = None  # class name of the named error
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


def cli(*args: str) -> Callable[[dict, pytest.MonkeyPatch], Outcome]:
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
                mp.setattr(m, name, forbidden)
                patched += 1
        assert patched, f"none of {MODEL_LOADERS} exists any more: update MODEL_LOADERS"
        r = CliRunner().invoke(main, [str(files[a[1:]]) if a.startswith("@") else a for a in args])
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            raise r.exception
        return Outcome(r.exit_code, output=r.output + (r.stderr if r.stderr_bytes is not None else ""))
    return run


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
]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("bad_input")
    rng = np.random.default_rng(17)
    out: dict = {"dir": d}

    def wav(name, y, sr=16000, subtype="PCM_16"):
        p = d / name
        sf.write(p, y, sr, subtype=subtype)
        out[name] = p

    (d / "junk.wav").write_bytes(rng.bytes(5000))
    out["junk.wav"] = d / "junk.wav"
    wav("empty.wav", np.zeros(0, np.int16))
    late_nan = (0.1 * rng.standard_normal(16000 * 30)).astype(np.float32)
    late_nan[16000 * 20] = np.nan
    wav("late_nan.wav", late_nan, subtype="FLOAT")
    wav("zeros.wav", np.zeros(32000, np.int16))
    wav("short.wav", 0.3 * rng.standard_normal(800))
    wav("long.wav", 0.1 * rng.standard_normal(8000 * 600), sr=8000)
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"item{c.item}: {c.id}")
def test_bad_input(case: Case, files, monkeypatch):
    got = case.run(files, monkeypatch)
    assert (got.code, got.error, got.warnings) == (case.code, case.error, case.warnings), got.output
    if case.text is not None:
        assert case.text in got.output
    assert "Traceback" not in got.output
    for line, name in zip(got.messages, got.warnings):  # every warning prints as one named stderr line
        assert line.startswith(f"warning: {name}: ") and "\n" not in line


def test_table_covers_the_items_of_this_phase():
    assert {c.item for c in CASES} >= {2, 6, 7, 8, 10}


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


# Rows the next phase adds (after the issue 14 refactor), each with the exit code and error name it expects:
PHASE_2 = """
item 1  calibrate with every negative row unreadable            -> 2, ManifestError (no threshold written)
item 2  cli screen --hop 0 / -1 / nan, --duration 0 / -5 / 5     -> 2, InvalidArgumentError, no model loaded
item 3  bundle manifest path absolute, ../, or a symlink outside -> 2, BundleError (inspect and predict)
item 4  same audio path twice, different DMS, cached re-run      -> 0, scores differ as on the first run
item 5  verify / calibrate with every row unreadable             -> 2, ManifestError
item 6  cli predict/verify --threshold nan; verify AUROC NaN      -> 2, InvalidArgumentError / no NaN in --json
item 8  cli predict --location p9 --age abc --gender X            -> 0, stderr 'warning: UnknownCodeWarning: ...'
item 8  cli predict with a 25,000-token --prompt                  -> 0, 'warning: PromptTruncatedWarning: ...'
item 9  cli export after a killed export                          -> 0, names the removed partial folder
item 10 cli predict on a bad file -> 2 (README); screen SIGTERM prints its summary; --task / --input-device
        checked before loading a model
"""
