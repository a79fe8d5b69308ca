"""RespLLM hyper-parameters (torch-free: the ONNX backend reads them from a bundle's manifest)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from . import contract


@dataclass
class HParams:
    """Hyper-parameters of a RespLLM, read from tensor shapes where the checkpoint allows (§4)."""

    d_llm: int
    enc_dim: int = contract.ENC_DIM
    n_cls: int = contract.N_CLS
    d_ff: int = contract.D_FF
    patch_nums: int = contract.N_AUDIO_TOKENS
    llm_mode: str = "lora"  # lora | frozen
    llm_lora_r: int | None = None
    llm_lora_alpha: float = contract.LLM_LORA_ALPHA
    llm_lora_targets: list[str] = field(default_factory=list)
    enc_mode: str = "frozen"  # frozen (also 'full') | lora | absent
    enc_lora_r: int | None = None
    enc_lora_alpha: float = contract.ENC_LORA_ALPHA
    llm_hidden: int | None = None
    llm_layers: int | None = None
    llm_vocab: int | None = None

    @property
    def llm_scaling(self) -> float:
        return self.llm_lora_alpha / self.llm_lora_r if self.llm_lora_r else 0.0

    def to_dict(self) -> dict:
        return asdict(self)
