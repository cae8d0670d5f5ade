"""The BNS inverter: J_KL, augmentation, generation (lower J_KL than noise, within the input
range, deterministic), the `synthesize` → `quantize` hook, --save-calib/--calib-data and bns-score."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DEMO, calibrate_bn, conv_bn_relu_cnn, make_model, rand

from dfc.api import optimize_with_report
from dfc.cli import main
from dfc.errors import DfcError
from dfc.synth.inverter import Inverter, InverterConfig, augment, kl_to_target, score
from dfc.graph.modelio import load_model
from dfc.pipeline import PassManager, context_from_model

FAST = dict(samples=16, batch=16, steps=15)


def test_kl_is_zero_at_the_target_and_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(4096, 3, 4, 4, generator=g)
    mu = y.mean(dim=(0, 2, 3))
    sd = y.var(dim=(0, 2, 3), unbiased=False).sqrt()
    assert float(kl_to_target(y, mu, sd, torch.ones(3, dtype=torch.bool))) == pytest.approx(0.0, abs=1e-6)
    # KL(N(1, 2²) ‖ N(μ̃, σ̃²)) for y ~ N(0, 1): log(1/2) + (4 + 1)/2 − 1/2 ≈ 1.307 (per channel)
    kl = float(kl_to_target(y, torch.ones(3), 2 * torch.ones(3), torch.ones(3, dtype=torch.bool)))
    expected = float(np.mean([np.log(s / 2) + (4 + (1 - m) ** 2) / (2 * s ** 2) - 0.5 for m, s in zip(mu.numpy(), sd.numpy())]))
    assert kl == pytest.approx(expected, rel=1e-5)


def test_augment_duplicates_and_keeps_shape():
    x = torch.randn(3, 3, 8, 8)
    out = augment(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == (6, 3, 8, 8) and not torch.equal(out[:3], x)


def _folded(model, mean=None, std=None):
    ctx = context_from_model(model)
    if mean is not None:
        ctx.input_mean, ctx.input_std = mean, std
    return PassManager(["cleanup", "fold-bn"]).run(model, ctx), ctx


def test_bns_samples_match_the_bn_statistics_better_than_noise_and_stay_in_range():
    mean, std = np.array([0.5] * 3, np.float32), np.array([0.25] * 3, np.float32)
    lo, hi = (0 - mean) / std, (1 - mean) / std
    real_like = np.clip(rand((256, 3, 8, 8), seed=5), lo.reshape(1, -1, 1, 1), hi.reshape(1, -1, 1, 1))
    folded, ctx = _folded(calibrate_bn(conv_bn_relu_cnn(), real_like), mean, std)
    inv = Inverter(folded, ctx.bn_stats, (lo, hi), InverterConfig(**{**FAST, "steps": 30}))
    x = inv.generate(progress=False)
    noise = np.clip(3 * rand((16, 3, 8, 8), seed=1), lo.reshape(1, -1, 1, 1), hi.reshape(1, -1, 1, 1))
    assert x.shape == (16, 3, 8, 8)
    assert x.min() >= lo.min() - 1e-6 and x.max() <= hi.max() + 1e-6
    assert score(folded, ctx.bn_stats, x) < 0.5 * score(folded, ctx.bn_stats, noise)


@pytest.mark.parametrize("method", ["inception", "bns+inception"])
def test_inception_methods_run_and_are_deterministic(method):
    folded, ctx = _folded(conv_bn_relu_cnn())
    cfg = InverterConfig(method=method, samples=8, batch=8, steps=3)
    a = Inverter(folded, ctx.bn_stats, None, cfg).generate(progress=False)
    b = Inverter(folded, ctx.bn_stats, None, cfg).generate(progress=False)
    assert np.array_equal(a, b)


def test_bns_without_bn_statistics_is_a_clear_error_and_the_default_falls_back():
    from onnx import helper

    r = np.random.default_rng(0)
    m = make_model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["y"])],
                   [("x", ["N", 3, 6, 6])], [("y", ["N", 4, 4, 4])], {"w": r.normal(size=(4, 3, 3, 3)).astype(np.float32)})
    with pytest.raises(DfcError, match="BatchNorm statistics"):
        optimize_with_report(m, calib="bns", measure=False)
    _, rep = optimize_with_report(m, measure=False)
    assert rep["passes"]["quantize"]["calibration"] == "pink"  # no BN statistics, no class output: pink noise
    assert any("pink noise" in n and "dfc.export" in n for n in rep["notes"])


def test_pipeline_calibrates_on_bns_by_default_and_reports_it():
    _, rep = optimize_with_report(conv_bn_relu_cnn(), measure=False, calib_samples=16, inverter_steps=10)
    assert rep["passes"]["quantize"]["calibration"] == "bns"
    syn = rep["passes"]["synthesize"]
    assert syn["samples"] == 16 and syn["final_j_kl"] > 0 and syn["samples_per_second"] > 0


def test_without_normalisation_samples_are_clamped_to_the_assumed_box(tmp_path):
    # free BNS samples grow tails far beyond the data's (±6 on ResNet-20) and widen the input's quantization range
    from dfc.api import calibration_set
    from dfc.pipeline import ASSUMED_INPUT_SIGMAS

    folded, ctx = _folded(conv_bn_relu_cnn())
    free = Inverter(folded, ctx.bn_stats, None, InverterConfig(**FAST)).generate(progress=False)
    assert np.abs(free).max() > ASSUMED_INPUT_SIGMAS  # the clamp has something to do on this model
    for calib in ("bns", "gaussian"):
        x, _ = calibration_set(conv_bn_relu_cnn(), calib=calib, calib_samples=16, inverter_steps=15)
        assert np.abs(x).max() <= ASSUMED_INPUT_SIGMAS + 1e-6 and np.abs(x).max() > 0.9 * ASSUMED_INPUT_SIGMAS
    _, rep = optimize_with_report(conv_bn_relu_cnn(), measure=False, calib_samples=16, inverter_steps=15)
    assert any("samples are clamped to ±2.5" in n for n in rep["notes"])


def test_save_calib_then_calib_data_reproduces_the_model(tmp_path):
    src = tmp_path / "m.onnx"
    import onnx

    onnx.save(conv_bn_relu_cnn(), src)
    a, b, c = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "s.npz"
    common = ["-q", "--no-measure", "--calib-samples", "16", "--inverter-steps", "5"]
    assert main(["optimize", str(src), "-o", str(a), "--save-calib", str(c), *common]) == 0
    assert main(["optimize", str(src), "-o", str(b), "--calib-data", str(c), *common]) == 0
    # the same graph, byte for byte; only the metadata says where the calibration came from
    assert onnx.load(a).graph.SerializeToString() == onnx.load(b).graph.SerializeToString()
    assert main(["bns-score", str(src), "--data", str(c)]) == 0


def test_bns_score_of_real_digits_is_below_noise(tmp_path, capsys, digits_test):
    x, _ = digits_test
    real, noise = tmp_path / "real.npz", tmp_path / "noise.npz"
    np.savez(real, x=x)
    np.savez(noise, x=rand(x.shape, seed=2))
    vals = []
    for f in (real, noise):
        assert main(["bns-score", str(DEMO), "--data", str(f), "--json"]) == 0
        import json

        vals.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["j_kl"])
    assert vals[0] < vals[1]


def test_bad_calibration_options_exit_2(tmp_path):
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(DEMO), "-o", str(out), "-q", "--inverter-steps", "0"]) == 2
    assert main(["optimize", str(DEMO), "-o", str(out), "-q", "--calib-data", str(tmp_path / "missing.npz")]) == 2
    if not torch.cuda.is_available():
        assert main(["optimize", str(DEMO), "-o", str(out), "-q", "--device", "cuda"]) == 2
    assert not out.exists()
