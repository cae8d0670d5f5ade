"""Where calibration samples come from (data-free), and the noise sources drawn directly.

Sources produce inputs in the model's input space. `gaussian` is the "G" scheme of The Knowledge
Within (Haroush et al., CVPR 2020, §3) - noise with the input's first and second moments; after the
input normalisation x = (pixel − mean)/std those are 0 and 1 per channel, so the samples are
N(0, 1), clamped to the valid input range when the normalisation is known. `pink` is 1/f noise (the
amplitude spectrum of natural images). `bns`, `inception` and `bns+inception` come from the inverter
(`dfc.synth.inverter`, the `synthesize` pass).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from dfc.errors import DfcError


CALIB_METHODS = ("bns", "gaussian", "pink", "inception", "bns+inception")
NOISE_METHODS = ("gaussian", "pink")  # drawn directly; the others are synthesized by the inverter


def check_method(method: str) -> None:
    if method not in CALIB_METHODS:
        raise DfcError(f"--calib: unknown calibration {method!r}; choose from {', '.join(CALIB_METHODS)}")


def best_available_method(bn_stats_found: bool, classifier: bool = True) -> str:
    """The default source: `bns` when the model has BN statistics; without them (BN folded at export), `inception`
    for a classifier (its first output is [N, classes]), else `pink` noise. Measured on BN-folded exports (issue 29,
    docs/bn_folded.md): ResNet-56 W8A8 agreement 97.46 Gaussian / 97.78 pink / 98.10 inception (from pink noise),
    W4A4 top-1 83.68 / 84.76 / 86.73."""
    return "bns" if bn_stats_found else "inception" if classifier else "pink"


def is_classifier(model: onnx.ModelProto) -> bool:
    """The first output is [N, classes] (classes > 1 or symbolic): its argmax is a class the inception scheme can
    target."""
    dims = model.graph.output[0].type.tensor_type.shape.dim if model.graph.output else []
    return len(dims) == 2 and not (dims[1].HasField("dim_value") and dims[1].dim_value < 2)


def noise_samples(method: str, shape: tuple[int, ...], n: int, rng: np.random.Generator, input_range=None) -> np.ndarray:
    """Samples of a NOISE_METHODS source."""
    return {"gaussian": gaussian_samples, "pink": pink_samples}[method](shape, n, rng, input_range)


def input_spec(graph: gs.Graph) -> tuple[str, tuple[int, ...]]:
    """(name, per-sample shape) of the single float input; clear errors otherwise."""
    if len(graph.inputs) != 1:
        raise DfcError(f"calibration needs a model with exactly one input; this one has {len(graph.inputs)}: {[t.name for t in graph.inputs]}")
    t = graph.inputs[0]
    if t.shape is None or any(not isinstance(d, (int, np.integer)) or d <= 0 for d in t.shape[1:]):
        raise DfcError(f"input {t.name!r} has shape {t.shape}: all dimensions but the batch must be fixed to generate calibration data")
    if t.dtype is not None and np.dtype(t.dtype) != np.float32:
        raise DfcError(f"input {t.name!r} is {np.dtype(t.dtype)}; only float32 inputs can be calibrated")
    return t.name, tuple(int(d) for d in t.shape[1:])


def gaussian_samples(shape: tuple[int, ...], n: int, rng: np.random.Generator, input_range=None) -> np.ndarray:
    """N(0, 1) samples in the model's input space, clamped per channel to the valid range if known."""
    x = rng.standard_normal((n,) + tuple(shape)).astype(np.float32)
    if input_range is not None:
        lo, hi = (np.asarray(v, np.float32).reshape((1, -1) + (1,) * (len(shape) - 1)) for v in input_range)
        x = np.clip(x, lo, hi)
    return x


def pink_samples(shape: tuple[int, ...], n: int, rng: np.random.Generator, input_range=None,
                 exponent: float = 1.0) -> np.ndarray:
    """1/f ("pink") noise in the model's input space: white noise whose amplitude spectrum is shaped to
    |f|^(−exponent) over the spatial frequencies f (natural images have amplitude spectra close to 1/f, Field 1987;
    white Gaussian noise is flat), scaled to zero mean and unit variance per channel over the set (the normalised
    input's moments, as `gaussian_samples`) and clamped to the valid range if known. Inputs without two spatial
    dims get Gaussian noise."""
    if len(shape) != 3:
        return gaussian_samples(shape, n, rng, input_range)
    c, h, w = shape
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy ** 2 + fx ** 2)
    f[0, 0] = 1.0 / max(h, w)  # the mean of each image varies like the lowest frequency
    white = rng.standard_normal((n, c, h, w))
    x = np.fft.irfft2(np.fft.rfft2(white) * f ** -exponent, s=(h, w))
    x = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / x.std(axis=(0, 2, 3), keepdims=True)
    x = x.astype(np.float32)
    if input_range is not None:
        lo, hi = (np.asarray(v, np.float32).reshape((1, -1, 1, 1)) for v in input_range)
        x = np.clip(x, lo, hi)
    return x


def calibration_method(o: dict, ctx, model: onnx.ModelProto) -> str:
    """--calib, else the best source the model allows (`best_available_method`)."""
    return o["calib"] or best_available_method(ctx.bn_stats_found, is_classifier(model))
