"""Decision threshold calibrated on a calibration manifest and stored in the bundle (Youden's J or a target
sensitivity). Only manifest.json and its checksum change; every weight file keeps its hash."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from respi_edge.bench import stats
from respi_edge.bench.verify import files_identity, score_manifest
from respi_edge.runtime import bundle as B
from respi_edge.runtime.errors import BundleError
from respi_edge.runtime.llm import cache_dir
from respi_edge.runtime.manifest import read_manifest


def calibrate_threshold(bundle_dir: str, data: str, *, target_sensitivity: float | None = None,
                        task: str | None = None, on_progress=None) -> dict:
    man, v = B.verify(bundle_dir)
    if not v.ok:
        raise BundleError(f"{bundle_dir}: refusing a damaged bundle: {'; '.join(v.problems[:3])}")
    manifest = read_manifest(data)
    task = task or man.get("task")
    # keyed by the weight files (not the threshold), so re-calibrating with another rule costs no inference
    key = hashlib.sha256(f"{files_identity(man)}|{manifest.sha256()}|{task}".encode()).hexdigest()[:16]
    scored = score_manifest(None, manifest, task, cache_dir() / "calibrate" / f"{Path(bundle_dir).name}-{key}.jsonl",
                            on_progress, loader=lambda: B.load_bundle(bundle_dir, manifest=man))
    ok = [s for s in scored if s.prob is not None]
    y, p = np.array([s.label for s in ok]), np.array([s.prob for s in ok])
    if target_sensitivity is None:
        thr, method = stats.youden_threshold(y, p), "youden"
    else:
        thr, method = stats.threshold_for_sensitivity(y, p, target_sensitivity), f"sensitivity>={target_sensitivity}"
    sens, spec = stats.sens_spec(y, p, thr)
    info = {"threshold": thr, "method": method, "data": str(data), "n": len(ok), "sensitivity": sens,
            "specificity": spec, "previous_threshold": man.get("threshold")}
    man["threshold"] = thr
    man["calibration"] = info
    root = Path(bundle_dir)
    data_bytes = json.dumps(man, indent=1).encode()
    tmp = root / (B.MANIFEST + ".tmp")
    tmp.write_bytes(data_bytes)
    sum_tmp = root / (B.MANIFEST_SUM + ".tmp")
    sum_tmp.write_text(hashlib.sha256(data_bytes).hexdigest() + "  " + B.MANIFEST + "\n")
    os.replace(tmp, root / B.MANIFEST)
    os.replace(sum_tmp, root / B.MANIFEST_SUM)
    return info
