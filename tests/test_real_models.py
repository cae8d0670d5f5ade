"""Acceptance on the shared CIFAR-10 ResNets (skip when ../shared is absent)."""

import numpy as np
import onnx
import pytest
import torch

from conftest import CIFAR_MEAN, CIFAR_STD, rand, run, shared_file
from dfc.api import optimize_with_report
from dfc.graph.modelio import load_model

FP32_TOP1 = {"resnet20": 0.9164, "resnet56": 0.9272}


@pytest.fixture(scope="module", params=["resnet20", "resnet56"])
def w8a8(request):
    path = shared_file(f"models/{request.param}_cifar10.onnx")
    model = load_model(path)
    q, report = optimize_with_report(model, measure=False, calib="gaussian")  # BNS: test_bns_on_resnet20
    return request.param, model, q, report


def test_w8a8_default_top1_within_half_a_point(w8a8, cifar_exact):
    name, model, q, _ = w8a8
    x, y = cifar_exact
    fp, qa = (run(model, x).argmax(1) == y).mean(), (run(q, x).argmax(1) == y).mean()
    assert fp == pytest.approx(FP32_TOP1[name], abs=1e-3)
    assert qa >= fp - 0.005, (name, fp, qa)


def test_w8a8_default_agreement_on_jpeg(w8a8, cifar_jpeg):
    """Issue target is >= 99 %, not reached yet: dfc's defaults give ~97.0 % (ResNet-56) and
    ~98.2 % (ResNet-20) with Gaussian calibration (ORT's quantize_static on ResNet-56: ~98.2 %
    with 256 real images, ~95.5 % with Gaussian noise). This guards the level reached."""
    name, model, q, _ = w8a8
    x, _ = cifar_jpeg
    agree = (run(model, x).argmax(1) == run(q, x).argmax(1)).mean()
    assert agree >= 0.965, (name, agree)


def test_no_quant_is_exact_and_bn_free():
    model = load_model(shared_file("models/resnet56_cifar10.onnx"))
    f, _ = optimize_with_report(model, no_quant=True, measure=False)
    assert not any(n.op_type == "BatchNormalization" for n in f.graph.node)
    x = rand((32, 3, 32, 32), seed=5)
    assert np.abs(run(f, x) - run(model, x)).max() <= 1e-4


def test_bn_folded_export_goes_through_with_a_note(tmp_path, cifar_exact):
    from dfc.models.cifar_resnet import load_checkpoint

    net = load_checkpoint(str(shared_file("models/resnet20_cifar10.th")), 20)
    path = tmp_path / "r20_default_export.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), str(path))  # torch's default: BN folded
    m = onnx.load(str(path))
    assert not any(n.op_type == "BatchNormalization" for n in m.graph.node)
    q, report = optimize_with_report(m, measure=False, input_mean=CIFAR_MEAN, input_std=CIFAR_STD)
    assert any("no BatchNormalization statistics (no BN nodes" in n and "dfc.export" in n for n in report["notes"])
    x, y = cifar_exact
    xs = x[:1]  # the dynamo export has a fixed batch of 1
    assert run(q, xs).shape == (1, 10)
    acc = np.mean([run(q, x[i : i + 1]).argmax(1)[0] == y[i] for i in range(200)])
    assert acc >= 0.88


def test_bns_on_resnet20_beats_noise_on_j_kl_and_keeps_w8a8_top1(cifar_exact):
    """A short BNS run (64 samples, 40 steps) on ResNet-20: J_KL well below Gaussian noise's, and
    W8A8 calibrated on it within half a point of fp32. (Full-size numbers: tools/bench_calib.py.)"""
    from dfc.synth import sample_sources
    from dfc.synth.inverter import score
    from dfc.pipeline import PassManager, context_from_model

    model = load_model(shared_file("models/resnet20_cifar10.onnx"))
    q, report = optimize_with_report(model, measure=False, calib_samples=64, inverter_steps=40,
                                     input_mean=CIFAR_MEAN, input_std=CIFAR_STD)
    assert report["passes"]["quantize"]["calibration"] == "bns"
    ctx = context_from_model(model)
    folded = PassManager(["cleanup", "fold-bn"]).run(model, ctx)
    noise = sample_sources.gaussian_samples((3, 32, 32), 64, np.random.default_rng(0),
                                         ((0 - CIFAR_MEAN) / CIFAR_STD, (1 - CIFAR_MEAN) / CIFAR_STD))
    assert report["passes"]["synthesize"]["final_j_kl"] < 0.5 * score(folded, ctx.bn_stats, noise)
    x, y = cifar_exact
    assert (run(q, x).argmax(1) == y).mean() >= FP32_TOP1["resnet20"] - 0.005
