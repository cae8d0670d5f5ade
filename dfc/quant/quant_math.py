"""Quantization arithmetic (no graph code): scales, zero points, integer tensors.

- Weights, b bits, per channel, zero point 0, stored as int8: codes in [−2^(b−1), 2^(b−1) − 1] for b < 8 (all
  2^b levels: 2 bits is {−2, −1, 0, 1}, not ternary), [−127, 127] at 8 bits (ORT's symmetric int8 weights);
  s_c = c·max|W_c| / (2^(b−1) − 1); below 4 bits the clipping ratio c ∈ (0, 1] minimises ‖W_c − s_c·q_c‖² (a grid
  search per channel; c = 1, the plain max scale, is one candidate), from 4 bits c = 1 (`CLIP_BELOW_BITS`).
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


def quantize_codes(x, scale, lo, hi, zero_point=0, dtype=None) -> np.ndarray:
    """clip(round(x / s) + zp, lo, hi): the integer codes of `x` (ONNX QuantizeLinear, round half to even), as `dtype`
    when given. The one rounding formula of dfc (weights, biases, activations, constants, students)."""
    q = np.clip(np.round(x / scale) + zero_point, lo, hi)
    return q if dtype is None else q.astype(dtype)


def fake_quant_act(v: np.ndarray, p: ActQParams) -> np.ndarray:
    """(clip(round(v/s) + zp, 0, 2^b − 1) − zp)·s: what a QuantizeLinear → DequantizeLinear pair gives."""
    q = quantize_codes(v, p.scale, 0, p.qmax, p.zero_point)
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


def weight_code_range(bits: int) -> tuple[int, int]:
    """The int8 codes a b-bit weight uses: [−2^(b−1), 2^(b−1) − 1] below 8 bits, [−127, 127] at 8."""
    if bits >= 8:
        return -127, 127
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def code_range_of(codes: np.ndarray) -> tuple[int, int]:
    """The code range of the narrowest width that holds `codes` (written by `quantize_weight`): the clipping
    search saturates each channel's largest |w| at ≥ 2^(b−1) − 1 in magnitude, so the width is recoverable."""
    c = np.asarray(codes, np.int64)
    if c.size == 0:
        return weight_code_range(8)
    hi, lo = max(int(c.max()), 1), min(int(c.min()), -1)
    bits = 2
    while bits < 8 and not (weight_code_range(bits)[0] <= lo and hi <= weight_code_range(bits)[1]):
        bits += 1
    return weight_code_range(bits)


CLIP_RATIOS = np.linspace(1.0, 0.05, 96)  # candidate clipping ratios c of the per-channel weight scale search
# Below this width the max scale leaves most weights at code 0 (2 bits: every |w| < max|w|/2), and the clipping
# search is decisive (ResNet-56 2w4a after kd: 83.58 top-1 vs 62.44); at 4 bits and above clipping lowers the weight
# MSE but costs top-1 (ResNet-56 W4A4 closed form 87.41 vs 89.97, after kd 90.46 vs 90.95; ResNet-20 88.40 vs 89.97):
# the few largest weights it clips carry more of the output than their share of the MSE.
CLIP_BELOW_BITS = 4


def channel_rows(w: np.ndarray, axis: int) -> np.ndarray:
    """`w` as float64 [channels along `axis`, everything else] (a Conv's rest in im2col order: input channel, kernel
    row, kernel column)."""
    return np.moveaxis(np.asarray(w, np.float64), axis, 0).reshape(w.shape[axis], -1)


def weight_scales(w: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """Per-channel scales along `axis`: s_c = c·max|W_c|/(2^(b−1) − 1), below `CLIP_BELOW_BITS` with c from
    `CLIP_RATIOS` minimising ‖W_c − s_c·clip(round(W_c/s_c), q_min, q_max)‖², else c = 1 (all-zero channels get
    scale 1)."""
    qmin, qmax = weight_code_range(bits)
    rows = channel_rows(w, axis)
    amax = np.abs(rows).max(1)
    qpos = 2 ** (bits - 1) - 1
    best_s, best_err = amax / qpos, np.full(len(rows), np.inf)
    per = max(1, (1 << 22) // max(rows.size, 1))  # ratios per vectorised chunk (bounded memory)
    for i in range(0, len(CLIP_RATIOS) if bits < CLIP_BELOW_BITS else 0, per):
        c = CLIP_RATIOS[i:i + per, None]
        s = np.where(amax > 0, c * amax / qpos, 1.0)[:, :, None]  # [ratios, channels, 1]
        err = ((rows - s * quantize_codes(rows, s, qmin, qmax)) ** 2).sum(2)
        for k in range(len(c)):  # in order: ties keep the larger scale (no clipping without gain)
            better = err[k] < best_err * (1 - 1e-9)
            best_s, best_err = np.where(better, s[k, :, 0], best_s), np.where(better, err[k], best_err)
    scale = best_s.astype(np.float32)
    return np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)


def quantize_weight(w: np.ndarray, bits: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes, float32 scales) for per-channel quantization of `w` along `axis` (`weight_scales`)."""
    qmin, qmax = weight_code_range(bits)
    scale = weight_scales(w, bits, axis)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = quantize_codes(w, scale.reshape(shape), qmin, qmax, dtype=np.int8)
    return q, scale


def dequantize_weight(q: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * q.ndim
    shape[axis] = -1
    return q.astype(np.float32) * scale.reshape(shape)


def quantize_bias(b: np.ndarray, x_scale: float, w_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int32 codes, float32 scales) with scale = s_x · s_w per output channel, zero point 0."""
    scale = (np.float32(x_scale) * w_scale.astype(np.float32)).astype(np.float32)
    q = quantize_codes(b.astype(np.float64), scale, -INT32_MAX, INT32_MAX, dtype=np.int32)
    return q, scale


def relative_error(ref: np.ndarray, approx: np.ndarray) -> float:
    """‖ref − approx‖ / ‖ref‖ (0 for a zero reference)."""
    denom = float(np.linalg.norm(ref))
    return 0.0 if denom == 0 else float(np.linalg.norm(ref - approx) / denom)
