"""Hidden work folders of exports (`.NAME.partial-…`): create them owned by this process, clear those of dead ones.

An export builds its bundle in a hidden sibling folder and renames it at the end, so a killed export leaves that
folder behind (up to hundreds of MB) and nothing else would ever remove it. The folder's name records the owner,
`.NAME.partial-<host>-<pid>-<random>` (host = 8 hex digits of the host name's SHA-256, so a folder shared between
machines is never judged by another machine's process table); nothing is written inside it, since every file
there becomes part of the bundle. The next export for the same NAME removes the folders whose owner has died and
names the ones it cannot judge (other hosts, the older `.NAME.partial-<random>` form).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path


def host_tag() -> str:
    """8 hex digits naming this machine (names are not path-safe as they are)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def partial_prefix(out: Path) -> str:
    return f".{Path(out).name}.partial-"


def make_partial(out: Path) -> Path:
    """A new, empty work folder for `out` in its parent, named after this process."""
    out = Path(out)
    return Path(tempfile.mkdtemp(prefix=f"{partial_prefix(out)}{host_tag()}-{os.getpid()}-", dir=out.parent))


@dataclasses.dataclass(frozen=True)
class Partial:
    path: Path
    host: str | None  # None: the older form without an owner
    pid: int | None
    owner: str  # "dead", "alive", "this process", "other host", "unknown"
    bytes: int

    def describe(self) -> str:
        who = {"dead": f"left by export process {self.pid}, which is no longer running",
               "alive": f"in use by running process {self.pid}",
               "this process": "in use by this export",
               "other host": f"made by process {self.pid} on another machine (host tag {self.host})",
               "unknown": "of unknown owner (made by an older respi-edge)"}[self.owner]
        return f"{self.path} ({self.bytes / 1e6:.1f} MB) {who}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):  # does not follow symlinks
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def find_partials(out: Path) -> list[Partial]:
    """Every `.NAME.partial-*` folder beside `out` (real folders only, never a symlink), with its owner's state."""
    out = Path(out)
    prefix = partial_prefix(out)
    owned = re.compile(r"([0-9a-f]{8})-(\d+)-.+")
    found = []
    try:
        entries = sorted(out.parent.iterdir())
    except FileNotFoundError:
        return []
    for p in entries:
        if not p.name.startswith(prefix) or p.is_symlink() or not p.is_dir():
            continue
        m = owned.fullmatch(p.name[len(prefix):])
        if m is None:
            found.append(Partial(p, None, None, "unknown", _size(p)))
            continue
        host, pid = m.group(1), int(m.group(2))
        if host != host_tag():
            owner = "other host"
        elif pid == os.getpid():
            owner = "this process"
        else:
            owner = "alive" if _pid_alive(pid) else "dead"
        found.append(Partial(p, host, pid, owner, _size(p)))
    return found


@dataclasses.dataclass(frozen=True)
class Cleanup:
    removed: list[Partial]
    kept: list[Partial]  # owners alive, on other hosts or unknown: named, not touched


def remove_stale_partials(out: Path) -> Cleanup:
    """Remove the partial exports for `out` whose owning process on this machine has died."""
    removed, kept = [], []
    for p in find_partials(out):
        if p.owner == "dead":
            shutil.rmtree(p.path, ignore_errors=True)
            (kept if p.path.exists() else removed).append(p)
        else:
            kept.append(p)
    return Cleanup(removed, kept)
