"""Calibration samples on disk: `--save-calib` (checked before any work, written atomically) and `--calib-data`
(.npz with float inputs `x`, or uint8 `images` normalised here)."""

from __future__ import annotations

import numpy as np
import onnx

from dfc.errors import DfcError
from dfc.options.resolve import uses_samples
from dfc.pipeline import Context
from dfc.synth.sample_sources import NOISE_METHODS, calibration_method


def check_save_calib(o: dict, ctx: Context, model: onnx.ModelProto) -> None:
    """--save-calib refused before any work when this run will synthesize nothing, or cannot write there."""
    import os

    path = o["save_calib"]
    if not path:
        return
    method = calibration_method(o, ctx, model)
    if not uses_samples(o) or o["calib_data"] is not None or method in NOISE_METHODS:
        why = "--no-quant" if not uses_samples(o) else "--calib-data" if o["calib_data"] is not None else (
            f"--calib {method}" if o["calib"] else f"the model has no BatchNorm statistics nor a classifier output, so "
                                                   f"calibration uses {method} noise")
        raise DfcError(f"--save-calib {path}: this run synthesizes no calibration samples ({why})")
    folder = os.path.dirname(os.path.abspath(str(path)))
    if not os.path.isdir(folder):
        raise DfcError(f"--save-calib {path}: folder {folder} does not exist")


def save_calibration(path, ctx: Context) -> None:
    """The calibration samples of this run as .npz (key `x`, float32 model inputs), written atomically."""
    from dfc.graph.modelio import atomic_target

    if ctx.calibration is None:
        raise DfcError(f"--save-calib {path}: this run synthesized no calibration samples (a noise source, --calib-data or "
                       "--no-quant)")
    with atomic_target(path, suffix=".npz") as tmp:
        np.savez(tmp, x=ctx.calibration, source=np.array(ctx.calibration_source))


def load_calibration(path, mean=None, std=None) -> np.ndarray:
    """Calibration inputs from .npz: key `x` (float32 model inputs, as --save-calib writes), or
    `images` (uint8 NHWC, normalised with mean/std)."""
    from dfc.measure.validation import preprocess

    try:
        d = np.load(path)
    except (OSError, ValueError, EOFError) as e:  # EOFError: an empty file
        raise DfcError(f"--calib-data {path}: cannot read as .npz ({type(e).__name__}: {e or 'empty file'})") from e
    if not isinstance(d, np.lib.npyio.NpzFile):
        raise DfcError(f"--calib-data {path}: a single .npy array, not an .npz archive; save it as np.savez(path, x=array)")
    try:
        with d:
            if "x" in d:
                return np.asarray(d["x"], np.float32)
            if "images" in d:
                if mean is None or std is None:
                    raise DfcError(f"--calib-data {path}: uint8 `images` need --input-mean/--input-std")
                return preprocess(d["images"], mean, std)
            raise DfcError(f"--calib-data {path}: no `x` (float inputs) or `images` array; found {', '.join(d.files)}")
    except (OSError, ValueError, EOFError) as e:
        raise DfcError(f"--calib-data {path}: cannot read ({type(e).__name__}: {e})") from e
