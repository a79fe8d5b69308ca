"""The `respi-edge` command line: parses arguments, calls the library API, prints text or --json."""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import sys

import click

from .errors import BundleError, RespiEdgeError
from .info import DISCLAIMER_SHORT
from .quiet import quiet_libraries


def friendly_errors(fn):
    """Turn our named errors (and a missing file or Ctrl-C) into one line and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except RespiEdgeError as e:
            click.echo(f"error: {type(e).__name__}: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def options(*decorators):
    """Apply click options so that --help lists them in the order given (click lists the last applied first)."""

    def apply(fn):
        for d in reversed(decorators):
            fn = d(fn)
        return fn

    return apply


# --help order everywhere: input, patient (DMS), task, model/bundle, output, then expert options

DMS_OPTIONS = options(
    click.option("--gender", help="Patient gender, free text or a dataset code (M/F)."),
    click.option("--age", help="Patient age, as text (e.g. 7, 45-54)."),
    click.option("--location", help="Recording location: code (p1..p4, Tc/Al/Ar/.., L1..R6, 'P R L') or text."),
    click.option("--history", help="Medical history: comma-separated codes (asthma,copd,..), 'none' or text."),
    click.option("--symptoms", help="Symptoms: comma-separated codes (drycough,fever,..), 'none' or text."),
    click.option("--dms", "dms_text", help="The whole DMS text, used as is (overrides the fields above)."),
)

TASK_OPTIONS = options(
    click.option("--task", "task", help="Task id (see `respi-edge tasks`)."),
    click.option("--prompt", help="Free-text task prompt, used as is."),
    click.option("--threshold", type=float, default=None,
                 help="Decision threshold on P(class 1) (default: the model's)."),
)

MODEL_OPTIONS = options(
    click.option("--bundle", type=click.Path(file_okay=False), help="Exported bundle folder instead of a checkpoint."),
    click.option("--checkpoint", type=click.Path(dir_okay=False),
                 help="Official RespLLM checkpoint (.pt) or compact checkpoint (.safetensors). "
                      "Default: the built-in model."),
    click.option("--llm", help="Base LLM of a checkpoint: hub id or local folder (config + tokenizer [+ weights]). "
                               "Default: the built-in SmolLM2-135M-Instruct (Q4_1 GGUF)."),
)

EXPERT_MODEL_OPTIONS = options(
    click.option("--merge-lora/--no-merge-lora", default=False,
                 help="Expert: fold the LLM LoRA into the base weights before running (same results within 1e-4)."),
    click.option("--d-ff", type=int, default=None, help="Expert: override d_ff (default: from the head's shape)."),
    click.option("--lora-alpha", type=float, default=None,
                 help="Expert: LLM LoRA alpha (not stored in checkpoints; reference default 32)."),
)


ENGINE_OPTIONS = options(
    click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                 help="Expert: score in this process, or on a Ray cluster (pip install 'respi-edge[ray]')."),
    click.option("--address", help="Expert, --engine ray: cluster address ('auto', 'ray://host:10001'; default: "
                                   "start a local one)."),
    click.option("--workers", type=click.IntRange(1), default=None,
                 help="Expert, --engine ray: model workers (default: one per CPU, or per GPU share)."),
    click.option("--gpus-per-worker", type=click.FloatRange(0), default=0, show_default=True,
                 help="Expert, --engine ray: GPUs each worker takes (0: CPU workers)."),
)


def check_engine_options(engine: str, address, workers, gpus_per_worker) -> None:
    if engine == "local" and (address is not None or workers is not None or gpus_per_worker):
        raise click.UsageError("--address, --workers and --gpus-per-worker apply to --engine ray")


def dms_kwargs(kw: dict) -> dict:
    out = {k: kw.pop(k) for k in ("gender", "age", "location", "history", "symptoms")}
    text = kw.pop("dms_text", None)
    if text is not None:
        out = {"dms": text}
    return out


def echo_json(obj, indent: int | None = 1) -> None:
    """Strict JSON on stdout: a NaN or infinity is written as null, never as a bare NaN (not JSON)."""
    from .validate import json_safe

    click.echo(json.dumps(json_safe(obj), indent=indent, allow_nan=False))


def check_task_options(task: str | None, prompt: str | None) -> None:
    """--task / --prompt checked before a model loads (an unknown id fails in a second, not after loading)."""
    from .errors import PromptError
    from .prompts import get_task

    if task is not None and prompt is not None:
        raise PromptError("give either --task or --prompt, not both")
    if task is not None:
        get_task(task)


def warn_patient(dms: dict) -> None:
    """One named stderr line per unusual patient field (the text still reaches the model as given)."""
    from .validate import format_warning, patient_warnings

    if "dms" in dms:  # --dms: the whole text used as is, the fields are not read
        return
    for w in patient_warnings(**dms):
        click.echo(format_warning(w), err=True)


def _untruncated_tokens(model, text: str, n: int) -> int:
    """Tokens of `text` before the tokenizer's cut (n when it was not cut, or its tokenizer cannot tell)."""
    from . import contract

    if n < contract.TOKENIZER_MAX_LENGTH:
        return n
    tok = getattr(model, "tokenizer", None)
    for count in (lambda: len(tok(text)["input_ids"]), lambda: len(tok.encode(text).ids)):
        try:
            return int(count())
        except Exception:  # noqa: BLE001 - another tokenizer API: try the next, else report the cut length
            continue
    return n


def check_prompt_length(session) -> None:
    """After tokenizing: a prompt or DMS text longer than the tokenizer's cut (warning) or than the LLM's positions
    (PromptTooLongError), never silent."""
    from . import contract
    from .validate import format_warning, prompt_length_check

    model = session.model
    positions = getattr(getattr(getattr(model, "llm", None), "config", None), "max_position_embeddings", None)
    n_prompt, n_dms = session.prompt_ids.shape[-1], session.dms_ids.shape[-1]
    parts = (("prompt", session.task.prompt, n_prompt, n_dms), ("DMS text", session.dms, n_dms, n_prompt))
    for what, text, n, other in parts:
        full = _untruncated_tokens(model, text, n)
        for w in prompt_length_check(full, int(positions) if positions else 1 << 62,
                                     reserved=contract.N_AUDIO_TOKENS + other, what=what):
            click.echo(format_warning(w), err=True)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a service manager's stop, `kill`) raised as KeyboardInterrupt while the block runs."""
    def interrupt(_sig, _frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave the default
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def load_from_options(checkpoint, bundle, llm, merge_lora=False, d_ff=None, lora_alpha=None, device="auto"):
    """--bundle or --checkpoint (or neither: the built-in model) through the library's one entry, api.load."""
    from . import api

    if bundle and checkpoint:
        raise click.UsageError("give --bundle or --checkpoint, not both")
    if bundle and not os.path.isdir(bundle):
        raise BundleError(f"{bundle}: bundle folder not found")
    return api.load(bundle or checkpoint, device=device, llm=llm, merge_lora=merge_lora, d_ff=d_ff,
                    llm_lora_alpha=lora_alpha)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="respi-edge")
def main() -> None:
    """respi-edge: RespLLM respiratory screening on laptops and edge boards.

    A screening aid, not a diagnosis."""
    quiet_libraries()


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def tasks(as_json: bool) -> None:
    """List the task catalogue (the 13 paper tasks and composed tasks)."""
    from .prompts import load_tasks

    ts = load_tasks()
    if as_json:
        echo_json([t.to_dict() for t in ts.values()])
        return
    for t in ts.values():
        click.echo(f"{t.id:34s} {t.dataset:14s} {t.sound:18s} 1={t.positive} / 0={t.negative}")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@DMS_OPTIONS
@TASK_OPTIONS
@MODEL_OPTIONS
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file (JSON lines).")
@EXPERT_MODEL_OPTIONS
@friendly_errors
def predict(files, checkpoint, llm, merge_lora, d_ff, lora_alpha, bundle, task, prompt, threshold, as_json,
            **kw) -> None:
    """Score recordings: P(condition) for each FILE (first 8.18-s window, as the reference).

    FILE is an audio file (WAV, FLAC, OGG, ...) or a stored (256, 64) spectrogram: x.npy or x.npz[:key]."""
    from . import api
    from .errors import AudioError
    from .validate import check_threshold

    dms = dms_kwargs(kw)
    check_threshold(threshold)  # every argument is checked before the model loads
    check_task_options(task, prompt)
    warn_patient(dms)
    model = load_from_options(checkpoint, bundle, llm, merge_lora, d_ff, lora_alpha)
    session = api.Session(model, task, prompt, threshold=threshold, **dms)
    check_prompt_length(session)
    info = model.info
    if not as_json:
        for c in info.caveats:
            click.echo(f"note: {c}", err=True)
    failed = 0
    for f in files:
        try:
            p = session.score_file(f)
        except AudioError as e:
            failed += 1
            if as_json:
                echo_json({"source": f, "error": str(e), "error_type": type(e).__name__}, indent=None)
            else:
                click.echo(f"{f}: error: {type(e).__name__}: {e}", err=True)
            continue
        if as_json:
            echo_json(p.to_dict(), indent=None)
        else:
            tag = " [UNTRAINED MODEL]" if p.untrained else ""
            click.echo(f"{f}: P({session.task.positive}) = {p.prob:.4f} -> {p.decision} "
                       f"(threshold {p.threshold:.2f}){tag}")
    if not as_json:
        click.echo(f"({DISCLAIMER_SHORT}; task {session.task.id}; model {info.name})", err=True)
    if failed:  # the other files were still scored; exit 2 as for any named error
        sys.exit(2)


# ---- commands of export/ (issue 4) ----

@main.command()
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Official or compact checkpoint (default: built-in).")
@click.option("--llm", help="Base LLM: hub id or local folder (default: the checkpoint's / built-in SmolLM2).")
@click.option("--task", "task", help="Task the bundle screens for (default: the checkpoint's own).")
@click.option("--threshold", type=float, help="Decision threshold stored in the bundle (default: the checkpoint's).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Bundle folder to create.")
@click.option("--bits", type=click.Choice(["4", "8", "16"]), default="4", show_default=True)
@click.option("--quant", type=click.Choice(["nf4", "fp4", "int8", "fp16", "bf16"]), default=None,
              help="4-bit: nf4 (default) or fp4; 8-bit: int8 (LLM.int8); 16-bit: fp16 (default) or bf16.")
@click.option("--backend", type=click.Choice(["torch-bnb", "onnx"]), default="torch-bnb", show_default=True,
              help="torch-bnb: bitsandbytes LLM (GPU/CPU); onnx: whole model in ONNX Runtime, no torch needed.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--calibration", type=click.Path(dir_okay=False),
              help="Calibration manifest: adds a static int8 encoder variant (activation ranges from real audio) "
                   "and is the data of --max-drift.")
@click.option("--max-drift", type=float, default=None,
              help="4-bit: keep the most sensitive LLM layers at 8/16 bits until the mean |dP| on --calibration "
                   "is within this.")
@click.option("--calibration-size", type=click.IntRange(2), default=None,
              help="Recordings of --calibration that --max-drift plans on (evenly spread; default 24). More holds "
                   "better on new data and costs time: each planner step scores them all (~0.6 s each on 2 CPU "
                   "cores, ~85 steps).")
@click.option("--static-int8/--no-static-int8", default=True, show_default=True,
              help="With --calibration: also build the static int8 encoder variant (minutes: ORT's QDQ pass).")
@click.option("--double-quant", is_flag=True, help="4-bit: also quantize the quantization constants.")
@click.option("--no-embedding-quant", is_flag=True, help="Keep the token-embedding table in float32.")
@click.option("--encoder-variants", default="fp16,int8", show_default=True,
              help="Extra ONNX encoder variants besides fp32 (comma list of fp16, int8; '' for none).")
@click.option("--block-size", type=click.Choice(["32", "128"]), default="32", show_default=True,
              help="--backend onnx: MatMulNBits block size.")
@click.option("--accuracy-level", type=click.Choice(["0", "4"]), default="0", show_default=True,
              help="--backend onnx, 4/8-bit: MatMulNBits compute type; 4 = int8 activations and int8 compute "
                   "(changes the results slightly: measure its drift with verify). bench/results/throughput_cpu.md "
                   "has its speed on a 2-core CPU.")
@click.option("--encoder-default", type=click.Choice(["fp32", "fp16", "int8", "int8-static"]), default="fp32",
              show_default=True,
              help="The encoder variant the bundle runs unless --encoder-variant says otherwise. int8 (dynamic): "
                   "0.63x the fp32 encoder's time on a 2-core AVX2 CPU, ΔAUROC -0.002 on test_intra "
                   "(bench/results/throughput_cpu.md); fp32 is the reference's encoder exactly.")
@click.option("--optimize-encoder/--no-optimize-encoder", default=False, show_default=True,
              help="Save each ONNX encoder variant as ONNX Runtime's offline-optimised graph (portable fusions): "
                   "faster session start, same results within fp32 rounding.")
@click.option("--parity/--no-parity", default=True, show_default=True,
              help="Score reference and bundle on real recordings and record their agreement.")
@click.option("--parity-manifest", type=click.Path(dir_okay=False), help="Extra recordings (manifest CSV) for parity.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the parity check runs.")
@friendly_errors
def export(checkpoint, llm, bits, quant, double_quant, no_embedding_quant, encoder_variants, parity, parity_manifest,
           calibration, max_drift, calibration_size, static_int8, out, backend, block_size, accuracy_level,
           encoder_default, optimize_encoder, device, task, threshold, as_json) -> None:
    """Merge LoRA, quantize the LLM, export encoder + projector to ONNX: a self-verifying bundle."""
    from respi_edge.export.exporter import ExportOptions, export_bundle

    from .bundle import summary
    from .validate import check_nonnegative, check_threshold

    check_threshold(threshold)
    check_nonnegative(max_drift, "--max-drift")
    check_task_options(task, None)
    variants = tuple(v.strip() for v in encoder_variants.split(",") if v.strip())
    opts = ExportOptions(bits=int(bits), quant=quant, double_quant=double_quant,
                         quantize_embeddings=not no_embedding_quant, encoder_variants=variants, parity=parity,
                         parity_manifest=parity_manifest, device=device, backend=backend, calibration=calibration,
                         max_drift=max_drift, calibration_size=calibration_size, static_int8=static_int8,
                         block_size=int(block_size), accuracy_level=int(accuracy_level) or None,
                         optimize_encoder=optimize_encoder, encoder_default=encoder_default)
    say = (lambda m: None) if as_json else (lambda m: click.echo(m, err=True))
    man = export_bundle(out, checkpoint, llm, opts, say=say, task=task, threshold=threshold)
    if as_json:
        echo_json(man)
    else:
        click.echo("\n".join(summary(man)))
        click.echo(f"wrote {out}")


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Manifest and verification result as JSON.")
@friendly_errors
def inspect(bundle, as_json) -> None:
    """Print a bundle's manifest summary and verify every file's hash (exit 1 if any fails)."""
    from .bundle import summary, verify

    man, v = verify(bundle)
    if as_json:
        echo_json({"manifest": man, "verified": v.ok, "problems": v.problems})
    else:
        click.echo("\n".join(summary(man, v)))
    if not v.ok:
        sys.exit(1)

# ---- commands of the streaming runtime (issue 5) ----

@main.command()
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def devices(as_json) -> None:
    """List audio input devices (the default is marked with *)."""
    from .devices import input_devices

    devs = input_devices()
    if as_json:
        echo_json(devs)
        return
    for d in devs:
        mark = "*" if d["default"] else " "
        click.echo(f"{mark} {d['index']:3d} {d['name']}, {d['hostapi']} ({d['channels']} in, "
                   f"{d['default_samplerate']:.0f} Hz)")


@main.command()
@click.option("--input-device", "input_device", help="Input device name or index (see `respi-edge devices`).")
@click.option("--file", "file", type=click.Path(dir_okay=False), help="Replay a recording through the live path.")
@click.option("--realtime/--fast", default=True, show_default=True, help="With --file: at real-time pace or not.")
@click.option("--hop", type=float, default=2.0, show_default=True, help="Seconds between windows.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds of audio.")
@DMS_OPTIONS
@TASK_OPTIONS
@MODEL_OPTIONS
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Compute device for a bundle (GPU when present).")
@click.option("--json", "echo_json", is_flag=True, help="Print the JSON lines instead of the live view.")
@click.option("--jsonl", type=click.Path(dir_okay=False), help="Append one JSON line per window to this file.")
@click.option("--save-audio", type=click.Path(file_okay=False), help="Keep the captured audio here (off by default).")
@EXPERT_MODEL_OPTIONS
@click.option("--slow-inference", type=float, default=0.0, hidden=True)
@friendly_errors
def screen(checkpoint, llm, merge_lora, d_ff, lora_alpha, bundle, input_device, task, prompt, hop, duration, jsonl,
           echo_json, file, realtime, save_audio, threshold, device, slow_inference, **kw) -> None:
    """Live screening from a microphone / USB stethoscope in 8.18-s windows every hop."""
    from . import api
    from .stream import StreamConfig, screen as run_screen
    from .validate import check_duration, check_hop, check_threshold

    dms = dms_kwargs(kw)
    # every argument is checked before the model loads (20-30 s): a loop that never ends, a run of nothing, an
    # unknown task or input device fail at once
    hop, duration = check_hop(hop), check_duration(duration)
    check_threshold(threshold)
    check_task_options(task, prompt)
    if file is not None and input_device is not None:
        raise click.UsageError("give --file (replay a recording) or --input-device (capture), not both")
    if file is None:
        from .stream.sources import resolve_device

        resolve_device(input_device)
    warn_patient(dms)
    model = load_from_options(checkpoint, bundle, llm, merge_lora, d_ff, lora_alpha, device=device)
    session = api.Session(model, task, prompt, threshold=threshold, **dms)
    check_prompt_length(session)
    session.prefix  # prompt + DMS keys/values once, before capture starts
    click.echo(f"compute: {model.device}; task {session.task.id}; {DISCLAIMER_SHORT}", err=True)
    cfg = StreamConfig(hop=hop, duration=duration, slow_inference=slow_inference)
    live = sys.stdout.isatty() and not echo_json  # the live view only on a terminal, never around JSON lines
    with sigterm_as_interrupt():  # `kill` ends a session like Ctrl-C: results kept, the summary printed
        summary = run_screen(session, device=input_device, file=file, realtime=realtime, jsonl=jsonl, cfg=cfg,
                             echo_json=echo_json, save_audio=save_audio, live=live)
    if not echo_json:
        click.echo(f"summary: {summary['windows']} windows, {summary['scored']} scored, {summary['rejected']} "
                   f"rejected, {summary['skipped']} skipped, {summary['overflows']} overflows, "
                   f"{summary['device_lost']} device losses ({DISCLAIMER_SHORT})", err=True)


# ---- commands of bench/ and calibration/ (issue 6) ----

@main.command()
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Calibration manifest CSV.")
@click.option("--task", "task", help="Task id (default: the bundle's).")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(file_okay=False))
@click.option("--target-sensitivity", type=float, default=None,
              help="Pick the highest threshold reaching this sensitivity (default: Youden's J).")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def calibrate(bundle_dir, data, target_sensitivity, task, as_json) -> None:
    """Calibrate the bundle's decision threshold on labelled recordings and store it in the bundle."""
    from respi_edge.calibration.threshold import calibrate_threshold

    from .progress import progress_bar
    from .validate import check_threshold

    check_threshold(target_sensitivity, "--target-sensitivity")
    with progress_bar("scoring the calibration data", transient=True, disable=as_json) as progress:
        bar = progress.add_task("", total=None)
        info = calibrate_threshold(bundle_dir, data, target_sensitivity=target_sensitivity, task=task,
                                   on_progress=lambda i, n: progress.update(bar, completed=i, total=n))
    if as_json:
        echo_json(info)
    else:
        click.echo(f"threshold {info['threshold']:.4f} ({info['method']}, n={info['n']}): sensitivity "
                   f"{info['sensitivity']:.3f}, specificity {info['specificity']:.3f} on the calibration data "
                   f"(was {info['previous_threshold']}); {DISCLAIMER_SHORT}")


@main.group()
def bench() -> None:
    """Benchmarks (results as JSON + Markdown)."""


@bench.command("latency")
@click.option("--audio", "audio_file", type=click.Path(dir_okay=False), help="Recording to time (default: a shipped "
              "SPRSound parity recording).")
@click.option("--bundle", "bundles", multiple=True, type=click.Path(file_okay=False), help="Bundle(s) to time.")
@click.option("--reference", is_flag=True, help="Also time the full-precision model (--checkpoint or built-in).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Checkpoint for --reference.")
@click.option("--synthetic", "synthetic", multiple=True,
              type=click.Choice(["llama3-8b", "mistral-7b", "phi-3.5", "gemma2-2b", "smollm2-135m"]),
              help="Random-weight LLM trunk with this model's real layer shapes (no download).")
@click.option("--bits", "bits", multiple=True, type=click.Choice(["4", "8", "16"]),
              help="For --synthetic (repeatable; default 4 8 16).")
@click.option("--quant", type=click.Choice(["nf4", "fp4"]), default=None, help="For --synthetic 4-bit (default nf4).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="Write OUT.json and OUT.md.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--repeat", type=int, default=20, show_default=True)
@click.option("--warmup", type=int, default=3, show_default=True)
@click.option("--threads", type=int, default=None, help="ONNX Runtime threads of a bundle (default: all cores).")
@click.option("--isolate/--in-process", default=True, show_default=True,
              help="Each target in a fresh process (own cold start and peak RSS).")
@friendly_errors
def bench_latency(bundles, reference, checkpoint, synthetic, bits, quant, device, repeat, warmup, threads, audio_file,
                  isolate, out, as_json) -> None:
    """Per-stage latency p50/p95/p99/max, cold start, peak memory, roofline floor (llama-bench style)."""
    import importlib.resources

    from .progress import progress_bar

    from respi_edge.bench import latency as L

    cuda = L.torch is not None and L.torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise click.BadParameter("no CUDA GPU is visible to torch", param_hint="--device")
    dev = ("cuda" if cuda else "cpu") if device == "auto" else device
    if audio_file is None:
        audio_file = str(importlib.resources.files("respi_edge.configs") / "parity" / "40638274_9.7_1_p2_1684.flac")
    common = {"repeat": repeat, "warmup": warmup, "device": dev, "audio": audio_file, "threads": threads}
    jobs = [{**common, "kind": "bundle", "target": b} for b in bundles]
    if reference:
        jobs.append({**common, "kind": "model", "target": checkpoint})
    jobs += [{**common, "synthetic": n, "bits": int(b), "quant": quant if b == "4" else None}
             for n in synthetic for b in (bits or ("4", "8", "16"))]
    if not jobs:
        raise click.UsageError("nothing to time: give --bundle, --reference or --synthetic")
    rows = []
    with progress_bar(transient=True, disable=as_json) as progress:
        bar = progress.add_task("timing", total=len(jobs))
        for job in jobs:
            progress.update(bar, description=f"timing {job.get('target') or job.get('synthetic')}")
            rows.append(L.run_isolated(job) if isolate else L.run_job(job))
            progress.advance(bar)
    note = None if dev == "cuda" else "CPU only: no GPU was used, so no GPU number here was measured."
    L.write_results(rows, out, "respi-edge bench latency " + " ".join(sys.argv[3:]), note)
    if as_json:
        echo_json(rows)
    else:
        click.echo(L.markdown(rows))
    if not as_json and note:
        click.echo(note, err=True)


@main.command()
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Manifest CSV (path,label,patient,...).")
@click.option("--task", "task", help="Task id (default: the bundle's).")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(file_okay=False), help="Bundle to verify.")
@click.option("--reference", type=click.Path(), help="Reference checkpoint or bundle (default: the built-in model "
              "in full precision).")
@click.option("--llm", help="Base LLM of the reference checkpoint.")
@click.option("--encoder-variant", help="Encoder ONNX variant of the bundle to use (fp32, fp16, int8, int8-static).")
@click.option("--budget", type=float, default=None, help="Largest AUROC drop allowed; exit 1 beyond it.")
@click.option("--out", type=click.Path(file_okay=False), help="Report folder (default: verify-<bundle>).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--bootstrap", type=int, default=2000, show_default=True, help="Bootstrap resamples.")
@ENGINE_OPTIONS
@friendly_errors
def verify(bundle_dir, reference, llm, data, task, budget, bootstrap, encoder_variant, out, as_json, engine, address,
           workers, gpus_per_worker) -> None:
    """AUROC drift of a bundle against the full-precision model, with patient-grouped confidence intervals."""
    from .progress import progress_bar

    from .evaluate import markdown, verify as run_verify
    from .validate import check_nonnegative

    check_nonnegative(budget, "--budget")
    check_engine_options(engine, address, workers, gpus_per_worker)
    scorer = None
    if engine != "local":
        from .cohort import CohortScorer

        scorer = CohortScorer(engine, address=address, workers=workers, gpus_per_worker=gpus_per_worker)
    with progress_bar(transient=True, disable=as_json) as progress:
        ids: dict = {}

        def on_progress(stage, i, n):
            if stage not in ids:
                ids[stage] = progress.add_task(f"scoring ({stage})", total=n)
            progress.update(ids[stage], completed=i)

        report = run_verify(bundle_dir, data, reference=reference, llm=llm, task=task, budget=budget, out=out,
                            n_boot=bootstrap, on_progress=on_progress, encoder_variant=encoder_variant,
                            bundle_scorer=scorer)
    if as_json:
        echo_json(report)
    else:
        q = report.get("quantization") or {}
        click.echo(markdown(report, "reference", f"bundle {q.get('bits')}-bit {q.get('quant')}"))
        verdict = "within" if report["passed"] else "EXCEEDS"
        if budget is not None and "problem" not in report:
            click.echo(f"AUROC drop {report['auroc_drop']:+.4f} {verdict} the budget {budget}")
        click.echo(f"({DISCLAIMER_SHORT}) report: {out or 'verify-' + os.path.basename(os.path.normpath(bundle_dir))}")
    if "problem" in report:
        click.echo(f"FAILED: {report['problem']}", err=True)
    if not report["passed"]:
        sys.exit(1)


@main.command()
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Manifest CSV (path,label,patient[,gender,age,location,history,symptoms]).")
@click.option("--task", "task", help="Task id (default: the bundle's or the model's).")
@click.option("--bundle", type=click.Path(file_okay=False), help="Exported bundle folder instead of a checkpoint.")
@click.option("--checkpoint", type=click.Path(dir_okay=False),
              help="Official or compact checkpoint (.pt / .safetensors). Default: the built-in model.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Results file: *.parquet or *.jsonl (rows already there are kept: a re-run resumes).")
@click.option("--json", "as_json", is_flag=True, help="Print the run's summary as JSON.")
@ENGINE_OPTIONS
@friendly_errors
def score(data, task, bundle, checkpoint, out, as_json, engine, address, workers, gpus_per_worker) -> None:
    """Score every recording of a manifest once (one row per recording, written as produced, resumable)."""
    from .progress import progress_bar

    from .cohort import results_format, score_cohort, summary_line

    check_engine_options(engine, address, workers, gpus_per_worker)
    results_format(out)  # a bad --out fails before the progress bar, any hashing or loading
    if bundle and checkpoint:
        raise click.UsageError("give --bundle or --checkpoint, not both")
    if bundle and not os.path.isdir(bundle):
        raise BundleError(f"{bundle}: bundle folder not found")
    with progress_bar("scoring", transient=True, disable=as_json) as progress:
        bar = progress.add_task("", total=None)
        s = score_cohort(data, out, source=bundle or checkpoint, engine=engine, address=address, workers=workers,
                         gpus_per_worker=gpus_per_worker, task=task,
                         progress=lambda i, n: progress.update(bar, completed=i, total=n))
    if as_json:
        echo_json(s)
    else:
        click.echo(f"{summary_line(s)} ({DISCLAIMER_SHORT})")


# ---- commands of train/ (issue 3) ----

@main.command()
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False),
              help="Recipe YAML (configs/recipes/NAME.yaml).")
@click.option("--llm", help="Base LLM folder or hub id (default: the recipe's).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key (repeatable).")
@click.option("--official/--no-official", default=False,
              help="Also write the official RespLLM checkpoint (whole model, torch.save) as official.pt.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), help="Encoder token cache folder.")
@friendly_errors
def train(config, overrides, out, llm, official, cache_dir, as_json) -> None:
    """RespLLM instruction tuning: projector, LLM LoRA and head on cached encoder tokens."""
    from respi_edge.train.run import run

    from .progress import progress_bar  # the train log shows each epoch even away from a terminal

    with progress_bar() as progress:
        metrics = run(config, list(overrides), out, official=official, llm=llm, cache_dir=cache_dir,
                      progress=progress)
    if as_json:
        echo_json(metrics)
        return
    for task, m in metrics["tasks"].items():
        line = f"{task}: {m['n_train']} train / {m['n_val']} val recordings, threshold {m['threshold_youden_val']:.3f}"
        if "test_auroc" in m:
            a = m["test_auroc"]
            line += f"; test AUROC {a['value']:.3f} [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}] (patient-grouped 95% CI)"
        click.echo(line)
    click.echo(f"wrote {out}/model.safetensors ({DISCLAIMER_SHORT})")


if __name__ == "__main__":
    main()
