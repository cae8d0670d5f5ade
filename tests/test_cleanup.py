import collections

import numpy as np
import pytest
import torch

from conftest import make_model, rand, run, shared_file
from dfc.pipeline import PassManager
from onnx import helper

CLEAN_OPS = {"Conv", "BatchNormalization", "Relu", "Add", "Slice", "Pad", "GlobalAveragePool", "Flatten", "Gemm"}


def _ops(m):
    return collections.Counter(n.op_type for n in m.graph.node)


@pytest.mark.parametrize("name", ["resnet20_cifar10.onnx", "resnet56_cifar10.onnx"])
def test_shared_resnets_become_clean_graphs(name):
    m = __import__("dfc.modelio", fromlist=["x"]).load_model(shared_file(f"models/{name}"))
    assert {"Constant", "ConstantOfShape", "Reshape", "Cast"} <= set(_ops(m))
    c = PassManager(["cleanup"]).run(m)
    assert set(_ops(c)) <= CLEAN_OPS, _ops(c)
    x = rand((3, 3, 32, 32))
    np.testing.assert_allclose(run(c, x), run(m, x), atol=1e-5)


def test_dynamo_export_becomes_clean_graph(tmp_path):
    from dfc.models.cifar_resnet import CifarResNet

    model = CifarResNet(20).eval()
    x = torch.randn(2, 3, 32, 32)
    path = tmp_path / "r20_dynamo.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True)  # torch's default exporter (BN folded)
    import onnx

    m = onnx.load(str(path))
    c = PassManager(["cleanup"]).run(m)
    assert set(_ops(c)) <= CLEAN_OPS - {"BatchNormalization"}, _ops(c)
    np.testing.assert_allclose(run(c, x.numpy()), model(x).detach().numpy(), atol=1e-4)


def test_reducemean_becomes_gap_and_identity_is_removed():
    nodes = [
        helper.make_node("Identity", ["x"], ["i"]),
        helper.make_node("Relu", ["i"], ["r"]),
        helper.make_node("ReduceMean", ["r"], ["y"], axes=[2, 3], keepdims=0),
    ]
    m = make_model(nodes, [("x", ["N", 4, 5, 5])], [("y", ["N", 4])], {}, opset=17)
    c = PassManager(["cleanup"]).run(m)
    assert _ops(c) == {"Relu": 1, "GlobalAveragePool": 1, "Flatten": 1}
    x = rand((2, 4, 5, 5))
    np.testing.assert_allclose(run(c, x), run(m, x), atol=1e-6)


def test_reducemean_with_axes_input_opset18():
    import onnx

    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=1)]
    m = make_model(nodes, [("x", ["N", 4, 5, 5])], [("y", ["N", 4, 1, 1])], {"axes": np.array([2, 3], np.int64)}, opset=18)
    c = PassManager(["cleanup"]).run(m)
    assert [n.op_type for n in c.graph.node] == ["GlobalAveragePool"]
    onnx.checker.check_model(c)
