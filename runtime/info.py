"""What a loaded model is, for printing next to every probability (torch-free)."""
from __future__ import annotations

from dataclasses import dataclass, field

# the one wording of the disclaimer: full sentence in records, short form beside printed results
DISCLAIMER = "Screening aid, not a diagnosis: confirm every result clinically."
DISCLAIMER_SHORT = "screening aid, not a diagnosis"


@dataclass
class ModelInfo:
    name: str
    untrained: bool = False
    caveats: list[str] = field(default_factory=list)
    threshold: float = 0.5
    task: str | None = None
    source: str | None = None
