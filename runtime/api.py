"""The public library API: load a model, build the text inputs, score audio → P(condition).

    >>> from respi_edge.runtime import api
    >>> model = api.load()                            # built-in model; or a checkpoint, a bundle folder, a hub id
    >>> s = api.Session(model, task="sprsound_normal_vs_adventitious", gender="M", age="7", location="p3")
    >>> s.score_file("recording.flac").prob           # P(class 1); a screening aid, not a diagnosis

A Session fixes the task prompt and the patient's DMS text, so their keys/values are computed once and every
window only runs the 64 audio tokens (prefix reuse). Each score equals the reference's single-sample result
(batched reference runs pad DMS texts and change results, REFERENCE.md §5.4): `score_many` / `score_files` batch
windows of one Session only, all sharing its prompt + DMS prefix, so no padding ever happens and every row equals
the window scored alone (within 1e-5).
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import audio as audio_fe
from . import contract
from .backends import Backend
from .dms import build_dms
from .errors import CheckpointError, DependencyError, ModelError, PromptError
from .info import DISCLAIMER, ModelInfo
from .prompts import Task, get_task, task_from_prompt

ENGINES = ("torch", "torch-bnb", "onnx")  # torch: a checkpoint (reference computation); the others: bundles
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
BATCH_SIZE = 8  # windows per encoder + LLM pass in Session.score_many (memory grows linearly with it)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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


def load(source: str | os.PathLike | None = None, *, device: str = "auto", engine: str | None = None,
         encoder_variant: str | None = None, llm: str | os.PathLike | None = None, threads: int | None = None,
         merge_lora: bool = False, d_ff: int | None = None, llm_lora_alpha: float | None = None,
         verify_hashes: bool = True) -> Backend:
    """The one entry to a model: `source` is a checkpoint file, a bundle folder, a hub id ("org/name", holding
    either) or None (the built-in model).

    device: "auto" | "cpu" | "cuda" (bundles; checkpoints run on the CPU). engine: None (what the source is),
    "torch" (a checkpoint), "torch-bnb" or "onnx" (a bundle exported for it): a mismatch is an error, not a
    silent fallback. encoder_variant, threads: a bundle's ONNX encoder variant and ONNX Runtime threads. llm,
    merge_lora, d_ff, llm_lora_alpha: a checkpoint's base LLM and expert overrides."""
    if engine is not None and engine not in ENGINES:
        raise ModelError(f"unknown engine {engine!r}: one of {', '.join(ENGINES)}")
    if device not in ("auto", "cpu", "cuda"):
        raise ModelError(f"unknown device {device!r}: auto, cpu or cuda")
    if source is not None:
        source = _resolve_hub(os.fspath(source))
    if source is not None and Path(source).is_dir():
        from .bundle import load_bundle, read_manifest

        man = read_manifest(source, verify_hashes=verify_hashes)
        backend = man.get("backend", "torch-bnb")
        if engine not in (None, backend):
            raise ModelError(f"{source}: a {backend} bundle; engine {engine} needs a bundle exported with "
                             f"--backend {engine}")
        if llm is not None or merge_lora or d_ff is not None or llm_lora_alpha is not None:
            raise ModelError(f"{source}: a bundle holds its merged LLM; --llm, --merge-lora, --d-ff and "
                             f"--lora-alpha apply to checkpoints")
        return load_bundle(source, device=device, encoder_variant=encoder_variant, threads=threads, manifest=man)
    if engine not in (None, "torch"):
        raise ModelError(f"engine {engine} runs exported bundles: export this checkpoint with "
                         f"`respi-edge export --backend {engine}`, or leave the engine out")
    if encoder_variant is not None:
        raise ModelError("encoder variants belong to exported bundles; a checkpoint runs its encoder in torch")
    if device == "cuda":
        raise ModelError("checkpoints run on the CPU here; export a bundle to run on a GPU (--device cuda)")
    return load_model(source, llm, merge_lora=merge_lora, d_ff=d_ff, llm_lora_alpha=llm_lora_alpha)


def _resolve_hub(source: str) -> str:
    """A hub id ("org/name", not a local path) → its downloaded snapshot: a bundle folder or one checkpoint file."""
    if os.path.exists(source) or not HUB_ID.match(source) or source.lower().endswith(CHECKPOINT_SUFFIXES):
        return source
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise DependencyError(f"{source}: not a local file or folder, and loading it as a hub id needs "
                              f"huggingface_hub (pip install huggingface_hub)") from None
    try:
        folder = snapshot_download(source)
    except Exception as e:  # offline, gated, unknown id: the hub's own message says which
        raise ModelError(f"{source}: not a local file or folder, and the hub did not deliver it ({e})") from None
    from .bundle import is_bundle

    if is_bundle(folder):
        return folder
    found = [p for p in sorted(Path(folder).iterdir()) if p.suffix in CHECKPOINT_SUFFIXES and p.is_file()]
    if len(found) != 1:
        raise CheckpointError(f"{source}: the hub repository holds neither a bundle (manifest.json) nor exactly one "
                              f"checkpoint file ({len(found)} found)")
    return str(found[0])


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

    def logits_many(self, specs, *, batch_size: int = BATCH_SIZE) -> list:
        """Logits of many windows, `batch_size` at a time through the encoder and the LLM on this Session's prefix.

        specs: spectrograms (256, 64) each, or an array (N, 256, 64). Row i equals `logits(specs[i])` within 1e-5."""
        if batch_size < 1:
            raise ModelError(f"batch size {batch_size}: give 1 or more windows per pass")
        specs = [np.asarray(s, dtype=np.float32) for s in specs]
        out: list = []
        for i in range(0, len(specs), batch_size):
            chunk = np.stack(specs[i:i + batch_size])
            out.extend(self.model.score_batch(self.prefix, self.model.embed_audio(chunk)))
        return out

    def score_many(self, specs, sources: list[str] | None = None, *, batch_size: int = BATCH_SIZE
                   ) -> list[Prediction]:
        """Predictions of many windows of this patient and task, scored in batches (see `logits_many`)."""
        specs = list(specs)
        if sources is not None and len(sources) != len(specs):
            raise ModelError(f"{len(sources)} sources for {len(specs)} spectrograms: give one source per window")
        sources = sources if sources is not None else [f"<spectrogram {i}>" for i in range(len(specs))]
        return [self.prediction(lg, src) for lg, src in zip(self.logits_many(specs, batch_size=batch_size), sources)]

    def score_files(self, paths, *, batch_size: int = BATCH_SIZE) -> list[Prediction]:
        """`score_file` of many files (first 8.18-s window each), scored in batches; a file that cannot be read
        raises its AudioError before any window is scored."""
        paths = [os.fspath(p) for p in paths]
        return self.score_many([input_spectrogram(p) for p in paths], paths, batch_size=batch_size)

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
