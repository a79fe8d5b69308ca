"""Static int8 quantization of the ONNX encoder + projector with a calibration data reader (QDQ, per-channel
weights, MinMax activation ranges from real recordings), next to onnxruntime's dynamic int8."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from respi_edge.runtime.quiet import root_logger_quiet


class SpectrogramReader:
    """onnxruntime CalibrationDataReader over the spectrograms of a manifest's recordings."""

    def __init__(self, specs: list[np.ndarray], input_name: str = "spec"):
        self.items = iter([{input_name: s[None].astype(np.float32)} for s in specs])

    def get_next(self):
        return next(self.items, None)


def calibration_specs(manifest: str, limit: int = 32) -> list[np.ndarray]:
    from respi_edge.runtime import audio
    from respi_edge.runtime.manifest import read_manifest

    rows = read_manifest(manifest, require_both_classes=False).rows
    step = max(1, len(rows) // limit)
    return [audio.spectrogram(r.path) for r in rows[::step][:limit]]


def export_int8_static(src: Path, dst: Path, specs: list[np.ndarray]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with root_logger_quiet():
        quantize_static(str(src), str(dst), SpectrogramReader(specs), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=CalibrationMethod.MinMax)
