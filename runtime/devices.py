"""Audio input devices, as `python -m sounddevice` lists them (index, name, host API, channels, rate, default)."""
from __future__ import annotations

from .stream.sources import sounddevice


def input_devices() -> list[dict]:
    sd = sounddevice()
    try:
        default_in = sd.query_devices(kind="input")["index"]
    except (sd.PortAudioError, ValueError, KeyError):
        default_in = None
    apis = sd.query_hostapis()
    out = []
    for i, d in enumerate(sd.query_devices()):
        if d["max_input_channels"] <= 0:
            continue
        out.append({"index": i, "name": d["name"], "hostapi": apis[d["hostapi"]]["name"],
                    "channels": int(d["max_input_channels"]), "default_samplerate": float(d["default_samplerate"]),
                    "default": i == default_in})
    return out
