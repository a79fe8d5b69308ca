"""Evaluation on a labelled manifest: scoring it (cached, resumable) and `respi-edge verify`, how far a quantized
bundle drifts from the full-precision model; the statistics themselves are in runtime/stats.py.

In the spirit of llama.cpp's perplexity tool: the reference probabilities are computed once and cached (keyed by
the reference's and the data's hashes), every variant is compared with them, and distributions are reported,
not one number. Scores are written one JSON line per recording as they are produced, so a killed run keeps them
and the next run resumes. Models are loaded only when a recording still needs scoring, so re-rendering a report
(another budget, more bootstrap resamples) costs no inference. `respi-edge calibrate` scores with the same code.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, a shared cache may be scored twice
    fcntl = None

from . import api, atomic, stats
from .bundle import files_identity, open_bundle, read_manifest
from .dms import dms_from_row
from .errors import BundleError, CheckpointError, ManifestError
from .info import DISCLAIMER_SHORT
from .llm import cache_dir
from .manifest import Manifest, read_manifest as read_data
from .scoring import BATCH_ROWS, Job, record_key, score_group, sha256_text
from .validate import json_safe

CACHE_VERSION = "verify-2"  # 2: records keyed by content, DMS, prompt and model (issue 17 item 4)


@dataclass
class Scored:
    rel: str
    label: int
    patient: str
    prob: float | None
    error: str | None = None


def bundle_identity(bundle_dir: str | os.PathLike) -> str:
    return files_identity(read_manifest(bundle_dir, verify_hashes=False))


def model_identity(model, source: str | None) -> str:
    """A hash that changes whenever the model's numbers could: checkpoint/bundle bytes, or the built-in model.
    Torch-free and without loading anything (cohort scoring keys its records by it too)."""
    if source and Path(source).is_dir():
        return bundle_identity(source)
    if source and Path(source).is_file():
        from respi_edge.runtime.hashing import sha256_file

        return sha256_file(source)
    if source:
        raise CheckpointError(f"{source}: no such checkpoint file or bundle folder")
    from respi_edge.runtime.builtin import DEMO_FILE, demo_available

    if demo_available():
        from importlib.resources import as_file, files

        from respi_edge.runtime.hashing import sha256_file

        with as_file(files("respi_edge.configs") / "demo" / DEMO_FILE) as p:
            return sha256_file(p)
    return "built-in-untrained"


def task_key(task: str | None) -> str:
    """What of the task decides a score: its id and prompt text (None: the model's own task, which the model's
    identity fixes). An unknown id fails here, before anything is loaded."""
    if not task:
        return "model-default"
    from .prompts import get_task

    t = get_task(task)
    return f"{t.id}|{sha256_text(t.prompt)}"


def _read_done(f) -> dict[str, dict]:
    """Records already in an open (binary, append) JSONL file, by key; a line cut by a kill is dropped (scored
    again), and so are records of an older cache without keys."""
    f.seek(0)
    text = f.read()
    done: dict[str, dict] = {}
    for line in text.decode("utf-8", "replace").splitlines():
        try:
            rec = json.loads(line)
            done[rec["key"]] = rec
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    if text and not text.endswith(b"\n"):
        f.truncate(text.rfind(b"\n") + 1)
    f.seek(0, os.SEEK_END)
    return done


def manifest_jobs(manifest: Manifest, task: str | None, model_id: str) -> list[Job]:
    """One job per row, keyed by everything that changes its score (issue 17 item 4): the recording's bytes,
    its DMS text, the task's prompt and the model's identity. The same file twice with two DMS texts is two
    scores; the same file under two names with one DMS is one."""
    tk = task_key(task)
    jobs = []
    for row, sha in zip(manifest.rows, manifest.file_hashes()):
        dms = dms_from_row(row.dms)
        jobs.append(Job(record_key("", sha, dms, tk, model_id), row.path, row.rel, sha, row.label, row.patient, dms,
                        model_id))
    return jobs


def score_manifest(model, manifest: Manifest, task: str | None, out_jsonl: Path,
                   on_progress: Callable[[int, int], None] | None = None, *,
                   loader: Callable[[], object] | None = None, model_id: str = "") -> list[Scored]:
    """Score every row (first 8.18-s window, DMS from the row), appending to `out_jsonl` as it goes; rows whose
    key (`manifest_jobs`) is already there are reused. `loader` builds the model on first need when `model` is
    None; `model_id` names it in the keys (the file name should too).

    Rows are grouped by DMS text: one Session (prompt + DMS prefix) per group, scored through `score_group`
    (`Session.score_many` where the Session has it, else one by one), in chunks of BATCH_ROWS so a killed run
    keeps what it scored. The file is locked while scoring, so two runs sharing a reference cache score it once."""
    out_jsonl.parent.mkdir(parents=True, exist_ok=True)
    jobs = manifest_jobs(manifest, task, model_id)
    n = len(jobs)
    with open(out_jsonl, "a+b") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        done = _read_done(f)
        todo: dict[str, list[Job]] = {}
        seen: set[str] = set()
        for j in jobs:
            if j.key not in done and j.key not in seen:
                seen.add(j.key)
                todo.setdefault(j.dms, []).append(j)
        finished = n - sum(1 for j in jobs if j.key not in done)
        if on_progress:
            on_progress(finished, n)
        for dms, group in todo.items():
            if model is None:
                model = loader()
            session = api.Session(model, task, dms=dms)
            for k in range(0, len(group), BATCH_ROWS):
                chunk = group[k:k + BATCH_ROWS]
                recs = score_group(session, chunk)
                for j in chunk:
                    r = recs[j.key]
                    rec = {"key": j.key, "path": j.rel, "prob": r["prob"], "error": r["error"],
                           "error_type": r["error_type"]}
                    done[j.key] = rec
                    f.write((json.dumps(rec) + "\n").encode())
                f.flush()
                finished = sum(1 for j in jobs if j.key in done)
                if on_progress:
                    on_progress(finished, n)
    return [Scored(j.rel, j.label, j.patient, done[j.key]["prob"], done[j.key].get("error")) for j in jobs]


def scorable(data: str | os.PathLike, *runs: list[Scored]) -> list[int]:
    """Indices of the rows every run scored; ManifestError when none is left or a class vanished with the
    unreadable rows (an AUROC, a threshold or a gate from one class is no result, issue 17 items 1 and 5)."""
    rows = list(zip(*runs))
    ok = [i for i, rs in enumerate(rows) if all(r.prob is not None for r in rs)]
    bad = [r for rs in rows for r in rs if r.prob is None]
    if not ok:
        eg = f", e.g. {bad[0].rel}: {bad[0].error}" if bad else ""
        raise ManifestError(f"{data}: none of its {len(rows)} recording(s) could be scored{eg}; fix or replace the "
                            f"unreadable files")
    labels = {rows[i][0].label for i in ok}
    if len(labels) < 2:
        (only,) = labels
        gone = len(rows) - len(ok)
        why = (f"after dropping {gone} unreadable recording(s) (e.g. {bad[0].rel}), every scorable one"
               if gone else "every recording")
        raise ManifestError(f"{data}: {why} has label {only}; AUROC and thresholds need both classes: fix the "
                            f"unreadable files or add recordings of label {1 - only}")
    return ok


def drift_report(ref: list[Scored], new: list[Scored], threshold: float, n_boot: int = 2000,
                 ref_threshold: float | None = None) -> dict:
    """Every drift statistic of `new` against `ref` on the recordings both could score.

    Flips and sensitivity / specificity use the bundle's threshold for both; when the reference has another
    threshold (a bundle re-calibrated after quantization), the agreement of each at its own threshold is added."""
    ok = [(a, b) for a, b in zip(ref, new) if a.prob is not None and b.prob is not None]
    y = np.array([a.label for a, _ in ok])
    pr = np.array([a.prob for a, _ in ok])
    pn = np.array([b.prob for _, b in ok])
    pat = [a.patient for a, _ in ok]
    ci_r, ci_n = stats.auroc_ci(y, pr, pat, n_boot), stats.auroc_ci(y, pn, pat, n_boot)
    d = stats.delta_auroc_ci(y, pr, pn, pat, n_boot)
    dl, z, p = stats.delong_test(y, pn, pr)
    sr, spr = stats.sens_spec(y, pr, threshold)
    sn, spn = stats.sens_spec(y, pn, threshold)
    own = {}
    if ref_threshold is not None and ref_threshold != threshold:
        own = {"threshold_reference": ref_threshold,
               "flip_rate_own_thresholds": stats.flip_rate(pr, pn, ref_threshold, threshold),
               "sens_spec_reference_own_threshold": list(stats.sens_spec(y, pr, ref_threshold))}
    return {
        "n": int(len(ok)), "patients": len(set(pat)), "positives": int(y.sum()),
        "errors": sum(1 for a, b in zip(ref, new) if a.prob is None or b.prob is None),
        "threshold": threshold, "bootstrap": n_boot,
        "auroc_reference": ci_r.to_dict(), "auroc_bundle": ci_n.to_dict(),
        "delta_auroc": d.to_dict(), "delong": {"delta": dl, "z": z, "p": p},
        "flip_rate": stats.flip_rate(pr, pn, threshold),
        "abs_dp": stats.abs_dp_summary(pr, pn),
        "mean_kl": stats.mean_kl(pr, pn),
        "ece_reference": stats.ece(y, pr), "ece_bundle": stats.ece(y, pn),
        "sens_spec_reference": [sr, spr], "sens_spec_bundle": [sn, spn], **own,
    }


def roc_png(ref: list[Scored], new: list[Scored], path: Path, labels: tuple[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    for rows, name in ((ref, labels[0]), (new, labels[1])):
        ok = [r for r in rows if r.prob is not None]
        fpr, tpr, _ = roc_curve([r.label for r in ok], [r.prob for r in ok])
        auc = stats.auroc([r.label for r in ok], [r.prob for r in ok])
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("1 − specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"ROC ({DISCLAIMER_SHORT})", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic.write_bytes(path, buf.getvalue())


def markdown(report: dict, ref_name: str, new_name: str) -> str:
    r = report
    f = lambda c: f"{c['value']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]"  # noqa: E731
    return "\n".join([
        f"| metric | {ref_name} | {new_name} |", "|---|---|---|",
        f"| AUROC (patient-grouped 95% CI) | {f(r['auroc_reference'])} | {f(r['auroc_bundle'])} |",
        f"| sensitivity / specificity @ {r['threshold']:.3f} | {r['sens_spec_reference'][0]:.3f} / "
        f"{r['sens_spec_reference'][1]:.3f} | {r['sens_spec_bundle'][0]:.3f} / {r['sens_spec_bundle'][1]:.3f} |",
        f"| ECE | {r['ece_reference']:.3f} | {r['ece_bundle']:.3f} |", "",
        f"ΔAUROC {f(r['delta_auroc'])} (paired, patient-grouped bootstrap); DeLong p = {r['delong']['p']:.3g}; "
        f"decision flips {100 * r['flip_rate']:.1f} %; |Δp| mean {r['abs_dp']['mean']:.4f}, "
        f"median {r['abs_dp']['median']:.4f}, "
        f"p95 {r['abs_dp']['p95']:.4f}, max {r['abs_dp']['max']:.4f}; mean KL {r['mean_kl']:.2e}; "
        f"n = {r['n']} recordings, {r['patients']} patients, {r['errors']} unreadable.",
        *([f"Each at its own threshold (reference {r['threshold_reference']:.3f}, bundle {r['threshold']:.3f}): "
           f"decision flips {100 * r['flip_rate_own_thresholds']:.1f} %."] if "flip_rate_own_thresholds" in r else []),
        *[f"Reference caveat: {c}" for c in r.get("reference_caveats", [])],
    ])


class BundleScorer(Protocol):
    """Scores a bundle on a manifest somewhere else (see `cohort.CohortScorer`), rows in manifest order."""

    engine: str

    def __call__(self, manifest: Manifest, bundle_dir: str, task: str | None, out: Path,
                 on_progress: Callable[[int, int], None] | None) -> list[Scored]: ...


class _Reference:
    """Loads the reference on first need and keeps its name, caveats and threshold beside the score cache, so a
    fully cached run needs no model at all."""

    def __init__(self, reference: str | None, llm: str | None, key: str):
        self.reference, self.llm = reference, llm
        self.meta_path = cache_dir() / "verify" / f"reference-{key}.json"

    def load(self):
        model = api.load(self.reference, llm=self.llm)
        meta = {"name": model.info.name, "caveats": list(model.info.caveats), "threshold": model.info.threshold}
        self.meta_path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(self.meta_path, meta, indent=None)
        return model

    def meta(self) -> dict:
        if not self.meta_path.is_file():  # a cache written before the metadata was kept: load once to learn it
            self.load()
        return json.loads(self.meta_path.read_text())


def verify(bundle_dir: str, data: str, *, reference: str | None = None, llm: str | None = None,
           task: str | None = None, budget: float | None = None, out: str | None = None,
           n_boot: int = 2000, on_progress: Callable[[str, int, int], None] | None = None,
           encoder_variant: str | None = None, bundle_scorer: "BundleScorer | None" = None) -> dict:
    """Compare a bundle with its reference on a manifest; returns the report (with `passed`).

    `bundle_scorer`: scores the bundle side elsewhere (cohort scoring's Ray engine, `cohort.CohortScorer`: the
    same Scorer, so the same numbers); None scores it in this process. The reference side is always scored
    here, cached as before."""
    engine = getattr(bundle_scorer, "engine", "local")
    manifest = read_data(data)
    man = read_manifest(bundle_dir)
    bundle = open_bundle(bundle_dir, manifest=man)
    try:
        variant = bundle.manifest.encoder_variant(encoder_variant)
    except BundleError as e:
        raise BundleError(f"{bundle_dir}: {e}") from None
    if bundle_scorer is not None and variant != bundle.manifest.encoder_default:
        raise BundleError(f"{bundle_dir}: --engine {engine} scores the bundle's default encoder "
                          f"({bundle.manifest.encoder_default}); leave out --encoder-variant or use --engine local")
    task = task or man.get("task")
    ref_id = model_identity(None, reference)
    llm_key = f"|llm={llm}" if llm else ""  # a compact checkpoint's numbers depend on its base LLM too
    key = hashlib.sha256(f"{CACHE_VERSION}|{ref_id}|{manifest.sha256()}|{task}{llm_key}".encode()).hexdigest()[:24]
    ref_jsonl = cache_dir() / "verify" / f"reference-{key}.jsonl"
    outp = Path(out or f"verify-{Path(bundle_dir).name}")
    outp.mkdir(parents=True, exist_ok=True)
    bundle_id = files_identity(man)
    new_jsonl = outp / f"bundle-{bundle_id[:12]}-{encoder_variant or 'default'}-{key[:12]}.jsonl"
    prog = (lambda stage: (lambda i, n: on_progress(stage, i, n))) if on_progress else (lambda stage: None)
    ref_source = _Reference(reference, llm, key)
    ref = score_manifest(None, manifest, task, ref_jsonl, prog("reference"), loader=ref_source.load,
                         model_id=ref_id + llm_key)
    if bundle_scorer is not None:
        new = bundle_scorer(manifest, bundle_dir, task, outp / f"bundle-{bundle_id[:12]}-{engine}-{key[:12]}.jsonl",
                            prog("bundle"))
    else:
        new = score_manifest(None, manifest, task, new_jsonl, prog("bundle"), model_id=f"{bundle_id}|{variant}",
                             loader=lambda: api.load(bundle_dir, encoder_variant=encoder_variant,
                                                     verify_hashes=False))
    ok = scorable(data, ref, new)
    meta = ref_source.meta()
    threshold = float(man.get("threshold", 0.5))
    report = drift_report(ref, new, threshold, n_boot, meta.get("threshold"))
    report.update({"bundle": str(bundle_dir), "reference": reference or f"built-in {meta['name']} (fp32)",
                   "reference_caveats": meta["caveats"],
                   "data": str(data), "task": task, "quantization": man.get("quantization"),
                   "backend": man.get("backend"), "encoder_variant": variant, "engine": engine,
                   "reference_cache": str(ref_jsonl), "budget": budget})
    drop = report["auroc_reference"]["value"] - report["auroc_bundle"]["value"]
    report["auroc_drop"] = drop
    # NaN never passes (issue 17 item 6): an undefined AUROC is a failed gate with the reason, not a pass
    report["passed"] = math.isfinite(drop) and (budget is None or drop <= budget)
    if not math.isfinite(drop):
        report["problem"] = (f"the AUROC is undefined on the {len(ok)} recording(s) both models scored; "
                             f"check the data (labels, unreadable files) and the model's scores")
    q = man.get("quantization", {})
    name = f"bundle {q.get('bits')}-bit {q.get('quant')}, encoder {report['encoder_variant']}"
    roc_png(ref, new, outp / "roc.png", ("reference", name))
    atomic.write_text(outp / "report.md", markdown(report, "reference", name) + "\n")
    atomic.write_text(outp / "report.json", json.dumps(json_safe(report), indent=1, allow_nan=False))
    return report
