"""The torch executor matches ONNX Runtime (1e-4) on the shared ResNets, the demo model and small
graphs covering every supported op; unsupported ops are named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DEMO, conv_bn_relu_cnn, make_model, rand, run, shared_file
from onnx import helper

from dfc.errors import DfcError
from dfc.graph.modelio import load_model
from dfc.pipeline import Context, PassManager
from dfc.synth.torch_exec import TorchGraph


def torch_run(model, x, watch=()):
    with torch.no_grad():
        outs, watched = TorchGraph(model, watch=watch)(torch.from_numpy(x))
    return outs[0].numpy(), {k: v.numpy() for k, v in watched.items()}


@pytest.mark.parametrize("name", ["resnet20", "resnet56"])
@pytest.mark.parametrize("passes", [["cleanup"], ["cleanup", "fold-bn"]])
def test_matches_ort_on_real_resnets(name, passes, cifar_exact):
    model = PassManager(passes).run(load_model(shared_file(f"models/{name}_cifar10.onnx")), Context())
    x = cifar_exact[0][:32]
    assert np.abs(torch_run(model, x)[0] - run(model, x)).max() <= 1e-4


def test_matches_ort_on_the_demo_model(digits_test):
    model = PassManager(["cleanup"]).run(load_model(DEMO), Context())
    x = digits_test[0][:64]
    assert np.abs(torch_run(model, x)[0] - run(model, x)).max() <= 1e-4


def test_watched_tensors_are_the_intermediate_values():
    model = conv_bn_relu_cnn()
    x = rand((4, 3, 8, 8))
    y, watched = torch_run(model, x, watch=["b1"])
    assert watched["b1"].shape == (4, 8, 8, 8) and np.abs(y - run(model, x)).max() <= 1e-4


def _op_model():
    """One graph with the remaining ops: grouped/depthwise Conv with asymmetric pads, Clip,
    LeakyRelu, Sigmoid, HardSigmoid, HardSwish, Sub/Mul/Div, MaxPool, AveragePool, Concat, Pad,
    Slice, Transpose, Squeeze/Unsqueeze, ReduceMean, Reshape, MatMul, Softmax."""
    r = np.random.default_rng(0)
    inits = {
        "wd": r.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32),
        "wg": r.normal(0, 0.5, (4, 2, 3, 3)).astype(np.float32),
        "k": np.float32(0.5), "lo": np.float32(-0.5), "hi": np.float32(0.8),
        "pads": np.array([0, 0, 1, 0, 0, 0, 0, 1], np.int64),
        "st": np.array([0, 1], np.int64), "en": np.array([3, 7], np.int64), "ax": np.array([1, 2], np.int64),
        "sq": np.array([2], np.int64), "shape": np.array([0, -1], np.int64),
        "wm": r.normal(0, 0.3, (12, 5)).astype(np.float32),
    }
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "wd"], ["a"], group=4, pads=[1, 0, 1, 2], name="dw"),
        n("Conv", ["a", "wg"], ["b"], group=2, pads=[1, 1, 1, 1], strides=[2, 1], name="grouped"),
        n("Clip", ["b", "lo", "hi"], ["c"], name="clip"),
        n("LeakyRelu", ["b"], ["d"], alpha=0.2, name="leaky"),
        n("Sigmoid", ["c"], ["e"], name="sig"),
        n("HardSigmoid", ["d"], ["f"], alpha=0.3, beta=0.4, name="hsig"),
        n("HardSwish", ["d"], ["g"], name="hswish"),
        n("Sub", ["e", "f"], ["h"], name="sub"),
        n("Mul", ["h", "g"], ["i"], name="mul"),
        n("Div", ["i", "k"], ["j"], name="div"),
        n("MaxPool", ["j"], ["mp"], kernel_shape=[2, 2], strides=[1, 1], name="maxpool"),
        n("AveragePool", ["j"], ["ap"], kernel_shape=[2, 2], strides=[1, 1], name="avgpool"),
        n("Concat", ["mp", "ap"], ["cat"], axis=1, name="concat"),
        n("Pad", ["cat", "pads"], ["pad"], mode="constant", name="pad"),
        n("Slice", ["pad", "st", "en", "ax"], ["sl"], name="slice"),
        n("Transpose", ["sl"], ["tr"], perm=[0, 2, 3, 1], name="transpose"),
        n("ReduceMean", ["tr"], ["rm"], axes=[2], keepdims=1, name="reducemean"),
        n("Squeeze", ["rm", "sq"], ["sqz"], name="squeeze"),
        n("Reshape", ["sqz", "shape"], ["flat"], name="reshape"),
        n("MatMul", ["flat", "wm"], ["mm"], name="matmul"),
        n("Softmax", ["mm"], ["y"], axis=-1, name="softmax"),
    ]
    return make_model(nodes, [("x", [2, 4, 9, 7])], [("y", [2, 5])], inits)


def test_matches_ort_on_every_other_supported_op():
    model = _op_model()
    x = rand((2, 4, 9, 7), seed=3)
    assert np.abs(torch_run(model, x)[0] - run(model, x)).max() <= 1e-5


def test_gradients_reach_the_input():
    net = TorchGraph(conv_bn_relu_cnn())
    x = torch.from_numpy(rand((2, 3, 8, 8))).requires_grad_(True)
    net(x)[0][0].sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_unsupported_op_names_the_node():
    m = make_model([helper.make_node("Erf", ["x"], ["y"], name="my_erf")], [("x", [1, 3])], [("y", [1, 3])], {})
    with pytest.raises(DfcError, match="Erf.*my_erf"):
        TorchGraph(m)
