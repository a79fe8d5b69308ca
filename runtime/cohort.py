"""Cohort scoring: every recording of a manifest scored once, written as it is produced, resumable.

The engine-independent part. A run turns manifest rows into `Job`s keyed by what decides a score (the
recording's path and content sha256, its DMS text, the task and the model's identity), drops the keys the results
file already holds (resume), and hands the rest, grouped by DMS, to an engine: `local` (this process) or `ray`
(`cohort_ray.py`, an actor pool). Both score a group with the same `scoring.Scorer`, so they give the same
numbers.
Only the driver writes: `ResultSink` appends each record once per key (a retried or duplicated result is dropped),
flushed as rows arrive; a Parquet output is journalled as JSON lines beside it and written atomically at the end.

A recording that cannot be decoded becomes an error row (prob null, error text) and the run goes on; its key
counts as done, since the same bytes fail the same way on a re-run.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None

from .dms import dms_from_row
from .errors import ResultsError
from .hashing import sha256_file
from .manifest import Manifest, read_manifest
from .scoring import (BATCH_ROWS, KEY_VERSION, RECORD_FIELDS, Job, Scorer, arrow_schema,  # noqa: F401 (re-exported)
                      job_dicts, job_from_dict, load_source, record_key, score_group, sha256_text)

DEFAULT_TASK = "model-default"  # the key's task when neither the caller nor a bundle names one
ENGINES = ("local", "ray")


# ---- model source: its identity and task without loading it ----

def source_identity(source: str | os.PathLike | None) -> str:
    """A hash that changes whenever the source's numbers could, computed without loading it (torch-free): the
    evaluation module's `model_identity`, so cohort results and verify's caches name a model the same way."""
    from .evaluate import model_identity

    return model_identity(None, None if source is None else os.fspath(source))


def source_task(source: str | os.PathLike | None, task: str | None) -> str:
    """The task id for the key: the caller's, else a bundle's own, else the model's default (fixed by its identity)."""
    if task:
        from .prompts import get_task

        return get_task(task).id  # an unknown id fails here, before any worker starts
    if source is not None and Path(source).is_dir():
        from .bundle import read_manifest as read_bundle_manifest

        t = read_bundle_manifest(source, verify_hashes=False).get("task")
        if t:
            return t
    return DEFAULT_TASK


# ---- jobs ----

def _hash_or_error(path: str) -> tuple[str, str]:
    try:
        return sha256_file(path), ""
    except OSError as e:
        return "", f"{path}: cannot read ({e.strerror or e})"


def make_jobs(manifest: Manifest, task_id: str, model_id: str, threads: int = 8) -> list[Job]:
    """Jobs for every row, sorted by DMS (stable) so one group is one Session: content hashed in parallel."""
    with ThreadPoolExecutor(threads) as pool:  # hashlib releases the GIL: I/O-bound
        hashes = list(pool.map(_hash_or_error, [r.path for r in manifest.rows]))
    jobs = []
    for r, (sha, err) in zip(manifest.rows, hashes):
        dms = dms_from_row(r.dms)
        jobs.append(Job(record_key(r.rel, sha, dms, task_id, model_id), r.path, r.rel, sha, r.label, r.patient,
                        dms, model_id, err))
    jobs.sort(key=lambda j: j.dms)
    return jobs


def batches(jobs: Sequence[Job], size: int = BATCH_ROWS) -> list[list[Job]]:
    """Consecutive runs of at most `size` jobs that share a DMS (jobs sorted by DMS)."""
    out: list[list[Job]] = []
    for j in jobs:
        if out and len(out[-1]) < size and out[-1][0].dms == j.dms:
            out[-1].append(j)
        else:
            out.append([j])
    return out


# ---- results sink (driver only) ----

def results_format(out: str | os.PathLike) -> str:
    name = os.fspath(out).lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    raise ResultsError(f"{out}: unknown results format; name the file *.parquet or *.jsonl")


class ResultSink:
    """Appends records once per key, flushed and fsynced per write; the file is locked while open.

    JSON lines go straight into `out`. Parquet cannot be appended to or read before it is closed, so its records go
    to a journal (`out` + ".partial.jsonl") and `close()` writes `out` atomically (existing rows + new ones, sorted
    by path) and removes the journal; a killed run leaves the journal, which the next run reads back (resume)."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.format = results_format(out)
        self.journal = self.out if self.format == "jsonl" else self.out.with_name(self.out.name + ".partial.jsonl")
        self.done: dict[str, dict] = {}
        self.written = 0
        self._f = None

    def __enter__(self) -> ResultSink:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.format == "parquet" and self.out.exists():
            self._read_parquet()
        self._f = open(self.journal, "a+b")
        if fcntl is not None:
            try:
                fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._f.close()
                raise ResultsError(f"{self.journal}: another run is writing these results; wait for it or "
                                   f"choose another --out") from None
        self._read_journal()
        return self

    def _read_parquet(self) -> None:
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(self.out).to_pylist()
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise ResultsError(f"{self.out}: not a readable Parquet results file ({e}); move it away or choose "
                               f"another --out") from None
        for r in rows:
            self.done.setdefault(r["key"], r)

    def _read_journal(self) -> None:
        f = self._f
        f.seek(0)
        text = f.read()
        for line in text.decode("utf-8", "replace").splitlines():
            try:
                rec = json.loads(line)
                self.done.setdefault(rec["key"], rec)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut by a kill: its row is scored again
        if text and not text.endswith(b"\n"):
            f.truncate(text.rfind(b"\n") + 1)
        f.seek(0, os.SEEK_END)

    def write(self, records: Iterable[dict]) -> int:
        """Append the records whose key is new; returns how many were new."""
        new = 0
        for r in records:
            if r["key"] in self.done:
                continue
            r = {k: r.get(k) for k in RECORD_FIELDS}
            self.done[r["key"]] = r
            self._f.write((json.dumps(r) + "\n").encode())
            new += 1
        if new:
            self._f.flush()
            os.fsync(self._f.fileno())
        self.written += new
        return new

    def __exit__(self, exc_type, *_) -> None:
        try:
            if exc_type is None and self.format == "parquet":
                self._write_parquet()
        finally:
            self._f.close()
        if exc_type is None and self.format == "parquet":
            self.journal.unlink(missing_ok=True)

    def _write_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = sorted(self.done.values(), key=lambda r: (r["path"], r["key"]))
        tmp = self.out.with_name(self.out.name + ".tmp")
        pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema()), tmp)
        os.replace(tmp, self.out)


def read_results(path: str | os.PathLike) -> list[dict]:
    """Every record of a results file (Parquet or JSON lines; a Parquet run's journal too, when it was cut)."""
    p = Path(path)
    recs: list[dict] = []
    if results_format(p) == "parquet":
        if p.exists():
            import pyarrow.parquet as pq

            recs += pq.read_table(p).to_pylist()
        p = p.with_name(p.name + ".partial.jsonl")
    if p.exists():
        for line in p.read_text().splitlines():
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return recs


# ---- the library entry ----

Progress = Callable[[int, int], None]


def score_local(jobs: Sequence[Job], sink: ResultSink, source, task: str | None,
                on_batch: Callable[[int], None], batch_size: int | None = None) -> dict:
    """This process: one model, batches of one DMS group in manifest order within the group."""
    t0 = time.perf_counter()
    scorer = Scorer(load_source(source), task, batch_size=batch_size)
    load_s = time.perf_counter() - t0
    busy = 0.0
    for b in batches(jobs):
        t1 = time.perf_counter()
        recs = scorer.score(b)
        busy += time.perf_counter() - t1
        on_batch(sink.write(recs))
    return {"workers": 1, "model_load_s": load_s, "worker_recordings_per_s": len(jobs) / busy if busy > 0 else None}


def score_cohort(manifest: str | os.PathLike, out: str | os.PathLike, *, source: str | os.PathLike | None = None,
                 engine: str = "local", address: str | None = None, workers: int | None = None,
                 gpus_per_worker: float = 0, task: str | None = None, progress: Progress | None = None,
                 batch_size: int | None = None) -> dict:
    """Score every recording of `manifest` with `source` (bundle folder, checkpoint, or None: built-in model),
    writing one record per recording to `out` (*.parquet or *.jsonl) as they are produced; rows already in `out`
    with the same key are skipped (resume). engine "local" scores in this process; "ray" on a Ray cluster
    (`address`: "auto" or a cluster address; None starts a local one) with `workers` actors of `gpus_per_worker`
    GPUs each. `progress(done, total)` is called as rows are written. `batch_size`: windows per pass of the local
    engine (None: api.BATCH_SIZE). Returns a summary dict."""
    if engine not in ENGINES:
        raise ResultsError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    results_format(out)  # a bad --out fails before any hashing or loading
    t0 = time.perf_counter()
    man = read_manifest(manifest, require_both_classes=False)
    model_id = source_identity(source)
    task_id = source_task(source, task)
    jobs = make_jobs(man, task_id, model_id)
    with ResultSink(out) as sink:
        todo = [j for j in jobs if j.key not in sink.done]
        total, done = len(jobs), len(jobs) - len(todo)
        if progress:
            progress(done, total)

        def on_batch(n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress(done, total)

        t1 = time.perf_counter()
        info: dict = {"workers": 0}
        if todo and engine == "local":
            info = score_local(todo, sink, source, task, on_batch, batch_size)
        elif todo:
            from .cohort_ray import score_ray

            info = score_ray(todo, sink, source, task, on_batch, address=address, workers=workers,
                             gpus_per_worker=gpus_per_worker)
        scoring_s = time.perf_counter() - t1
        missing = [j.rel for j in todo if j.key not in sink.done]
        if missing:  # an engine that returned without every row is a bug, never a silent gap
            raise ResultsError(f"{len(missing)} row(s) were not scored, e.g. {missing[0]}; run again to resume")
        errors = sum(1 for j in jobs if sink.done[j.key].get("error"))
        scored = sink.written
    return {"out": os.fspath(out), "format": results_format(out), "engine": engine, **info,
            "rows": total, "skipped": total - len(todo), "scored": scored, "errors": errors,
            "task": task_id, "model_id": model_id, "scoring_s": scoring_s,
            "recordings_per_s": scored / scoring_s if scored and scoring_s > 0 else None,
            "seconds": time.perf_counter() - t0}


def summary_line(s: dict) -> str:
    rate = f", {s['recordings_per_s']:.2f} recordings/s" if s.get("recordings_per_s") else ""
    return (f"{s['rows']} recordings: {s['scored']} scored, {s['skipped']} already done, {s['errors']} error rows"
            f" ({s['engine']}, {s.get('workers', 0)} worker(s){rate}) -> {s['out']}")


class CohortScorer:
    """verify's bundle side through cohort scoring (`evaluate.BundleScorer`): `verify --engine ray` scores the
    bundle on a Ray cluster with the local engine's Scorer, so its numbers are the local ones."""

    def __init__(self, engine: str = "ray", address: str | None = None, workers: int | None = None,
                 gpus_per_worker: float = 0):
        if engine not in ENGINES:
            raise ResultsError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
        self.engine, self.address, self.workers, self.gpus_per_worker = engine, address, workers, gpus_per_worker

    def __call__(self, manifest: Manifest, bundle_dir: str, task: str | None, out: Path,
                 on_progress: Progress | None = None) -> list:
        from .evaluate import Scored

        score_cohort(manifest.path, out, source=bundle_dir, engine=self.engine, address=self.address,
                     workers=self.workers, gpus_per_worker=self.gpus_per_worker, task=task, progress=on_progress)
        recs = {r["key"]: r for r in read_results(out)}
        model_id, task_id = source_identity(bundle_dir), source_task(bundle_dir, task)
        rows = []
        for row, sha in zip(manifest.rows, manifest.file_hashes()):
            r = recs[record_key(row.rel, sha, dms_from_row(row.dms), task_id, model_id)]
            rows.append(Scored(row.rel, row.label, row.patient, r["prob"], r.get("error")))
        return rows
