"""dfc - data-free compression compiler for ONNX."""

__version__ = "0.1.0"

from dfc.pipeline import Context, Pass, PassManager, register  # noqa: E402,F401


def optimize(model_or_path, **options):
    """Compress an ONNX model data-free; see `dfc.api.optimize` for the options."""
    from dfc.api import optimize as _optimize

    return _optimize(model_or_path, **options)


def calibration_reader(model_or_path, batch: int = 64, **options):
    """An ONNX Runtime CalibrationDataReader over dfc's synthetic samples (data-free `quantize_static`); see
    `dfc.ort_reader.calibration_reader`."""
    from dfc.ort_reader import calibration_reader as _reader

    return _reader(model_or_path, batch=batch, **options)
