"""Activation-aware weight rounding (dfc.quant.weight_rounding): GPTQ codes and clipping from the layers' inputs."""

import numpy as np
import pytest

from conftest import DEMO, conv_bn_relu_cnn, rand, run
from dfc import api
from dfc.finetune.student import QuantizedTensor, Student
from dfc.graph.modelio import check_model, load_model
from dfc.measure import probe
from dfc.pipeline import PassManager, context_from_model, get_pass
from dfc.quant import quant_math as qm
from dfc.quant import weight_rounding as wr


def _correlated_inputs(d: int, n: int = 2000, seed: int = 0) -> np.ndarray:
    """Inputs whose channels differ in scale and correlate (what a layer sees; an identity H makes GPTQ nearest)."""
    r = np.random.default_rng(seed)
    mix = r.normal(size=(d, d)) * np.exp(r.normal(size=d))[None, :]
    return r.normal(size=(n, d)) @ mix


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gptq_and_clipping_lower_the_output_error_and_the_latent_rounds_to_the_codes(bits):
    r = np.random.default_rng(1)
    x = _correlated_inputs(48)
    h = x.T @ x
    w = r.normal(size=(16, 48)).astype(np.float32)
    q0, s0 = qm.quantize_weight(w, bits, 0)
    nearest = wr.output_error(w, qm.dequantize_weight(q0, s0, 0), h).sum()

    scale = wr.aware_scales(w.astype(np.float64), h, bits)
    clipped = wr.output_error(w, scale[:, None] * qm.quantize_codes(w, scale[:, None], *qm.weight_code_range(bits)), h)
    assert clipped.sum() <= nearest and np.all(scale <= np.abs(w).max(1) / (2 ** (bits - 1) - 1) + 1e-12)

    codes, scale, latent, report = wr.round_weight(w, bits, 0, h)
    chosen = wr.output_error(w, qm.dequantize_weight(codes, scale, 0), h).sum()
    assert chosen < 0.8 * nearest, (chosen, nearest)
    assert report["output_rel_error"] < report["output_rel_error_nearest"]
    lo, hi = qm.weight_code_range(bits)
    assert codes.dtype == np.int8 and codes.min() >= lo and codes.max() <= hi
    np.testing.assert_array_equal(qm.quantize_codes(latent, scale[:, None], lo, hi), codes)


def test_dead_inputs_and_a_conv_layout_round_trip():
    """A column no sample reaches (H_jj = 0) gets weight 0 in the latent; Conv weights [O, I, k, k] come back in
    their own shape and the rows follow im2col order."""
    w = rand((4, 3, 2, 2), seed=2)
    rows = wr.weight_rows(w, 0)
    np.testing.assert_array_equal(wr.from_rows(rows, w.shape, 0), w)
    np.testing.assert_array_equal(wr.from_rows(wr.weight_rows(w, 1), w.shape, 1), w)
    x = _correlated_inputs(12, seed=3)
    x[:, 5] = 0
    codes, latent = wr.gptq_codes(rows, x.T @ x, np.abs(rows).max(1) / 7, 4)
    assert np.all(latent[:, 5] == 0) and np.all(codes[:, 5] == 0)


def _quantized(model, bits, rounding, x):
    ctx = context_from_model(model)
    q = PassManager(["cleanup", "fold-bn", get_pass("quantize", wbits=bits, abits=8, first_last_bits=bits,
                                                    calib_data=x, weight_rounding=rounding)], debug=True).run(model, ctx)
    return q, ctx


def test_quantize_rounds_low_bit_layers_from_their_inputs_keeps_the_closer_model_and_8_bit_layers_nearest():
    m = conv_bn_relu_cnn()
    x = rand((64, 3, 8, 8), seed=5)
    ref = run(m, x)
    q, ctx = _quantized(m, 3, "gptq", x)
    check_model(q)
    rows, check = ctx.results["quantize"]["layers"], ctx.results["quantize"]["rounding_check"]
    kept = check["kept"]
    assert {r["rounding"] for r in rows} == {kept}
    assert set(ctx.weight_latents) == ({r["node"] for r in rows} if kept == "gptq" else set())
    # the kept graph is the one closer to float on the calibration samples, as measured by the check
    assert check["error_" + kept] <= min(check["error_gptq"], check["error_nearest"])
    assert check["metric"] == "KL"  # a classifier's [N, classes] output: the KL of its class distributions
    np.testing.assert_allclose(probe.error([ref], [run(q, x)]), check["error_" + kept], rtol=1e-3)
    plain, ctx_n = _quantized(m, 3, "nearest", x)
    assert {r["rounding"] for r in ctx_n.results["quantize"]["layers"]} == {"nearest"}
    assert "rounding_check" not in ctx_n.results["quantize"] and not ctx_n.weight_latents
    np.testing.assert_allclose(probe.error([ref], [run(plain, x)]), check["error_nearest"], rtol=1e-3)
    _, ctx8 = _quantized(m, 8, "gptq", x)
    assert {r["rounding"] for r in ctx8.results["quantize"]["layers"]} == {"nearest"} and not ctx8.weight_latents


def test_each_layers_own_output_error_goes_down_with_gptq(digits_test):
    """Whatever the whole-model check keeps, every rounded layer's error on the samples is below nearest's."""
    q = PassManager(["cleanup", "fold-bn", get_pass("quantize", wbits=3, abits=8, calib_data=digits_test[0][:128])]
                    ).run(load_model(DEMO), ctx := context_from_model(load_model(DEMO)))
    check_model(q)
    rows = [r for r in ctx.results["quantize"]["layers"] if r["rounding"] == "gptq"]
    assert ctx.results["quantize"]["rounding_check"]["kept"] == "gptq" and rows
    assert all(r["output_rel_error"] <= r["output_rel_error_nearest"] for r in rows), rows


def test_demo_model_w3a8_gptq_beats_nearest_and_blocks_learn_the_rounding_around_it(digits_test):
    """On the demo digits CNN at W3A8 (first/last 3) the rounding from the inputs holds accuracy where nearest
    rounding loses it; fine-tuning reads GPTQ's error-fed weights as the latent, so AdaRound has roundings to learn."""
    x, y = digits_test
    model = load_model(DEMO)
    acc = {}
    for rounding in ("gptq", "nearest"):
        q = api.optimize(model, wbits=3, abits=3, first_last_bits=3, calib="gaussian", measure=False,
                         weight_rounding=rounding)
        acc[rounding] = float((run(q, x).argmax(1) == y).mean())
    assert acc["gptq"] >= acc["nearest"], acc

    ctx = context_from_model(model)
    q = PassManager(["cleanup", "fold-bn", get_pass("snapshot", key="float"),
                     get_pass("quantize", wbits=3, first_last_bits=3, calib="gaussian")]).run(model, ctx)
    from dfc.finetune.student import float_weights_of

    floats = float_weights_of(ctx.snapshots["float"])
    floats.update({k: (w, floats[k][1]) for k, w in ctx.weight_latents.items()})
    student = Student(q, floats, rounding="adaround")
    learned = [m for m in student.tensors.values() if isinstance(m, QuantizedTensor) and m.dtype == np.int8]
    assert learned and all(m.learn_rounding for m in learned)
    plain = Student(q, float_weights_of(ctx.snapshots["float"]), rounding="adaround")
    # from the float weights, only a layer whose codes GPTQ left at nearest rounding has roundings to learn
    assert sum(getattr(m, "learn_rounding", False) for m in plain.tensors.values()) < len(learned)
