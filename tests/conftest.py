"""Shared fixtures: goldens and data are read from ../shared (a missing golden fails, it never skips)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RESPI_EDGE_SHARED", ROOT.parent / "shared")).resolve()


def shared_path(*parts: str) -> Path:
    """Path under ../shared; fails the test (not skip) with a clear message when it is missing."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.fail(
            f"golden/data file missing: {p}. Tests need the shared folder beside the checkout "
            f"(or RESPI_EDGE_SHARED pointing at it).",
            pytrace=False,
        )
    return p


@pytest.fixture(scope="session")
def shared() -> Path:
    return shared_path()


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return shared_path("golden")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """The golden tiny checkpoint in the official format, rebuilt by the golden's own script (sha256-verified)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("tiny") / "model_OpenBioLLM_3epoch.pt"
    r = subprocess.run([sys.executable, str(shared_path("golden", "respllm_tiny", "make_checkpoint.py")), str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


@pytest.fixture(scope="session")
def tiny_llm() -> Path:
    """Config + tokenizer of the tiny checkpoint's base LLM (the checkpoint holds every LLM weight)."""
    return shared_path("golden", "respllm_tiny", "llm")


def write_manifest(path: Path, split: str, n_pos: int, n_neg: int) -> Path:
    """A manifest over the first n_pos adventitious and n_neg normal SPRSound recordings of a split."""
    import csv

    data = shared_path("data", "sprsound2022")
    rows = list(csv.DictReader(open(data / f"{split}.csv")))
    pick = [r for r in rows if r["label"] == "1"][:n_pos] + [r for r in rows if r["label"] == "0"][:n_neg]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in pick:
            w.writerow({**r, "path": str(data / r["path"])})
    return path
