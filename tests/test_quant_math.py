import numpy as np
import pytest

from dfc.quant import quant_math as qm
from dfc.errors import DfcError


@pytest.mark.parametrize("bits", range(2, 9))
def test_weight_codes_use_the_b_bit_range_and_width_is_recoverable(bits):
    w = np.random.default_rng(bits).normal(size=(6, 3, 3, 3)).astype(np.float32)
    q, s = qm.quantize_weight(w, bits, axis=0)
    lo, hi = (-127, 127) if bits == 8 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    assert q.dtype == np.int8 and q.min() >= lo and q.max() <= hi
    assert np.all(np.abs(q).reshape(6, -1).max(1) >= 2 ** (bits - 1) - 1)  # each channel's extreme saturates
    assert qm.code_range_of(q) == (lo, hi)
    inside = np.abs(w) <= s.reshape(-1, 1, 1, 1) * (2 ** (bits - 1) - 1)
    err = np.abs(qm.dequantize_weight(q, s, 0) - w)
    assert np.all(err[inside] <= np.broadcast_to(s.reshape(-1, 1, 1, 1), w.shape)[inside] / 2 + 1e-6)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_clipped_weight_scale_never_worse_than_max_scale(bits):
    """The MSE clipping search includes c = 1 (the max scale), so its error is never above it; at 2 bits the
    4-level grid with a clipped scale is far better than max-scaled ternary codes; from 4 bits nothing is clipped."""
    w = np.random.default_rng(0).normal(size=(16, 8, 3, 3)).astype(np.float32)
    q, s = qm.quantize_weight(w, bits, axis=0)
    qpos = 2 ** (bits - 1) - 1
    s_max = np.abs(w).reshape(16, -1).max(1) / qpos
    plain = np.clip(np.round(w / s_max.reshape(-1, 1, 1, 1)), -qpos, qpos) * s_max.reshape(-1, 1, 1, 1)
    new, old = qm.relative_error(w, qm.dequantize_weight(q, s, 0)), qm.relative_error(w, plain)
    assert new <= old + 1e-9
    if bits < qm.CLIP_BELOW_BITS:
        assert new < 0.6 * old
    else:  # no clipping from 4 bits: the max scale, the same codes as a symmetric max-abs quantizer
        np.testing.assert_array_equal(q.astype(np.float32) * s.reshape(-1, 1, 1, 1), plain.astype(np.float32))


def test_all_zero_channel_gets_unit_scale():
    w = np.zeros((2, 4), np.float32)
    w[1] = [1, -2, 3, 0.5]
    q, s = qm.quantize_weight(w, 8, axis=0)
    assert s[0] == 1.0 and not q[0].any()


def test_activation_params_represent_zero_exactly_and_cover_range():
    p = qm.act_qparams(-1.3, 4.1, 8)
    assert 0 <= p.zero_point <= 255
    lo, hi = p.representable_range()
    assert lo <= -1.3 + p.scale and hi >= 4.1 - p.scale
    relu = qm.act_qparams(0.0, 6.0, 8)
    assert relu.zero_point == 0  # saturation at code 0 is exactly Relu
    four = qm.act_qparams(0.0, 6.0, 4)
    assert four.qmax == 15 and four.scale == pytest.approx(6.0 / 15, rel=1e-6)


def test_bias_scale_is_input_times_weight_scale():
    b = np.array([0.5, -0.25], np.float32)
    q, s = qm.quantize_bias(b, 0.1, np.array([0.01, 0.02], np.float32))
    np.testing.assert_allclose(s, [0.001, 0.002], rtol=1e-6)
    assert q.dtype == np.int32 and list(q) == [500, -125]


@pytest.mark.parametrize("bad", [1, 9, 0, 2.5, "8"])
def test_bits_outside_2_to_8_are_refused(bad):
    with pytest.raises(DfcError, match="--wbits"):
        qm.check_bits(bad, "--wbits")
