"""The Ray engine of cohort scoring: Ray Data carries the jobs, an actor pool holds one loaded model per worker.

Why it keeps its promises:
- Same numbers: each actor runs `scoring.Scorer`, the code the local engine runs.
- No lost rows: Ray Data's actor pool restarts a killed actor and re-runs its unfinished batch (its defaults
  `max_restarts=-1`, `max_task_retries=-1`); scoring has no side effect, so a re-run batch is idempotent.
- No duplicated rows: only the driver writes, through `cohort.ResultSink` (passed in), which keeps the first
  record of a key.

The jobs come from the manifest as `runtime/manifest.py` validated it (the driver also hashes contents for the
keys): parsing the CSV again with Ray Data's type inference would change fields the DMS text is built from
(age "9.70" → 9.7, patient "0123" → 123). Ray is an optional extra: `pip install 'respi-edge[ray]'`.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence

from .scoring import BATCH_ROWS, Job, Scorer, Sink, arrow_schema, job_dicts, job_from_dict, load_source
from .errors import DependencyError, ResultsError

WORKER_CPUS = 1  # one model per worker; the front end and a CPU model use this core
STAT_PID, STAT_BUSY, STAT_LOAD = "_worker_pid", "_worker_s", "_worker_load_s"  # columns beside the records


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise DependencyError(f"the ray engine needs Ray Data ({e}): pip install 'respi-edge[ray]'") from None
    return ray


class CohortWorker:
    """A Ray Data actor: loads the model once, then scores batches of jobs (a pyarrow table in, one out)."""

    def __init__(self, source, task):
        t0 = time.perf_counter()
        self.scorer = Scorer(load_source(source), task)
        self.load_s = time.perf_counter() - t0
        self.pid = os.getpid()

    def __call__(self, batch):
        import pyarrow as pa

        t0 = time.perf_counter()
        jobs = [job_from_dict(d) for d in batch.to_pylist()]
        table = pa.Table.from_pylist(self.scorer.score(jobs), schema=arrow_schema())
        n = table.num_rows  # per-worker figures for the summary; the sink keeps only the record fields
        return (table.append_column(STAT_PID, pa.array([self.pid] * n, pa.int64()))
                .append_column(STAT_BUSY, pa.array([(time.perf_counter() - t0) / n] * n, pa.float64()))
                .append_column(STAT_LOAD, pa.array([self.load_s] * n, pa.float64())))


def default_workers(ray, gpus_per_worker: float) -> int:
    """As many workers as the cluster holds: one per GPU share, else one per CPU."""
    res = ray.cluster_resources()
    if gpus_per_worker:
        n = int(res.get("GPU", 0) // gpus_per_worker)
        if n < 1:
            raise ResultsError(f"the Ray cluster has {res.get('GPU', 0):g} GPU(s), fewer than --gpus-per-worker "
                               f"{gpus_per_worker:g}")
        return n
    return max(1, int(res.get("CPU", 1) // WORKER_CPUS))


def score_ray(jobs: Sequence[Job], sink: Sink, source, task: str | None, on_batch: Callable[[int], None], *,
              address: str | None = None, workers: int | None = None, gpus_per_worker: float = 0,
              batch_rows: int = BATCH_ROWS) -> dict:
    """Score `jobs` on a Ray cluster, writing on the driver as batches arrive. A cluster already initialised in
    this process is used and left running; otherwise `address` is joined ("auto", "ray://...") or, when None, a
    local one is started and shut down at the end."""
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        except ConnectionError as e:
            raise ResultsError(f"cannot reach a Ray cluster at {address!r} ({e}); start one with `ray start --head` "
                               f"or leave out --address to run a local one") from None
    try:
        n = workers or default_workers(ray, gpus_per_worker)
        n = max(1, min(n, -(-len(jobs) // batch_rows)))  # no idle actors loading a model for nothing
        # a few batches per worker, so the pool stays balanced and a killed worker loses little
        batch_rows = max(1, min(batch_rows, -(-len(jobs) // (4 * n))))
        from ray.data import ActorPoolStrategy, DataContext

        DataContext.get_current().enable_progress_bars = False
        ds = ray.data.from_items(job_dicts(jobs), override_num_blocks=max(1, -(-len(jobs) // batch_rows)))
        scored = ds.map_batches(CohortWorker, batch_size=batch_rows, batch_format="pyarrow",
                                compute=ActorPoolStrategy(size=n), fn_constructor_kwargs={"source": source,
                                                                                          "task": task},
                                num_cpus=WORKER_CPUS, num_gpus=gpus_per_worker or None)
        stats: dict[int, dict] = {}
        try:
            for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
                recs = batch.to_pylist()
                on_batch(sink.write(recs))
                for r in recs:
                    st = stats.setdefault(r[STAT_PID], {"pid": r[STAT_PID], "rows": 0, "busy_s": 0.0,
                                                        "model_load_s": r[STAT_LOAD]})
                    st["rows"] += 1
                    st["busy_s"] += r[STAT_BUSY]
        except (ray.exceptions.RayError, ray.exceptions.RaySystemError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ResultsError(f"the Ray run failed ({first}); rows written so far are kept: run again to "
                               f"resume") from e
    finally:
        if started:
            ray.shutdown()
    return {"workers": n, "gpus_per_worker": gpus_per_worker, "address": address, **worker_summary(stats)}


def worker_summary(stats: dict[int, dict]) -> dict:
    """Per-worker rate (rows over time spent scoring them) and model load times: what a multi-node plan needs.
    A worker killed and restarted appears twice (new pid); a retried batch counts where it was delivered."""
    busy = sum(s["busy_s"] for s in stats.values())
    rows = sum(s["rows"] for s in stats.values())
    return {"worker_recordings_per_s": rows / busy if busy > 0 else None,
            "model_load_s": max((s["model_load_s"] for s in stats.values()), default=None),
            "worker_stats": sorted(stats.values(), key=lambda s: s["pid"])}
