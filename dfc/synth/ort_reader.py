"""dfc's synthetic samples inside ONNX Runtime's own quantization flow.

`calibration_reader(model, **options)` returns an `onnxruntime.quantization.CalibrationDataReader` over the samples
`dfc optimize` would calibrate on with the same options (BNS by default where the model has BatchNorm statistics;
`calib="gaussian"` etc. as with `--calib`), so that `quantize_static` and the tools built on it run data-free:

    from onnxruntime.quantization import quantize_static
    quantize_static("model.onnx", "model_int8.onnx", dfc.calibration_reader("model.onnx"))
"""

from __future__ import annotations

import numpy as np
from onnxruntime.quantization import CalibrationDataReader


class SampleReader(CalibrationDataReader):
    """A CalibrationDataReader over an in-memory array, `batch` samples per `get_next`; `rewind` starts over."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int = 64, info: dict | None = None):
        self.input_name, self.x, self.batch = input_name, np.asarray(x, np.float32), int(batch)
        self.info = dict(info or {})  # how the samples were made (method, seconds, ...)
        self._i = 0

    def get_next(self) -> dict | None:
        if self._i >= len(self.x):
            return None
        out = {self.input_name: self.x[self._i:self._i + self.batch]}
        self._i += self.batch
        return out

    def rewind(self) -> None:
        self._i = 0

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch)


def calibration_reader(model_or_path, batch: int = 64, **options) -> SampleReader:
    """A CalibrationDataReader yielding dfc's synthetic calibration samples for the model (`dfc.api.calibration_set`
    with these options: calib, calib_samples, input_mean/input_std, seed, inverter_*, device)."""
    from dfc.api import calibration_set
    from dfc.errors import DfcError
    from dfc.graph.modelio import as_model

    if not isinstance(batch, (int, np.integer)) or batch < 1:
        raise DfcError(f"batch must be an integer >= 1, got {batch!r}")
    from dfc.graph.signature import Signature

    model = as_model(model_or_path)
    x, info = calibration_set(model, **options)
    return SampleReader(model.graph.input[0].name, x, Signature.of(model).fixed_batch or batch, info)  # a fixed batch wins
