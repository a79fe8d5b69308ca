"""Drop a wheel's native libraries that the GPU machine cannot use, so it fits the 64 MiB the device run carries.

bitsandbytes 0.50.2's manylinux wheel (41 MiB) holds one kernel library per CUDA (11.8 … 13.2), ROCm and XPU
version; torch on the GPU machine is built for CUDA 13, and bitsandbytes picks the closest library of the same
CUDA major (cextension.get_cuda_bnb_library_path), so the CUDA 13 and CPU libraries are all it loads there.
The wheel keeps its name and every other file; RECORD is rewritten to list what is left. Stdlib only.

    python slim_wheel.py WHEEL --keep libbitsandbytes_cpu --keep libbitsandbytes_cuda13
"""
from __future__ import annotations

import argparse
import os
import zipfile
from pathlib import Path


def is_dropped(name: str, keep: list[str]) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.startswith("libbitsandbytes_") and base.endswith(".so") and not any(base.startswith(k) for k in keep)


def slim(wheel: Path, keep: list[str]) -> tuple[int, int]:
    """Rewrite `wheel` in place (atomically) without the dropped libraries; returns (bytes before, after)."""
    before = wheel.stat().st_size
    tmp = wheel.with_name(wheel.name + ".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        dropped = {i.filename for i in src.infolist() if is_dropped(i.filename, keep)}
        for info in src.infolist():
            if info.filename in dropped:
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(ln for ln in lines if ln.split(",", 1)[0] not in dropped) + "\n").encode()
            dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    os.replace(tmp, wheel)
    return before, wheel.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheel", type=Path)
    ap.add_argument("--keep", action="append", required=True, help="library name prefix to keep (repeatable)")
    a = ap.parse_args()
    before, after = slim(a.wheel, a.keep)
    print(f"{a.wheel.name}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB (kept {', '.join(a.keep)})")


if __name__ == "__main__":
    main()
