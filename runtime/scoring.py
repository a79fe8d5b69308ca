"""Scoring jobs: manifest rows as keyed `Job`s, one Session per DMS group, records out.

The one seam every manifest scorer goes through (cohort scoring's local and Ray engines, verify's and
calibrate's cached scores): `score_group(session, jobs)` decodes each row (an undecodable recording is an error
record) and scores the windows that decode together through `session.score_many` when the Session has it
(issue 15 item 1; equal to batch 1 within 1e-5), else one by one. Rows of different DMS texts are never scored
together: their prefixes differ, and padding them together changes results (REFERENCE.md §5.4).

Kept apart from `cohort.py` so the Ray engine (`cohort_ray.py`) and the driver import it, not each other.
"""
from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

from .errors import AudioError

KEY_VERSION = "cohort-1"
SESSION_CACHE = 8  # prefixes kept per worker; rows arrive sorted by DMS, so a few suffice
BATCH_ROWS = 8  # rows per engine batch: the work an engine loses when a worker dies mid-batch

RECORD_FIELDS = ("key", "path", "sha256", "label", "patient", "dms", "task", "prompt_sha256", "model", "model_id",
                 "prob", "logits", "decision", "positive", "threshold", "error", "error_type")


@dataclass(frozen=True)
class Job:
    """One manifest row to score; plain fields so it travels to a Ray worker as a row of a table."""
    key: str
    path: str  # absolute: what a worker reads
    rel: str  # as written in the manifest: what the results name
    sha256: str  # content hash ("" when the file could not be read)
    label: int
    patient: str
    dms: str
    model_id: str
    read_error: str = ""  # the driver could not hash the file


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def record_key(rel: str, content_sha256: str, dms: str, task: str, model_id: str) -> str:
    """Identity of one score: the same key means the same inputs, so a re-run may skip it."""
    return sha256_text("\x1f".join((KEY_VERSION, rel, content_sha256, dms, task, model_id)))


class Sink(Protocol):
    """Where an engine delivers records (`cohort.ResultSink`): returns how many were new."""

    def write(self, records: Iterable[dict]) -> int: ...


def job_from_dict(d: dict) -> Job:
    return Job(**{k: d[k] for k in Job.__dataclass_fields__})


def job_dicts(jobs: Sequence[Job]) -> list[dict]:
    return [asdict(j) for j in jobs]


def load_source(source: str | os.PathLike | None):
    """The model of `source` (bundle folder, checkpoint file, or None: the built-in model), through the library's
    one entry, `api.load` (bundles on the worker's GPU when it has one)."""
    from . import api

    return api.load(source)


class Scorer:
    """One loaded model and its Sessions (one per DMS, least recently used dropped): scores groups of jobs."""

    def __init__(self, model, task: str | None = None, sessions: int = SESSION_CACHE, batch_size: int | None = None):
        self.model, self.task, self.batch_size = model, task, batch_size
        self.sessions: OrderedDict[str, object] = OrderedDict()
        self.max_sessions = sessions

    def session(self, dms: str):
        from . import api

        s = self.sessions.pop(dms, None)
        if s is None:
            s = api.Session(self.model, self.task, dms=dms)
        self.sessions[dms] = s
        while len(self.sessions) > self.max_sessions:
            self.sessions.popitem(last=False)
        return s

    def score(self, jobs: Iterable[Job]) -> list[dict]:
        """Records for `jobs` in their order, one Session per DMS group."""
        jobs = list(jobs)
        groups: dict[str, list[Job]] = {}
        for j in jobs:
            groups.setdefault(j.dms, []).append(j)
        out: dict[str, dict] = {}
        for dms, group in groups.items():
            out.update(score_group(self.session(dms), group, self.batch_size))
        return [out[j.key] for j in jobs]


def score_group(session, jobs: Sequence[Job], batch_size: int | None = None) -> dict[str, dict]:
    """Records of jobs sharing one Session (prompt + DMS prefix), keyed by job key. Decoding is per row (an
    undecodable recording is an error row); the windows that decode are scored together where the Session can
    batch (`score_many`), else one by one."""
    from . import api

    out: dict[str, dict] = {}
    specs, ok = [], []
    for j in jobs:
        if j.read_error:
            out[j.key] = error_record(j, session, j.read_error, "UnreadableAudioError")
            continue
        try:
            specs.append(api.input_spectrogram(j.path))
            ok.append(j)
        except AudioError as e:
            out[j.key] = error_record(j, session, str(e), type(e).__name__)
    if hasattr(session, "score_many"):
        kw = {"batch_size": batch_size} if batch_size else {}  # None: Session.score_many's own (api.BATCH_SIZE)
        preds = list(session.score_many(specs, **kw)) if specs else []
    else:
        preds = [session.score_spec(s, j.path) for s, j in zip(specs, ok)]
    for j, p in zip(ok, preds):
        if not math.isfinite(p.prob):  # never a NaN result: a damaged model is an error row, named
            out[j.key] = error_record(j, session, f"{j.rel}: the model returned a non-finite probability ({p.prob}); "
                                      f"the model or bundle is damaged", "NonFiniteScoreError")
            continue
        out[j.key] = {**_base(j, session), "prob": float(p.prob), "logits": [float(x) for x in p.logits],
                      "decision": p.decision, "positive": bool(p.positive), "threshold": float(p.threshold),
                      "error": None, "error_type": None}
    return out


def _base(j: Job, session) -> dict:
    return {"key": j.key, "path": j.rel, "sha256": j.sha256, "label": int(j.label), "patient": j.patient,
            "dms": j.dms, "task": session.task.id, "prompt_sha256": sha256_text(session.task.prompt),
            "model": session.model.info.name, "model_id": j.model_id}


def error_record(j: Job, session, message: str, error_type: str) -> dict:
    return {**_base(j, session), "prob": None, "logits": None, "decision": None, "positive": None,
            "threshold": None, "error": message, "error_type": error_type}


def arrow_schema():
    import pyarrow as pa

    s, f = pa.string(), pa.float64()
    types = {"label": pa.int64(), "prob": f, "logits": pa.list_(f), "positive": pa.bool_(), "threshold": f}
    return pa.schema([(k, types.get(k, s)) for k in RECORD_FIELDS])
