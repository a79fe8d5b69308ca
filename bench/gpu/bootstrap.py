"""Make the carried wheels importable on the GPU machine, which has no network (ENVIRONMENT.md §6).

Each wheel in the wheel folder is unpacked into a private site folder (put first on PYTHONPATH by run.sh) only
when its package is missing or older on that machine, so the machine's own torch/CUDA stack is never replaced.
Wheels are zip archives and none of these needs an install script, so unpacking is the whole install (no pip,
which may be absent or try the network). Stdlib only: it runs before anything else is importable.

    python bench/gpu/bootstrap.py WHEEL_DIR SITE_DIR [--report FILE.json]
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import re
import sys
import zipfile
from pathlib import Path


def version_key(v: str) -> tuple[int, ...]:
    """Numeric release parts ('2.11.0+cu130' -> (2, 11, 0)); enough to order the releases carried here."""
    out = []
    for part in v.split("+")[0].split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        out.append(int(m.group()))
    return tuple(out)


def wheel_name_version(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return name.replace("_", "-").lower(), version


def installed_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def plan(wheels: list[Path]) -> list[dict]:
    """Per wheel: the version here, the version carried, and whether it must be unpacked."""
    rows = []
    for w in sorted(wheels):
        name, version = wheel_name_version(w)
        have = installed_version(name)
        rows.append({"package": name, "carried": version, "installed": have, "wheel": w.name,
                     "unpack": have is None or version_key(have) < version_key(version)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheels", type=Path)
    ap.add_argument("site", type=Path)
    ap.add_argument("--report", type=Path)
    a = ap.parse_args()
    wheels = list(a.wheels.glob("*.whl")) if a.wheels.is_dir() else []
    rows = plan(wheels)
    a.site.mkdir(parents=True, exist_ok=True)
    for r in rows:
        if r["unpack"]:
            with zipfile.ZipFile(a.wheels / r["wheel"]) as z:
                z.extractall(a.site)
    doc = {"python": sys.version.split()[0], "wheel_dir": str(a.wheels), "site": str(a.site), "wheels": rows}
    if not wheels:
        doc["warning"] = f"no wheels in {a.wheels}: run bench/gpu/fetch_wheels.sh and carry .whl"
    text = json.dumps(doc, indent=1)
    if a.report:
        a.report.parent.mkdir(parents=True, exist_ok=True)
        a.report.write_text(text)
    for r in rows:
        print(f"bootstrap: {r['package']} {r['installed'] or '-'} -> "
              f"{r['carried'] + ' (unpacked)' if r['unpack'] else 'kept'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
