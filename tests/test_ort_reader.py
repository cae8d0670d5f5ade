"""dfc.calibration_reader: dfc's synthetic samples as an ONNX Runtime CalibrationDataReader."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CIFAR_MEAN, CIFAR_STD, conv_bn_relu_cnn, run, shared_file
from onnxruntime.quantization import CalibrationDataReader

import dfc
from dfc.bench.baselines import ort_quantize_static
from dfc.errors import DfcError
from dfc.graph.modelio import load_model
from dfc.synth.ort_reader import SampleReader


def _drain(reader) -> np.ndarray:
    out = []
    while (b := reader.get_next()) is not None:
        out.append(next(iter(b.values())))
    return np.concatenate(out)


def test_reader_yields_the_samples_optimize_calibrates_on():
    model = conv_bn_relu_cnn()
    opts = dict(calib_samples=24, inverter_steps=5)
    reader = dfc.calibration_reader(model, batch=10, **opts)
    assert isinstance(reader, CalibrationDataReader) and len(reader) == 3 and reader.info["method"] == "bns"
    x = _drain(reader)
    expected, _ = dfc.api.calibration_set(model, **opts)
    assert x.shape == (24, 3, 8, 8) and np.array_equal(x, expected)
    reader.rewind()
    assert np.array_equal(_drain(reader), x)


def test_reader_options_are_checked():
    with pytest.raises(DfcError, match="batch must be"):
        dfc.calibration_reader(conv_bn_relu_cnn(), batch=0)
    with pytest.raises(DfcError, match="--calib must be one of|unknown calibration"):
        dfc.calibration_reader(conv_bn_relu_cnn(), calib="imagenet")


def test_quantize_static_with_the_bns_reader_beats_gaussian_noise_on_resnet20(cifar_jpeg):
    """ORT quantize_static (uint8 activations, per-channel weights) calibrated with the reader: BNS samples give at
    least the agreement with fp32 that Gaussian noise gives, on 1000 JPEG images (a reduced inverter for test time;
    the full-default numbers are in the README)."""
    model = load_model(shared_file("models/resnet20_cifar10.onnx"))
    x = cifar_jpeg[0][:1000]
    ref = run(model, x).argmax(1)
    agreement = {}
    for calib in ("bns", "gaussian"):
        reader = dfc.calibration_reader(model, calib=calib, calib_samples=64, inverter_steps=60,
                                        input_mean=CIFAR_MEAN, input_std=CIFAR_STD)
        q = ort_quantize_static(model, reader)
        agreement[calib] = float((run(q, x).argmax(1) == ref).mean())
    assert agreement["bns"] >= agreement["gaussian"], agreement
    assert agreement["bns"] >= 0.95, agreement


def test_sample_reader_batches():
    r = SampleReader("x", np.zeros((5, 2), np.float32), batch=2)
    assert [len(next(iter(r.get_next().values()))) for _ in range(3)] == [2, 2, 1] and r.get_next() is None
