"""dfc - data-free compression compiler for ONNX."""

__version__ = "0.1.0"

from dfc.pipeline import Context, Pass, PassManager, register  # noqa: E402,F401


def optimize(model_or_path, **options):
    """Compress an ONNX model data-free; see `dfc.api.optimize` for the options."""
    from dfc.api import optimize as _optimize

    return _optimize(model_or_path, **options)


def calibration_reader(model_or_path, batch: int = 64, **options):
    """An ONNX Runtime CalibrationDataReader over dfc's synthetic samples (data-free `quantize_static`); see
    `dfc.synth.ort_reader.calibration_reader`."""
    from dfc.synth.ort_reader import calibration_reader as _reader

    return _reader(model_or_path, batch=batch, **options)


def export(module, example_input, path, **options):
    """Export a PyTorch module to ONNX with its BatchNorm layers kept (what dfc's data-free methods read), unlike
    `torch.onnx.export`'s default, which folds them into the convs. Options: `opset` (17), `input_name`,
    `output_name`, `mean`/`std` (the input normalisation, stored in the model's metadata). See
    `dfc.models.export.export_keep_bn`."""
    from dfc.models.export import export_keep_bn

    return export_keep_bn(module, example_input, path, **options)
