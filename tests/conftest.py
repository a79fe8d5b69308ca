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
