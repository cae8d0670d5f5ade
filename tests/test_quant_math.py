import numpy as np
import pytest

from dfc import quant_math as qm
from dfc.errors import DfcError


@pytest.mark.parametrize("bits", range(2, 9))
def test_weight_codes_stay_in_symmetric_range(bits):
    w = np.random.default_rng(bits).normal(size=(6, 3, 3, 3)).astype(np.float32)
    q, s = qm.quantize_weight(w, bits, axis=0)
    qmax = 2 ** (bits - 1) - 1
    assert q.dtype == np.int8 and q.min() >= -qmax and q.max() <= qmax
    assert np.all(np.abs(q).reshape(6, -1).max(1) == qmax)  # each channel uses its full range
    err = np.abs(qm.dequantize_weight(q, s, 0) - w)
    assert np.all(err <= s.reshape(-1, 1, 1, 1) / 2 + 1e-7)


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
