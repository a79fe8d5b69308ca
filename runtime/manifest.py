"""Dataset manifests (the CSV format of shared/data): `path,label,patient[,gender,age,location,history,symptoms]`.

Paths are relative to the manifest's folder. Used by train, verify and calibration, so users can bring their
own recordings in the same format.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import atomic
from .dms import MANIFEST_FIELDS
from .errors import ManifestError
from .hashing import sha256_file as file_sha256

REQUIRED = ("path", "label", "patient")


@dataclass(frozen=True)
class Row:
    path: str  # absolute
    label: int
    patient: str
    dms: dict = field(default_factory=dict)  # optional DMS columns, empty values dropped
    rel: str = ""  # as written in the manifest


@dataclass
class Manifest:
    path: str
    rows: list[Row]
    _hashes: list[str] | None = field(default=None, repr=False, compare=False)

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.rows]

    @property
    def patients(self) -> list[str]:
        return [r.patient for r in self.rows]

    def sha256(self) -> str:
        """Hash of the manifest text (labels, patients, DMS) and of every listed audio file's bytes: a cache key
        that changes whenever a score or a statistic could."""
        h = hashlib.sha256(Path(self.path).read_bytes())
        for sha in self.file_hashes():
            h.update(sha.encode())
        return h.hexdigest()

    def file_hashes(self) -> list[str]:
        """sha256 of every row's audio bytes, in row order (computed once): what a score cache is keyed by."""
        if self._hashes is None:
            hashes = []
            for r in self.rows:
                try:
                    hashes.append(file_sha256(r.path))
                except OSError as e:
                    raise ManifestError(f"{self.path}: cannot read {r.rel} ({e.strerror or e}); fix its "
                                        f"permissions or remove the row") from None
            self._hashes = hashes
        return self._hashes

    @property
    def manifest_sha256(self) -> str:
        return self.sha256()

    def __len__(self) -> int:
        return len(self.rows)


def manifest_sha256(manifest: Manifest | str | os.PathLike) -> str:
    """`Manifest.sha256()` of a manifest object or file."""
    m = manifest if isinstance(manifest, Manifest) else read_manifest(manifest, require_both_classes=False)
    return m.sha256()


def read_manifest(path: str | os.PathLike, *, n_classes: int = 2, require_both_classes: bool = True) -> Manifest:
    """Read and check a manifest; ManifestError names the line and the problem (missing column or file, bad label,
    empty patient id, a single class)."""
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"{p}: manifest not found")
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:  # a spreadsheet's BOM is not part of "path"
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            records = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise ManifestError(f"{p}: not a UTF-8 CSV manifest ({e})") from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ManifestError(f"{p}: missing column(s) {', '.join(missing)}; the header must start with "
                            f"path,label,patient (optional: {','.join(MANIFEST_FIELDS)})")
    base = p.parent
    rows, absent = [], []
    for i, rec in enumerate(records, start=2):
        rel = (rec.get("path") or "").strip()
        if not rel:
            raise ManifestError(f"{p}:{i}: empty path")
        try:
            label = int(rec["label"])
        except (TypeError, ValueError):
            raise ManifestError(f"{p}:{i}: label {rec.get('label')!r} is not an integer class index") from None
        if not 0 <= label < n_classes:
            raise ManifestError(f"{p}:{i}: label {label} outside 0..{n_classes - 1}")
        patient = (rec.get("patient") or "").strip()
        if not patient:
            raise ManifestError(f"{p}:{i}: empty patient id (needed for patient-grouped statistics)")
        full = (base / rel).resolve()
        if not full.is_file():
            absent.append(rel)
        dms = {k: rec[k] for k in MANIFEST_FIELDS if k in rec and rec[k] not in (None, "")}
        rows.append(Row(str(full), label, patient, dms, rel))
    if absent:
        raise ManifestError(f"{p}: {len(absent)} audio file(s) not found, e.g. {absent[0]} "
                            f"(paths are relative to the manifest's folder)")
    if not rows:
        raise ManifestError(f"{p}: no recordings listed")
    if require_both_classes and len(set(r.label for r in rows)) < 2:
        raise ManifestError(f"{p}: every recording has label {rows[0].label}; AUROC needs both classes")
    return Manifest(str(p.resolve()), rows)


def write_manifest(rows: list[Row], out: str | os.PathLike) -> Path:
    """Paths written relative to the new manifest's folder, as the manifest format expects; atomic."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = ["path", "label", "patient", *[f for f in MANIFEST_FIELDS if any(f in r.dms for r in rows)]]
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(fields)
    for r in rows:
        w.writerow([os.path.relpath(r.path, out.parent.resolve()), r.label, r.patient,
                    *[r.dms.get(k, "") for k in fields[3:]]])
    atomic.write_text(out, buf.getvalue())
    return out
