import collections

import numpy as np
import onnx
import torch

from conftest import DEMO, rand, run, shared_file
from dfc.models.cifar_resnet import CifarResNet, load_checkpoint
from dfc.models.digits_cnn import DigitsCNN
from dfc.models.export import export_keep_bn


def test_checkpoint_loads_and_matches_shared_onnx():
    m = load_checkpoint(str(shared_file("models/resnet20_cifar10.th")), 20)
    x = rand((4, 3, 32, 32))
    ref = run(str(shared_file("models/resnet20_cifar10.onnx")), x)
    np.testing.assert_allclose(m(torch.from_numpy(x)).detach().numpy(), ref, atol=1e-4)


def test_export_keeps_bn_and_writes_normalisation(tmp_path):
    model = CifarResNet(20).eval()
    path = tmp_path / "r20.onnx"
    m = export_keep_bn(model, torch.randn(1, 3, 32, 32), str(path), mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2])
    ops = collections.Counter(n.op_type for n in m.graph.node)
    assert ops["BatchNormalization"] == 19 and ops["Conv"] == 19
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["dfc.input_mean"] == "0.5,0.5,0.5"
    x = rand((2, 3, 32, 32))
    np.testing.assert_allclose(run(str(path), x), model(torch.from_numpy(x)).detach().numpy(), atol=1e-4)


def test_shipped_demo_model_is_small_valid_and_accurate(digits_test):
    assert DEMO.stat().st_size < 300_000
    m = onnx.load(str(DEMO))
    onnx.checker.check_model(m)
    assert sum(n.op_type == "BatchNormalization" for n in m.graph.node) == 3
    x, y = digits_test
    assert (run(m, x).argmax(1) == y).mean() >= 0.95
    assert sum(p.numel() for p in DigitsCNN().parameters()) < 20_000


def test_public_export_keeps_bn_restores_mode_and_dfc_reads_the_statistics(tmp_path):
    """`dfc.export` (the documented helper): BN nodes kept where torch's default would fold them, the module's
    training mode restored, the file written whole; dfc then finds BN statistics (the BNS default source)."""
    import dfc
    from dfc.api import calibration_set

    model = CifarResNet(20).train()
    path = tmp_path / "r20.onnx"
    m = dfc.export(model, torch.randn(2, 3, 32, 32), path, mean=[0.5] * 3, std=[0.25] * 3)
    assert model.training  # restored
    assert sum(n.op_type == "BatchNormalization" for n in m.graph.node) == 19
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r20.onnx"]  # no temporary file left behind
    x, info = calibration_set(str(path), calib_samples=8, inverter_steps=2)
    assert info["method"] == "bns" and x.shape == (8, 3, 32, 32)


def test_public_export_refuses_half_given_normalisation_and_missing_folder(tmp_path):
    import pytest

    import dfc
    from dfc.errors import DfcError

    with pytest.raises(DfcError, match="both mean and std"):
        dfc.export(CifarResNet(20), torch.randn(1, 3, 32, 32), tmp_path / "a.onnx", mean=[0.5] * 3)
    with pytest.raises(DfcError, match="does not exist"):
        dfc.export(CifarResNet(20), torch.randn(1, 3, 32, 32), tmp_path / "no" / "a.onnx")
