"""Training recipes: YAML files under configs/recipes, with `key=value` overrides from the command line."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from respi_edge.runtime.errors import RespiEdgeError


class RecipeError(RespiEdgeError):
    """A recipe file or override is malformed."""


@dataclass
class TaskData:
    task: str
    train: str  # manifest CSV
    test: str | None = None
    holdout: str | None = None  # split manifest (rows of `train`): its patients are never fitted, only scored
    events: str | None = None  # events.csv (path,start_ms,end_ms,type): where the adventitious sounds are


@dataclass
class Recipe:
    name: str = "respllm"
    tasks: list[TaskData] = field(default_factory=list)
    base_llm: str = "smollm2-135m-instruct"
    encoder: str = "builtin"  # 'builtin' = the deterministic OPERA-CT init (configs/encoder_init.json)
    encoder_mode: str = "frozen"  # frozen (tokens cached) — the reference default — or finetune
    encoder_cut: int = 3  # finetune: stages [0, cut) stay the initialisation (cached), [cut, 4) + norm train
    encoder_views: int = 3  # finetune: cached views per recording (view 0 = the scoring input)
    encoder_epochs: int = 20
    encoder_lr: float = 3e-4
    encoder_batch_size: int = 32
    encoder_mixup: float = 0.5
    encoder_drop_path: float = 0.1
    encoder_patience: int = 5
    llm_views: bool = True  # finetune: the LLM trains on every cached view's tokens (one drawn per epoch)
    lr: float = 1e-4  # REFERENCE.md §3.3
    epochs: int = 3
    batch_size: int = 16
    seed: int = 42
    val_fraction: float = 0.15  # patient-grouped
    patience: int = 2
    min_delta: float = 0.01
    select: str = "loss"  # loss: the reference's EarlyStopper on validation loss (REFERENCE.md §3.3) | auroc: best epoch by
    #                      mean validation AUROC, stop after `patience` epochs without a new best (as the encoder stage)
    dms_dropout: float = 0.0  # share of LLM training batches given an empty DMS, so the audio must carry them (0: reference)
    balance: str = "downsample"  # downsample | none: per epoch, negatives drawn to match the positives
    precision: str = "auto"  # auto | fp32 | bf16: LLM autocast in training (weights and evaluation stay fp32)
    lora_r: int = 16
    lora_alpha: float = 32
    lora_dropout: float = 0.1
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    d_ff: int = 32
    max_train: int | None = None  # cap on training recordings per task (smoke runs, tests)
    max_test: int | None = None
    threads: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _coerce(value: str, like):
    if isinstance(like, bool):
        return value.lower() in ("1", "true", "yes", "on")
    if isinstance(like, int):
        return int(value)
    if isinstance(like, float):
        return float(value)
    if isinstance(like, list):
        return [v.strip() for v in value.split(",") if v.strip()]
    if like is None and value.lower() in ("none", "null"):
        return None
    if like is None:
        try:
            return int(value)
        except ValueError:
            return value
    return value


def load_recipe(path: str | os.PathLike, overrides: list[str] = ()) -> Recipe:
    """Read a recipe; relative manifest paths are resolved against $RESPI_EDGE_DATA or the current folder."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"{p}: recipe not found")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{p}: not valid YAML ({e})") from None
    known = {f.name for f in fields(Recipe)}
    unknown = set(raw) - known
    if unknown:
        raise RecipeError(f"{p}: unknown recipe keys {sorted(unknown)}")
    tasks = [TaskData(**t) for t in raw.pop("tasks", [])]
    r = Recipe(**raw, tasks=tasks)
    for ov in overrides:
        key, sep, value = ov.partition("=")
        if not sep or key not in known or key == "tasks":
            raise RecipeError(f"bad override {ov!r}: use key=value with a recipe key ({', '.join(sorted(known - {'tasks'}))})")
        setattr(r, key, _coerce(value, getattr(r, key)))
    if not r.tasks:
        raise RecipeError(f"{p}: no tasks")
    if r.precision not in ("auto", "fp32", "bf16"):
        raise RecipeError(f"{p}: precision must be auto, fp32 or bf16, not {r.precision!r}")
    if not 0.0 <= r.dms_dropout <= 1.0:
        raise RecipeError(f"{p}: dms_dropout must be between 0 and 1, not {r.dms_dropout!r}")
    if r.select not in ("loss", "auroc"):
        raise RecipeError(f"{p}: select must be loss or auroc, not {r.select!r}")
    if r.encoder_mode not in ("frozen", "finetune"):
        raise RecipeError(f"{p}: encoder_mode must be frozen or finetune, not {r.encoder_mode!r}")
    if not 0 <= r.encoder_cut <= 4 or r.encoder_views < 1:
        raise RecipeError(f"{p}: encoder_cut must be 0..4 and encoder_views ≥ 1")
    data_root = os.environ.get("RESPI_EDGE_DATA")
    for t in r.tasks:
        if t.holdout and not os.path.isabs(t.holdout):  # shipped with the recipe: relative to its folder
            t.holdout = str((p.parent / os.path.expandvars(t.holdout)).resolve())
        for attr in ("train", "test", "events"):
            v = getattr(t, attr)
            if v:
                v = os.path.expandvars(v)
                if data_root and not os.path.isabs(v):
                    v = os.path.join(data_root, v)
                setattr(t, attr, v)
    return r
