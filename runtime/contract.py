"""Constants of the reference contract, each with the section of shared/spec/REFERENCE.md it comes from.

Everything that must match the official OPERA / RespLLM code lives here once; every other module imports it.
"""
from __future__ import annotations

# §1.1 load
SAMPLE_RATE = 16_000
RESAMPLE_QUALITY = "HQ"  # soxr quality; part of the contract (other resamplers change spec by 1e-2..3e-1)

# §1.2 trim (librosa.effects.trim(frame_length=1600, hop_length=800), top_db=60, ref=max)
TRIM_FRAME = 1600
TRIM_HOP = 800
TRIM_TOP_DB = 60.0
TRIM_AMIN = 1e-5

# §1.3 window (split_pad_sample, 8.18 s, types='repeat')
WINDOW_SECONDS = 8.18
WINDOW_SAMPLES = int(WINDOW_SECONDS * SAMPLE_RATE)  # 130880
WINDOW_HOP = WINDOW_SAMPLES // 2  # 65440, long-clip framing

# §1.4 mel spectrogram
N_FFT = 1024
STFT_HOP = 512
N_MELS = 64
F_MIN = 50.0
F_MAX = 8000.0
DB_AMIN = 1e-10
DB_TOP = 80.0
N_FRAMES = 1 + WINDOW_SAMPLES // STFT_HOP  # 256
SPEC_SHAPE = (N_FRAMES, N_MELS)  # (256, 64), time-major

# §2 OPERA-CT encoder
ENC_DIM = 768
N_AUDIO_TOKENS = 64  # patch_nums

# §3.1 defaults of the RespLLM configs (used when a checkpoint does not say)
D_FF = 32
N_CLS = 2
LLM_LORA_R = 16
LLM_LORA_ALPHA = 32
LLM_LORA_DROPOUT = 0.1
LLM_LORA_TARGETS = ("q_proj", "v_proj")
ENC_LORA_R = 8
ENC_LORA_ALPHA = 32
ENC_LORA_TARGETS = ("qkv", "proj")

# §5.4 tokenisation
TOKENIZER_MAX_LENGTH = 2048

# Minimum audio after trimming that respi-edge accepts (not in the reference, which accepts 1 sample):
# 0.1 s = two trim hops / ~3 STFT frames. Below this the cyclic tiling of §1.3 repeats a fragment >1300
# times and the window carries no breathing cycle at all; the golden a8 (0.15 s) is still accepted.
MIN_AUDIO_SECONDS = 0.1
