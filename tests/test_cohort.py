"""Cohort scoring (`runtime/cohort.py`, `runtime/cohort_ray.py`) on real SPRSound recordings with the built-in model:
the Ray engine gives the local engine's numbers, a worker killed mid-run loses and duplicates no row, an
undecodable recording is an error row, and a re-run resumes.

Ray runs on a local 2-CPU cluster started once for the module. The machine is shared with other jobs, so nothing
here is timed, and torch in this process uses one thread (two threads beside a busy core are several times
slower); Ray's actors use one thread each anyway.
"""
from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest

from conftest import write_manifest
from respi_edge.runtime.cohort import ResultSink, job_from_dict, read_results, score_cohort
from respi_edge.runtime.dms import dms_from_row

ray = pytest.importorskip("ray", reason="the ray extra: pip install -e '.[ray]'")

TOL = 1e-6
N_GOOD = 8


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", autouse=True)
def one_model():
    """The local engine's runs in this process share one built-in model (its load is the slow part on a busy
    machine); Ray's actors load their own."""
    from respi_edge.runtime import cohort

    model = cohort.load_source(None)
    mp = pytest.MonkeyPatch()
    mp.setattr(cohort, "load_source", lambda source: model if source is None else pytest.fail("unexpected source"))
    yield model
    mp.undo()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """8 test_intra recordings (4 adventitious, 4 normal; several patients, so several DMS groups) and one .flac
    of junk bytes."""
    d = tmp_path_factory.mktemp("cohort")
    m = write_manifest(d / "m.csv", "test_intra", N_GOOD // 2, N_GOOD // 2)
    junk = d / "corrupt.flac"
    junk.write_bytes(os.urandom(4096))
    rows = list(csv.DictReader(open(m)))
    with open(m, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=list(rows[0])).writerow({**rows[0], "path": str(junk), "patient": "junk"})
    return m


@pytest.fixture(scope="module")
def local(manifest, tmp_path_factory) -> dict:
    """The local engine's records (Parquet), keyed by record key."""
    out = tmp_path_factory.mktemp("local") / "scores.parquet"
    s = score_cohort(manifest, out)
    assert s["rows"] == N_GOOD + 1 and s["scored"] == N_GOOD + 1 and s["skipped"] == 0 and s["errors"] == 1
    assert not Path(str(out) + ".partial.jsonl").exists()  # the journal is folded into the Parquet file
    recs = read_results(out)
    assert len(recs) == N_GOOD + 1
    return {r["key"]: r for r in recs}


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, logging_level="WARNING")
    yield ray
    ray.shutdown()


def keyed(out) -> dict:
    recs = read_results(out)
    keys = [r["key"] for r in recs]
    assert len(keys) == len(set(keys)), "a row was written twice"
    return {r["key"]: r for r in recs}


def assert_same_scores(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k, w in want.items():
        g = got[k]
        assert (g["path"], g["sha256"], g["dms"], g["model_id"], g["error"] is None) == \
            (w["path"], w["sha256"], w["dms"], w["model_id"], w["error"] is None)
        if w["error"] is None:
            assert abs(g["prob"] - w["prob"]) <= TOL, (g["path"], g["prob"], w["prob"])
            assert g["decision"] == w["decision"]


def test_local_engine_gives_the_library_numbers(local, manifest, one_model):
    """Each row's probability is `api.Session(model, dms=the row's DMS).score_file(path)`: grouping by DMS and
    the results file change nothing."""
    from respi_edge.runtime import api

    model = one_model
    rows = {r["path"]: r for r in csv.DictReader(open(manifest))}
    good = [r for r in local.values() if r["error"] is None]
    assert len(good) == N_GOOD and len({r["dms"] for r in good}) > 1
    for r in good:
        dms = dms_from_row(rows[r["path"]])
        assert r["dms"] == dms
        p = api.Session(model, dms=dms).score_file(r["path"]).prob
        assert abs(r["prob"] - p) <= TOL, (r["path"], r["prob"], p)
        assert r["task"] == "sprsound_normal_vs_adventitious" and len(r["logits"]) == 2


def test_corrupt_recording_is_an_error_row(local):
    bad = [r for r in local.values() if r["error"] is not None]
    assert len(bad) == 1
    assert bad[0]["path"].endswith("corrupt.flac") and bad[0]["prob"] is None
    assert bad[0]["error_type"] == "UnreadableAudioError" and "corrupt.flac" in bad[0]["error"]


def test_ray_engine_equals_local(ray_cluster, local, manifest, tmp_path):
    """One worker here (one model load on a 2-core machine); the kill test below runs two."""
    out = tmp_path / "scores.jsonl"
    s = score_cohort(manifest, out, engine="ray", workers=1)
    assert s["scored"] == N_GOOD + 1 and s["errors"] == 1 and s["workers"] == 1
    assert len(s["worker_stats"]) == 1 and s["worker_stats"][0]["rows"] == N_GOOD + 1
    assert_same_scores(keyed(out), local)


def _worker_pids() -> list[int]:
    """Our Ray cluster's cohort actors, busy ones first (Ray titles an actor running a batch "...submit"):
    processes started by this test process, never anyone else's."""
    import psutil

    pids = []
    for p in psutil.Process().children(recursive=True):
        try:
            title = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "CohortWorker" in title:
            pids.append((not title.endswith(".submit"), p.pid))
    return [pid for _, pid in sorted(pids)]


def test_ray_worker_killed_mid_run_loses_and_duplicates_nothing(ray_cluster, local, manifest, tmp_path):
    killed: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        if not killed and 0 < done < total:  # after the first batch is written, while others are in flight
            pids = _worker_pids()
            assert pids, "no cohort worker process found"
            os.kill(pids[0], signal.SIGKILL)
            killed.append((pids[0], total - done, pids))

    out = tmp_path / "scores.jsonl"
    s = score_cohort(manifest, out, engine="ray", workers=2, progress=progress)
    assert s["workers"] == 2
    assert killed and killed[0][1] > 0, "the worker was not killed mid-run"
    assert killed[0][0] not in _worker_pids()
    restarted = {w["pid"] for w in s["worker_stats"]} - set(killed[0][2])
    assert restarted, "no restarted worker delivered rows"  # the killed worker's batches were redone elsewhere
    assert s["scored"] == N_GOOD + 1
    assert_same_scores(keyed(out), local)


def test_resume_skips_what_is_done(local, manifest, tmp_path):
    """A run killed after 4 rows (its Parquet journal ends in a cut line) resumes: 4 kept, the rest scored once;
    a third run scores nothing and loads no model."""
    out = tmp_path / "scores.parquet"
    journal = Path(str(out) + ".partial.jsonl")
    first = sorted(local.values(), key=lambda r: r["path"])[:4]
    journal.write_text("".join(json.dumps(r) + "\n" for r in first) + '{"key": "cut by a ki')
    s = score_cohort(manifest, out)
    assert (s["skipped"], s["scored"], s["rows"]) == (4, N_GOOD + 1 - 4, N_GOOD + 1)
    assert not journal.exists()
    assert_same_scores(keyed(out), local)
    again = score_cohort(manifest, out)
    assert (again["skipped"], again["scored"], again["workers"]) == (N_GOOD + 1, 0, 0)
    assert_same_scores(keyed(out), local)


def test_changed_recording_is_scored_again(manifest, tmp_path, local):
    """The key holds the content hash: new bytes under the same path are a new row; the old one stays."""
    rows = [r for r in csv.DictReader(open(manifest)) if r["patient"] != "junk"]
    a, b = rows[0], rows[-1]
    target = tmp_path / "rec.flac"
    m = tmp_path / "one.csv"
    with open(m, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerow({**a, "path": target.name})
    out = tmp_path / "s.jsonl"
    target.write_bytes(Path(a["path"]).read_bytes())
    assert score_cohort(m, out)["scored"] == 1
    target.write_bytes(Path(b["path"]).read_bytes())
    s = score_cohort(m, out)
    assert (s["scored"], s["skipped"]) == (1, 0)
    recs = read_results(out)
    assert [r["path"] for r in recs] == ["rec.flac", "rec.flac"] and len({r["key"] for r in recs}) == 2
    want = next(r for r in local.values() if r["path"] == a["path"])  # same bytes, same DMS as the manifest run
    assert recs[0]["sha256"] == want["sha256"] and abs(recs[0]["prob"] - want["prob"]) <= TOL
    assert recs[1]["sha256"] != want["sha256"]


def test_sink_keeps_the_first_record_of_a_key(tmp_path):
    rec = {"key": "k1", "path": "a.flac", "prob": 0.25}
    with ResultSink(tmp_path / "s.jsonl") as sink:
        assert sink.write([rec, {**rec, "prob": 0.75}]) == 1
    with ResultSink(tmp_path / "s.jsonl") as sink:  # a retried batch re-delivered after a restart
        assert sink.write([{**rec, "prob": 0.75}, {**rec, "key": "k2"}]) == 1
    recs = read_results(tmp_path / "s.jsonl")
    assert [(r["key"], r["prob"]) for r in recs] == [("k1", 0.25), ("k2", 0.25)]


def test_job_round_trips_through_a_row():
    from dataclasses import asdict

    from respi_edge.runtime.cohort import Job

    j = Job("k", "/a.flac", "a.flac", "s" * 64, 1, "p", "Gender: F.", "m")
    assert job_from_dict({**asdict(j), "extra": 1}) == j


def test_score_command_and_verify_bundle_side_through_cohort(local, manifest, tmp_path):
    """`respi-edge score` writes the library's records (strict JSON summary); a re-run resumes. verify's bundle
    side through cohort scoring (`CohortScorer`, what `verify --engine ray` uses; the Ray engine's numbers equal
    the local ones above) gives each manifest row its own record, in manifest order."""
    from click.testing import CliRunner

    from respi_edge.runtime.cli import main
    from respi_edge.runtime.cohort import CohortScorer
    from respi_edge.runtime.manifest import read_manifest

    out = tmp_path / "scores.jsonl"
    args = ["score", "--data", str(manifest), "--out", str(out), "--json"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output

    def strict(c):
        raise ValueError(c)

    s = json.loads(r.stdout, parse_constant=strict)
    assert (s["rows"], s["scored"], s["errors"], s["engine"]) == (N_GOOD + 1, N_GOOD + 1, 1, "local")
    assert_same_scores(keyed(out), local)
    again = json.loads(CliRunner().invoke(main, args).stdout)
    assert (again["scored"], again["skipped"]) == (0, N_GOOD + 1)

    m = read_manifest(manifest, require_both_classes=False)
    scored = CohortScorer("local")(m, None, None, out)  # every row already in `out`: nothing is scored again
    by_path = {r["path"]: r for r in local.values()}
    assert [s.rel for s in scored] == [row.rel for row in m.rows]
    for s_ in scored:
        want = by_path[s_.rel]
        assert (s_.prob is None) == (want["prob"] is None)
        if want["prob"] is not None:
            assert abs(s_.prob - want["prob"]) <= TOL
