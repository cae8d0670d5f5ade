"""Shared fixtures: paths to ../shared (tests skip with a reason when absent), graph builders, ORT runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CIFAR_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
CIFAR_STD = np.array([0.229, 0.224, 0.225], np.float32)
DEMO = ROOT / "models" / "digits_cnn.onnx"


def shared_file(rel: str) -> Path:
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"{p} not found: real-model tests need ../shared (see ../shared/README.md)")
    return p


@pytest.fixture(scope="session")
def cifar_exact():
    from dfc.measure.validation import load_eval_data, preprocess

    images, labels = load_eval_data(shared_file("data/cifar10_test_exact_1017.npz"))
    return preprocess(images, CIFAR_MEAN, CIFAR_STD), labels


@pytest.fixture(scope="session")
def cifar_jpeg():
    from dfc.measure.validation import load_eval_data, preprocess

    images, labels = load_eval_data(shared_file("data/cifar10_test_jpeg_5000.npz"))
    return preprocess(images, CIFAR_MEAN, CIFAR_STD), labels


@pytest.fixture
def digits_bench_spec(tmp_path):
    """The demo model as a benchmark spec, its test split as both the labelled and the fidelity set."""
    from dfc.bench import ModelSpec
    from dfc.models.digits_cnn import MEAN, STD, load_digits_split

    d = load_digits_split()
    data = tmp_path / "digits.npz"
    np.savez(data, images=d["test_images"], labels=d["test_labels"])
    return ModelSpec("digits", str(DEMO), str(data), str(data), tuple(MEAN), tuple(STD))


@pytest.fixture(scope="session")
def digits_test():
    from dfc.models.digits_cnn import MEAN, STD, load_digits_split
    from dfc.measure.validation import preprocess

    d = load_digits_split()
    return preprocess(d["test_images"], np.array(MEAN, np.float32), np.array(STD, np.float32)), d["test_labels"]


def run(model: onnx.ModelProto | str, x: np.ndarray) -> np.ndarray:
    from dfc.measure.runtime import make_session

    s = make_session(model)
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def rand(shape, seed=0, scale=1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def make_model(nodes, inputs, outputs, inits: dict[str, np.ndarray], opset: int = 17) -> onnx.ModelProto:
    """A model from onnx.helper nodes; `inputs`/`outputs` are (name, shape) pairs (float32)."""
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def bn_params(prefix: str, c: int, seed: int) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    return {
        f"{prefix}_g": r.uniform(0.5, 1.5, c).astype(np.float32),
        f"{prefix}_b": r.normal(0, 0.5, c).astype(np.float32),
        f"{prefix}_m": r.normal(0, 0.5, c).astype(np.float32),
        f"{prefix}_v": r.uniform(0.5, 2.0, c).astype(np.float32),
    }


def bn_node(prefix: str, x: str, y: str):
    return helper.make_node("BatchNormalization", [x, f"{prefix}_g", f"{prefix}_b", f"{prefix}_m", f"{prefix}_v"], [y], epsilon=1e-5)


def cnn_nodes(residual: bool, convs: int = 2) -> list:
    """x -> conv1 BN Relu [-> conv2 BN, then Add(skip r1) Relu when residual, else Relu] -> GAP ->
    Flatten -> Gemm fc; initializers w1, bn1_*, w2, bn2_*, fc_w, fc_b."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        bn_node("bn1", "c1", "b1"),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
    ]
    if convs == 2:
        nodes += [helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"), bn_node("bn2", "c2", "b2")]
        if residual:
            nodes += [helper.make_node("Add", ["b2", "r1"], ["s"], name="add"), helper.make_node("Relu", ["s"], ["r2"], name="relu2")]
        else:
            nodes.append(helper.make_node("Relu", ["b2"], ["r2"], name="relu2"))
    return nodes + [
        helper.make_node("GlobalAveragePool", ["r2" if convs == 2 else "r1"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1, name="fc"),
    ]


def conv_bn_relu_cnn(seed: int = 0) -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv3x3(8) BN Relu -> Conv3x3(8) BN -> Add(skip) Relu -> GAP -> Flatten -> Gemm(4)."""
    r = np.random.default_rng(seed)
    inits = {
        "w1": r.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32),
        "w2": r.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32),
        "fc_w": r.normal(0, 0.3, (4, 8)).astype(np.float32),
        "fc_b": r.normal(0, 0.1, 4).astype(np.float32),
        **bn_params("bn1", 8, seed + 1), **bn_params("bn2", 8, seed + 2),
    }
    nodes = cnn_nodes(residual=True)
    return make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", ["N", 4])], inits)


def calibrate_bn(model, x):
    """Set every BN's running mean/var to the statistics of its input on `x`, in graph order (as
    training leaves them), so that the BN-moment model describes the network on inputs like x."""
    from dfc.measure.runtime import make_session

    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: i for i in m.graph.initializer}
    for node in [n for n in m.graph.node if n.op_type == "BatchNormalization"]:
        probe = onnx.ModelProto()
        probe.CopyFrom(m)
        probe.graph.output.append(helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None))
        sess = make_session(probe)
        a = sess.run([node.input[0]], {sess.get_inputs()[0].name: x})[0]
        axes = (0, *range(2, a.ndim))  # every axis but the channels
        for name, v in ((node.input[3], a.mean(axes)), (node.input[4], a.var(axes))):
            inits[name].CopyFrom(numpy_helper.from_array(v.astype(np.float32), name))
    return m
