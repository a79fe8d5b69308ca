"""The public library API: load a model, build the text inputs, score audio → P(condition).

    >>> from respi_edge.runtime import api
    >>> model = api.load_model()                      # built-in model (or checkpoint=..., llm=...)
    >>> s = api.Session(model, task="sprsound_normal_vs_adventitious", gender="M", age="7", location="p3")
    >>> s.score_file("recording.flac").prob           # P(class 1); a screening aid, not a diagnosis

A Session fixes the task prompt and the patient's DMS text, so their keys/values are computed once and every
window only runs the 64 audio tokens (prefix reuse). Scores are batch-1 per window, the reference's
single-sample semantics (batched reference runs pad DMS texts and change results, REFERENCE.md §5.4).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np

from . import audio as audio_fe
from . import contract
from .dms import build_dms
from .errors import DependencyError, PromptError
from .info import ModelInfo
from .prompts import Task, get_task, task_from_prompt

DISCLAIMER = "Screening aid, not a diagnosis: confirm every result clinically."


@dataclass
class Prediction:
    source: str
    task: str
    prob: float  # P(class 1) = softmax(logits)[1]
    logits: list[float]
    decision: str  # the positive or negative class name at `threshold`
    positive: bool
    threshold: float
    model: str
    untrained: bool = False
    caveats: list[str] = field(default_factory=list)
    disclaimer: str = DISCLAIMER

    def to_dict(self) -> dict:
        return asdict(self)


def load_model(*args, **kwargs):
    """`load.load_model` (torch): an official/compact checkpoint + base LLM, or the built-in model."""
    try:
        from .load import load_model as _load
    except ImportError as e:
        raise DependencyError(f"checkpoints and the built-in model need torch and transformers ({e}): "
                              f"pip install 'respi-edge[torch]', or run an exported bundle with --bundle") from None
    return _load(*args, **kwargs)


def to_numpy(x) -> np.ndarray:
    """Logits from either backend (torch tensor or numpy array) as float64 numpy."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def softmax(logits) -> np.ndarray:
    z = to_numpy(logits)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def resolve_task(model_info: ModelInfo, task: str | None, prompt: str | None) -> Task:
    """--prompt (free text used as is) wins; then --task; then the model's own task."""
    if prompt is not None and task is not None:
        raise PromptError("give either a task id or a free-text prompt, not both")
    if prompt is not None:
        return task_from_prompt(prompt)
    task = task or model_info.task
    if task is None:
        raise PromptError("this checkpoint does not name its task: pass --task ID (see `respi-edge tasks`) "
                          "or --prompt TEXT")
    return get_task(task)


class Session:
    """One patient and one task: prompt + DMS keys/values computed once, then any number of windows."""

    def __init__(self, model, task: str | None = None, prompt: str | None = None, *,
                 dms: str | None = None, gender: str | None = None, age: str | None = None,
                 location: str | None = None, history: str | None = None, symptoms: str | None = None,
                 threshold: float | None = None):
        self.model = model
        self.task = resolve_task(model.info, task, prompt)
        self.dms = dms if dms is not None else build_dms(gender=gender, age=age, location=location,
                                                         history=history, symptoms=symptoms)
        self.prompt_ids = model.tokenize(self.task.prompt)
        self.dms_ids = model.tokenize(self.dms)
        self.threshold = model.info.threshold if threshold is None else float(threshold)
        self._prefix = None

    @property
    def prefix(self):
        if self._prefix is None:
            self._prefix = self.model.prefix(self.prompt_ids, self.dms_ids)
        return self._prefix

    def logits(self, spec, *, reuse_prefix: bool = True):
        """Logits of one window (a torch tensor or a numpy array, as the backend computes them)."""
        spec = np.asarray(spec, dtype=np.float32)
        if reuse_prefix:
            return self.model.score(self.prefix, self.model.embed_audio(spec))[0]
        return self.model.forward(spec, self.prompt_ids, self.dms_ids)[0]

    def prediction(self, logits, source: str) -> Prediction:
        p = float(softmax(logits)[1])
        pos = p >= self.threshold
        info = self.model.info
        return Prediction(source=source, task=self.task.id, prob=p, logits=[float(x) for x in logits],
                          decision=self.task.positive if pos else self.task.negative, positive=pos,
                          threshold=self.threshold, model=info.name, untrained=info.untrained,
                          caveats=list(info.caveats))

    def score_spec(self, spec, source: str = "<spectrogram>") -> Prediction:
        return self.prediction(self.logits(spec), source)

    def score_file(self, path: str | os.PathLike) -> Prediction:
        """An audio file (first 8.18-s window), or a precomputed spectrogram `x.npy` / `x.npz:key`."""
        return self.score_spec(input_spectrogram(path), os.fspath(path))

    def score_array(self, y: np.ndarray, sr: int, source: str = "<array>") -> Prediction:
        return self.score_spec(audio_fe.spectrogram(y, sr=sr), source)


def input_spectrogram(path: str | os.PathLike) -> np.ndarray:
    """The (256, 64) model input for an audio file, or a stored spectrogram (.npy, or .npz with `:key`)."""
    p = os.fspath(path)
    base, _, key = p.partition(".npz:")
    if key or p.endswith(".npz") or p.endswith(".npy"):
        from .errors import AudioError

        f = base + ".npz" if key else p
        try:
            arr = np.load(f)[key or "spec"] if f.endswith(".npz") else np.load(f)
        except (OSError, KeyError, ValueError) as e:
            raise AudioError(f"{p}: cannot read a spectrogram ({e})") from None
        arr = np.asarray(arr, dtype=np.float32)
        if arr.shape != contract.SPEC_SHAPE:
            raise AudioError(f"{p}: spectrogram shape {arr.shape}, expected {contract.SPEC_SHAPE} (time, mel)")
        return arr
    return audio_fe.spectrogram(p)


def predict(model, audio, *, sr: int | None = None, task: str | None = None, prompt: str | None = None,
            **dms_fields) -> Prediction:
    """Score one audio file (path) or array (with `sr`) for one task and patient."""
    s = Session(model, task, prompt, **dms_fields)
    if isinstance(audio, (str, os.PathLike)):
        return s.score_file(audio)
    return s.score_array(np.asarray(audio), sr if sr is not None else 16000)
