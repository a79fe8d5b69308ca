"""Error types a user can act on; the CLI prints their message on one line and exits non-zero."""
from __future__ import annotations


class RespiEdgeError(Exception):
    """Base class: the message names the problem and what to do about it."""


class AudioError(RespiEdgeError):
    """The audio cannot be screened (unreadable, empty, NaN/Inf, silent, too short)."""


class PromptError(RespiEdgeError):
    """Unknown task, malformed prompt parts or DMS codes."""


class CheckpointError(RespiEdgeError):
    """A checkpoint is missing, of an unknown layout, or does not fit the base LLM."""


class ModelError(RespiEdgeError):
    """The base LLM or another model part cannot be found or loaded."""


class BundleError(RespiEdgeError):
    """An exported bundle is incomplete, tampered with or of an unknown format."""


class ManifestError(RespiEdgeError):
    """A dataset manifest (CSV) is malformed, references missing files or has unusable labels."""


class DeviceError(RespiEdgeError):
    """An audio input device is missing, busy or was lost."""


class DependencyError(RespiEdgeError):
    """An optional dependency (onnxruntime, bitsandbytes, sounddevice, ...) is not installed."""


class ResultsError(RespiEdgeError):
    """A results file (cohort scores) has an unknown format, is locked by another run or cannot be resumed."""
