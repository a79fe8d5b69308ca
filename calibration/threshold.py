"""Decision threshold calibrated on a calibration manifest and stored in the bundle (Youden's J or a target
sensitivity). Only manifest.json and its checksum change; every weight file keeps its hash."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from respi_edge.runtime import api, stats
from respi_edge.runtime import bundle as B
from respi_edge.runtime.errors import ManifestError
from respi_edge.runtime.evaluate import CACHE_VERSION, score_manifest, scorable
from respi_edge.runtime.llm import cache_dir
from respi_edge.runtime.manifest import read_manifest


def calibrate_threshold(bundle_dir: str, data: str, *, target_sensitivity: float | None = None,
                        task: str | None = None, on_progress=None) -> dict:
    man = B.read_manifest(bundle_dir)
    manifest = read_manifest(data)
    task = task or man.get("task")
    # keyed by the weight files (not the threshold), so re-calibrating with another rule costs no inference
    ident = B.files_identity(man)
    key = hashlib.sha256(f"{CACHE_VERSION}|{ident}|{manifest.sha256()}|{task}".encode()).hexdigest()[:16]
    scored = score_manifest(None, manifest, task, cache_dir() / "calibrate" / f"{Path(bundle_dir).name}-{key}.jsonl",
                            on_progress, loader=lambda: api.load(bundle_dir, verify_hashes=False), model_id=ident)
    ok = [scored[i] for i in scorable(data, scored)]  # both classes after the unreadable rows are dropped
    y, p = np.array([s.label for s in ok]), np.array([s.prob for s in ok])
    if target_sensitivity is None:
        thr, method = stats.youden_threshold(y, p), "youden"
    else:
        thr, method = stats.threshold_for_sensitivity(y, p, target_sensitivity), f"sensitivity>={target_sensitivity}"
    flagged = int((p >= thr).sum())
    if not math.isfinite(thr) or flagged in (0, len(p)):  # never store a threshold that flags no one / everyone
        raise ManifestError(f"{data}: the {method} threshold on these {len(p)} recordings is {thr:.4g}, which flags "
                            f"{'no one' if flagged == 0 else 'everyone'}: the scores do not separate the classes; "
                            f"calibrate on more or other recordings (the bundle was not changed)")
    sens, spec = stats.sens_spec(y, p, thr)
    info = {"threshold": thr, "method": method, "data": str(data), "n": len(ok), "unreadable": len(scored) - len(ok),
            "sensitivity": sens, "specificity": spec, "previous_threshold": man.get("threshold")}
    B.write_manifest(Path(bundle_dir), {**man, "threshold": thr, "calibration": info}, files=man["files"])
    return info
