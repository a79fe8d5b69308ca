"""Keeping library chatter off the user's terminal: advisory warnings, progress bars, per-tensor log lines."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def root_logger_quiet(level: int = logging.ERROR) -> Iterator[None]:
    """onnxruntime's quantizers log every tensor they skip on the root logger: raise its level while they run."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(before)


def quiet_libraries() -> None:
    """For the CLI: progress bars and advisory warnings of the ML libraries are not the user's business."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("transformers", "peft", "accelerate", "bitsandbytes"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
