"""Calibration data (data-free) and activation-range collection.

Generators produce inputs in the model's input space. `gaussian` is the "G" scheme of The Knowledge
Within (Haroush et al., CVPR 2020, §3) - noise with the input's first and second moments; after the
input normalisation x = (pixel − mean)/std those are 0 and 1 per channel, so the samples are
N(0, 1), clamped to the valid input range when the normalisation is known. `bns`, `inception` and
`bns+inception` come from the inverter (`dfc.inverter`, the `synthesize` pass).

Range collection runs the float model in ONNX Runtime with the tensors of interest exposed as
outputs: `minmax` keeps the running min/max; `percentile` takes the p-th / (100−p)-th percentile of
each batch and averages them over batches; `mse` keeps a uniform subsample of each tensor's values
and picks the range [α·lo, α·hi] (α on a grid in (0, 1]) that minimises the b-bit quantization
mean squared error on it (the clipping/rounding trade-off, as in Banner et al. 2019, ACIQ).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from dfc.errors import DfcError

CALIB_METHODS = ("bns", "gaussian", "pink", "inception", "bns+inception")
NOISE_METHODS = ("gaussian", "pink")  # drawn directly; the others are synthesized by the inverter
CALIBRATORS = ("minmax", "percentile", "mse")
MSE_SAMPLES = 1 << 18  # values kept per tensor for the MSE range search


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


def collect_ranges(
    model: onnx.ModelProto,
    names: list[str],
    x: np.ndarray,
    calibrator: str = "minmax",
    percentile: float = 99.99,
    batch: int = 64,
    bits: dict[str, int] | None = None,
) -> dict[str, tuple[float, float]]:
    """Per-tensor (lo, hi) of `names` over the calibration batch `x`, by running ORT."""
    from dfc.progress import progress_bar
    from dfc.runtime import fixed_batch, run_batched

    if calibrator not in CALIBRATORS:
        raise DfcError(f"unknown calibrator {calibrator!r}; choose from {', '.join(CALIBRATORS)}")
    sess = exposing_session(model, names)
    lo = {n: [] for n in names}
    hi = {n: [] for n in names}
    kept = {n: [] for n in names}
    batch = fixed_batch(sess) or batch
    starts = range(0, len(x), batch)
    rng = np.random.default_rng(0)
    per_batch = max(1, MSE_SAMPLES // max(1, len(starts)))
    for s in progress_bar(starts, desc="calibrating", total=len(starts)):
        outs = run_batched(sess, x[s : s + batch], batch, outputs=names)
        for n, v in zip(names, outs):
            v = v.ravel()
            if calibrator in ("minmax", "mse"):
                lo[n].append(float(v.min()))
                hi[n].append(float(v.max()))
                if calibrator == "mse":
                    kept[n].append(v if v.size <= per_batch else rng.choice(v, per_batch, replace=False))
            else:
                lo[n].append(float(np.percentile(v, 100.0 - percentile)))
                hi[n].append(float(np.percentile(v, percentile)))
    overflow = [n for n in names if not np.isfinite(lo[n]).all() or not np.isfinite(hi[n]).all()]
    if overflow:
        raise DfcError(f"activation {overflow[0]!r} is not finite on the calibration data (range {min(lo[overflow[0]])} .. "
                       f"{max(hi[overflow[0]])}): the weights are too large for float32 arithmetic")
    if calibrator == "minmax":
        return {n: (min(lo[n]), max(hi[n])) for n in names}
    if calibrator == "mse":
        bits = bits or {}
        return {n: mse_range(np.concatenate(kept[n]), min(lo[n]), max(hi[n]), bits.get(n, 8)) for n in names}
    return {n: (float(np.mean(lo[n])), float(np.mean(hi[n]))) for n in names}


def exposing_session(model: onnx.ModelProto, names: list[str]):
    """An unoptimised ORT session of `model` with the tensors `names` added to its outputs."""
    from dfc.runtime import make_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for n in names:
        if n not in existing:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    return make_session(probe, optimize=False)


def channel_averages(model: onnx.ModelProto, names: list[str], x: np.ndarray, transforms, batch: int = 64,
                     progress: str | None = None) -> dict[str, list[np.ndarray]]:
    """Per tensor name: for each function f in `transforms` (f(values, name)), the per-channel (axis 1) mean of
    f(tensor) over the batch `x` and all other axes."""
    from dfc.progress import progress_bar
    from dfc.runtime import fixed_batch, run_batched

    sess = exposing_session(model, names)
    batch = fixed_batch(sess) or batch
    sums: dict[str, list] = {n: [0.0] * len(transforms) for n in names}
    count = dict.fromkeys(names, 0)
    for s in progress_bar(range(0, len(x), batch), desc=progress, total=-(-len(x) // batch)):
        for n, v in zip(names, run_batched(sess, x[s : s + batch], batch, outputs=names)):
            v = np.asarray(v, np.float32)
            axes = tuple(i for i in range(v.ndim) if i != 1)
            sums[n] = [acc + f(v, n).sum(axis=axes, dtype=np.float64) for acc, f in zip(sums[n], transforms)]
            count[n] += v.size // max(1, v.shape[1])
    return {n: [a / max(1, count[n]) for a in sums[n]] for n in names}


def channel_means(model: onnx.ModelProto, params: dict, x: np.ndarray, batch: int = 64,
                  progress: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per tensor name in `params` (-> its `ActQParams`): the per-channel (axis 1) means of the tensor and of
    the tensor after fake quantization, over the batch `x` and all other axes."""
    from dfc.quant_math import fake_quant_act

    got = channel_averages(model, list(params), x, [lambda v, n: v, lambda v, n: fake_quant_act(v, params[n])],
                           batch=batch, progress=progress)
    return {n: (a, b) for n, (a, b) in got.items()}


def channel_moments(model: onnx.ModelProto, names: list[str], x: np.ndarray, batch: int = 64,
                    progress: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per tensor name: the per-channel (axis 1) mean and standard deviation over the batch `x` and all other axes."""
    got = channel_averages(model, names, x, [lambda v, n: v, lambda v, n: v.astype(np.float64) ** 2], batch=batch,
                           progress=progress)
    return {n: (m, np.sqrt(np.maximum(sq - m ** 2, 0.0))) for n, (m, sq) in got.items()}


def mse_range(v: np.ndarray, lo: float, hi: float, bits: int, grid: int = 50) -> tuple[float, float]:
    """The range [α·lo, α·hi] minimising mean((v − fakequant(v))²) over α in (0, 1]."""
    from dfc.quant_math import act_qparams, fake_quant_act

    best, best_err = (lo, hi), np.inf
    v = v.astype(np.float32)
    for a in np.linspace(1.0, 1.0 / grid, grid):
        p = act_qparams(a * lo, a * hi, bits)
        err = float(np.mean((fake_quant_act(v, p) - v) ** 2))
        if err < best_err:
            best, best_err = (a * lo, a * hi), err
    return best
