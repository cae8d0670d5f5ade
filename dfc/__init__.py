"""dfc - data-free compression compiler for ONNX."""

__version__ = "0.1.0"

from dfc.pipeline import Context, Pass, PassManager, register  # noqa: E402,F401


def optimize(model_or_path, **options):
    """Compress an ONNX model data-free; see `dfc.api.optimize` for the options."""
    from dfc.api import optimize as _optimize

    return _optimize(model_or_path, **options)
