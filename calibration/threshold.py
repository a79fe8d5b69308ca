"""Decision threshold calibrated on a calibration manifest and stored in the bundle (Youden's J or a target
sensitivity). Only manifest.json and its checksum change; every weight file keeps its hash."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from respi_edge.runtime import api, stats
from respi_edge.runtime import bundle as B
from respi_edge.runtime.evaluate import score_manifest
from respi_edge.runtime.llm import cache_dir
from respi_edge.runtime.manifest import read_manifest


def calibrate_threshold(bundle_dir: str, data: str, *, target_sensitivity: float | None = None,
                        task: str | None = None, on_progress=None) -> dict:
    man = B.read_manifest(bundle_dir)
    manifest = read_manifest(data)
    task = task or man.get("task")
    # keyed by the weight files (not the threshold), so re-calibrating with another rule costs no inference
    key = hashlib.sha256(f"{B.files_identity(man)}|{manifest.sha256()}|{task}".encode()).hexdigest()[:16]
    scored = score_manifest(None, manifest, task, cache_dir() / "calibrate" / f"{Path(bundle_dir).name}-{key}.jsonl",
                            on_progress, loader=lambda: api.load(bundle_dir, verify_hashes=False))
    ok = [s for s in scored if s.prob is not None]
    y, p = np.array([s.label for s in ok]), np.array([s.prob for s in ok])
    if target_sensitivity is None:
        thr, method = stats.youden_threshold(y, p), "youden"
    else:
        thr, method = stats.threshold_for_sensitivity(y, p, target_sensitivity), f"sensitivity>={target_sensitivity}"
    sens, spec = stats.sens_spec(y, p, thr)
    info = {"threshold": thr, "method": method, "data": str(data), "n": len(ok), "sensitivity": sens,
            "specificity": spec, "previous_threshold": man.get("threshold")}
    B.write_manifest(Path(bundle_dir), {**man, "threshold": thr, "calibration": info}, files=man["files"])
    return info
