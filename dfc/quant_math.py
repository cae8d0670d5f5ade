"""Quantization arithmetic (no graph code): scales, zero points, integer tensors.

- Weights, b bits, symmetric per channel: q_max = 2^(b−1) − 1, s_c = max|W_c| / q_max,
  q = clip(round(W / s_c), −q_max, q_max), stored as int8 (b < 8 uses a narrower range).
- Activations, b bits, asymmetric per tensor, uint8 storage: range [r_min, r_max] widened to
  contain 0, q_max = 2^b − 1, s = (r_max − r_min)/q_max, z = round(−r_min/s) so 0 is exact.
- Bias: int32, scale s_x·s_c per output channel, zero point 0 (the form ORT fuses into QLinearConv).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INT32_MAX = np.iinfo(np.int32).max


def check_bits(bits: int, what: str) -> None:
    from dfc.errors import DfcError

    if not isinstance(bits, (int, np.integer)) or not 2 <= int(bits) <= 8:
        raise DfcError(f"{what} must be an integer bit width in 2..8, got {bits!r}")


@dataclass(frozen=True)
class ActQParams:
    scale: float
    zero_point: int
    bits: int

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    def representable_range(self) -> tuple[float, float]:
        """The float interval the b-bit codes [0, 2^b − 1] cover."""
        return (0 - self.zero_point) * self.scale, (self.qmax - self.zero_point) * self.scale


def fake_quant_act(v: np.ndarray, p: ActQParams) -> np.ndarray:
    """(clip(round(v/s) + zp, 0, 2^b − 1) − zp)·s: what a QuantizeLinear → DequantizeLinear pair gives."""
    q = np.clip(np.round(v / p.scale) + p.zero_point, 0, p.qmax)
    return (q - p.zero_point) * p.scale


def act_qparams(lo: float, hi: float, bits: int) -> ActQParams:
    """Asymmetric uint params for the calibrated range [lo, hi] (widened to include 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    qmax = 2**bits - 1
    scale = (hi - lo) / qmax
    if not np.isfinite(scale) or scale <= 0:
        scale = 1.0 / qmax  # constant-zero tensor: any scale represents it exactly
    zp = int(np.clip(np.round(-lo / scale), 0, qmax))
    return ActQParams(float(np.float32(scale)), zp, bits)


def weight_scales(w: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """Per-channel symmetric scales along `axis` (all-zero channels get scale 1)."""
    qmax = 2 ** (bits - 1) - 1
    other = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=other) if other else np.abs(w)
    scale = (amax / qmax).astype(np.float32)
    return np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)


def quantize_weight(w: np.ndarray, bits: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes, float32 scales) for symmetric per-channel quantization of `w` along `axis`."""
    qmax = 2 ** (bits - 1) - 1
    scale = weight_scales(w, bits, axis)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scale


def dequantize_weight(q: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * q.ndim
    shape[axis] = -1
    return q.astype(np.float32) * scale.reshape(shape)


def quantize_bias(b: np.ndarray, x_scale: float, w_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int32 codes, float32 scales) with scale = s_x · s_w per output channel, zero point 0."""
    scale = (np.float32(x_scale) * w_scale.astype(np.float32)).astype(np.float32)
    q = np.clip(np.round(b.astype(np.float64) / scale), -INT32_MAX, INT32_MAX).astype(np.int32)
    return q, scale


def relative_error(ref: np.ndarray, approx: np.ndarray) -> float:
    """‖ref − approx‖ / ‖ref‖ (0 for a zero reference)."""
    denom = float(np.linalg.norm(ref))
    return 0.0 if denom == 0 else float(np.linalg.norm(ref - approx) / denom)
