"""Models without BatchNorm statistics (BN folded at export, issue 29): the default synthetic source, pink noise, the
channel moments pruning measures instead, and the one note that says how to keep BN."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import conv_bn_relu_cnn, run
from dfc.synth import sample_sources
from dfc.api import optimize, optimize_with_report
from dfc.report import summary_table

FAST = {"calib_samples": 32, "inverter_steps": 5}


def _folded(seed: int = 0):
    """conv_bn_relu_cnn with its BNs folded and no dfc metadata: what torch's default export hands us."""
    m = optimize(conv_bn_relu_cnn(seed), no_quant=True)
    del m.metadata_props[:]
    assert not any(n.op_type == "BatchNormalization" for n in m.graph.node)
    return m


def test_pink_noise_has_a_one_over_f_spectrum_and_the_input_moments():
    x = sample_sources.pink_samples((3, 32, 32), 64, np.random.default_rng(0))
    assert x.dtype == np.float32 and x.shape == (64, 3, 32, 32)
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1.0, atol=1e-4)
    power = (np.abs(np.fft.fft2(x)) ** 2).mean(axis=(0, 1))
    low, high = power[1, 1], power[16, 16]  # |f| = 1/32·√2 and 1/2·√2: amplitude ∝ 1/f gives power ratio 16² = 256
    assert 100 < low / high < 600
    white = np.random.default_rng(0).standard_normal((64, 3, 32, 32))
    p_white = (np.abs(np.fft.fft2(white)) ** 2).mean(axis=(0, 1))
    assert p_white[1, 1] / p_white[16, 16] < 2
    lo, hi = np.full(3, -0.5, np.float32), np.full(3, 0.5, np.float32)
    clamped = sample_sources.pink_samples((3, 8, 8), 4, np.random.default_rng(1), (lo, hi))
    assert clamped.min() >= -0.5 and clamped.max() <= 0.5
    assert sample_sources.pink_samples((10,), 4, np.random.default_rng(0)).shape == (4, 10)  # no image: Gaussian


def test_default_source_follows_the_graph():
    assert sample_sources.best_available_method(True) == "bns"
    assert sample_sources.best_available_method(False, classifier=True) == "inception"
    assert sample_sources.best_available_method(False, classifier=False) == "pink"
    assert sample_sources.is_classifier(_folded())  # [N, 4]
    det = _folded()
    det.graph.output[0].type.tensor_type.shape.dim.add().dim_value = 1  # [N, 4, 1]: not a class vector
    assert not sample_sources.is_classifier(det)


def test_bn_less_quantization_synthesizes_by_inception_and_says_how_to_keep_bn():
    q, report = optimize_with_report(_folded(), measure=False, **FAST)
    assert report["passes"]["synthesize"]["method"] == "inception"
    hints = [n for n in report["notes"] if "dfc.export" in n]
    assert len(hints) == 1 and "no BatchNormalization statistics" in hints[0] and "PRESERVE" in hints[0]
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)


def test_estimated_moments_are_the_measured_ones_and_stay_out_of_the_metadata():
    from dfc.graph.bn_stats import ESTIMATED, METADATA_KEY
    from dfc.pipeline import PassManager, context_from_model

    model = _folded()
    ctx = context_from_model(model)
    x = np.random.default_rng(3).standard_normal((64, 3, 8, 8)).astype(np.float32)
    ctx.calibration, ctx.calibration_source = x, "test"
    out = PassManager(["cleanup", "fold-bn", "estimate-moments"]).run(model, ctx)
    convs = [n.output[0] for n in out.graph.node if n.op_type in ("Conv", "Gemm")]
    assert set(ctx.bn_stats) == set(convs) and all(s.source == ESTIMATED for s in ctx.bn_stats.values())
    name = convs[0]
    from dfc.measure.channel_stats import exposing_session
    from dfc.measure.runtime import run_batched

    a = run_batched(exposing_session(out, [name]), x, outputs=[name])[0]
    mean, std = ctx.bn_stats[name].output_mean_std()
    np.testing.assert_allclose(mean, a.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(std, a.std(axis=(0, 2, 3)), rtol=1e-3, atol=1e-5)
    assert METADATA_KEY not in {p.key for p in out.metadata_props}


def test_bn_less_pruning_compensates_with_measured_moments_better_than_without():
    """--prune on a BN-folded graph: samples are synthesized for the probe and moments (also with --no-quant), UDFC's
    BN-moment loss runs on the measured moments, and the result is closer to the model than plain removal."""
    model = _folded(seed=4)
    x = np.random.default_rng(9).standard_normal((128, 3, 8, 8)).astype(np.float32)
    ref = run(model, x)
    pruned, report = optimize_with_report(model, prune=0.25, prune_scope="all", no_quant=True, measure=False,
                                          channel_multiple=1, **FAST)
    assert report["passes"]["estimate-moments"]["source"] == "inception"
    plain = optimize(model, prune=0.25, prune_scope="all", no_quant=True, compensate="none", channel_multiple=1, **FAST)
    err = lambda m: float(np.mean((run(m, x) - ref) ** 2))  # noqa: E731
    assert err(pruned) < err(plain)
    assert sum("dfc.export" in n for n in report["notes"]) == 1


@pytest.mark.parametrize("calib", ["pink", "gaussian"])
def test_noise_sources_need_no_synthesis(calib):
    _, report = optimize_with_report(_folded(), measure=False, calib=calib, calib_samples=16)
    assert "synthesize" not in report["passes"] and report["passes"]["quantize"]["calibration"] == calib


def test_the_disagreement_pool_is_off_unless_asked_for_and_then_reported():
    opts = dict(FAST, wbits=4, abits=4, finetune="kd", finetune_steps=4, finetune_batch=8, measure=False)
    folded = optimize_with_report(_folded(), **opts)[1]
    assert folded["passes"]["finetune"]["disagreement"] == 0.0
    assert "disagreement pool" not in summary_table(folded)
    asked = optimize_with_report(_folded(), **opts, finetune_disagreement=0.25)[1]
    assert asked["passes"]["finetune"]["disagreement"] == 0.25
    assert "0.25 of each batch from the disagreement pool" in summary_table(asked)
