"""Activation ranges for quantization, collected on calibration samples.

Range collection runs the float model in ONNX Runtime with the tensors of interest exposed as
outputs: `minmax` keeps the running min/max; `percentile` takes the p-th / (100−p)-th percentile of
each batch and averages them over batches; `mse` keeps a uniform subsample of each tensor's values
and picks the range [α·lo, α·hi] (α on a grid in (0, 1]) that minimises the b-bit quantization
mean squared error on it (the clipping/rounding trade-off, as in Banner et al. 2019, ACIQ).
"""

from __future__ import annotations

import numpy as np
import onnx

from dfc.errors import DfcError
from dfc.measure.channel_stats import exposing_session


CALIBRATORS = ("minmax", "percentile", "mse")
MSE_SAMPLES = 1 << 18  # values kept per tensor for the MSE range search


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
    from dfc.measure.runtime import fixed_batch, run_batched

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


def mse_range(v: np.ndarray, lo: float, hi: float, bits: int, grid: int = 50) -> tuple[float, float]:
    """The range [α·lo, α·hi] minimising mean((v − fakequant(v))²) over α in (0, 1]."""
    from dfc.quant.quant_math import act_qparams, fake_quant_act

    best, best_err = (lo, hi), np.inf
    v = v.astype(np.float32)
    for a in np.linspace(1.0, 1.0 / grid, grid):
        p = act_qparams(a * lo, a * hi, bits)
        err = float(np.mean((fake_quant_act(v, p) - v) ** 2))
        if err < best_err:
            best, best_err = (a * lo, a * hi), err
    return best
