"""What a loaded model is, for printing next to every probability (torch-free)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelInfo:
    name: str
    untrained: bool = False
    caveats: list[str] = field(default_factory=list)
    threshold: float = 0.5
    task: str | None = None
    source: str | None = None
