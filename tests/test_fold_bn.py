import numpy as np
import pytest
from onnx import helper

from conftest import CIFAR_MEAN, bn_node, bn_params, conv_bn_relu_cnn, make_model, rand, run, shared_file
from dfc.graph.modelio import load_model
from dfc.pipeline import Context, PassManager


def _fold(m, ctx=None):
    ctx = ctx or Context()
    return PassManager(["cleanup", "fold-bn"], debug=True).run(m, ctx), ctx


def _no_bn(m):
    return all(n.op_type != "BatchNormalization" for n in m.graph.node)


def test_conv_bn_is_folded_exactly_and_stats_are_kept():
    m = conv_bn_relu_cnn()
    f, ctx = _fold(m)
    assert _no_bn(f)
    assert ctx.results["fold-bn"]["folded"]["Conv"] == 2
    x = rand((4, 3, 8, 8), seed=1, scale=2.0)
    np.testing.assert_allclose(run(f, x), run(m, x), atol=1e-4)
    assert ctx.bn_stats["b1"].source and ctx.bn_stats["b1"].eps == pytest.approx(1e-5)


def test_conv_with_bias_and_bn():
    r = np.random.default_rng(3)
    inits = {"w": r.normal(size=(6, 2, 3, 3)).astype(np.float32), "b": r.normal(size=6).astype(np.float32), **bn_params("bn", 6, 4)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), bn_node("bn", "c", "y")]
    m = make_model(nodes, [("x", ["N", 2, 5, 5])], [("y", ["N", 6, 5, 5])], inits)
    f, _ = _fold(m)
    assert _no_bn(f) and [n.op_type for n in f.graph.node] == ["Conv"]
    x = rand((2, 2, 5, 5))
    np.testing.assert_allclose(run(f, x), run(m, x), atol=1e-4)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_bn_with_alpha_beta(trans_b):
    r = np.random.default_rng(5)
    w = r.normal(size=(7, 5) if trans_b else (5, 7)).astype(np.float32)
    inits = {"w": w, "c": r.normal(size=7).astype(np.float32), **bn_params("bn", 7, 6)}
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["g"], transB=trans_b, alpha=0.7, beta=1.3), bn_node("bn", "g", "y")]
    m = make_model(nodes, [("x", ["N", 5])], [("y", ["N", 7])], inits)
    f, ctx = _fold(m)
    assert _no_bn(f) and ctx.results["fold-bn"]["folded"]["Gemm"] == 1
    x = rand((3, 5))
    np.testing.assert_allclose(run(f, x), run(m, x), atol=1e-4)


def test_matmul_bn_becomes_matmul_add():
    r = np.random.default_rng(7)
    inits = {"w": r.normal(size=(5, 4)).astype(np.float32), **bn_params("bn", 4, 8)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), bn_node("bn", "mm", "y")]
    m = make_model(nodes, [("x", ["N", 5])], [("y", ["N", 4])], inits)
    f, _ = _fold(m)
    assert [n.op_type for n in f.graph.node] == ["MatMul", "Add"]
    x = rand((3, 5))
    np.testing.assert_allclose(run(f, x), run(m, x), atol=1e-4)


def test_preactivation_bn_and_shared_conv_output_become_affine():
    """BN on a graph input (pre-activation style) and BN on a conv output that has another reader."""
    r = np.random.default_rng(9)
    inits = {"w": r.normal(size=(3, 3, 1, 1)).astype(np.float32), **bn_params("bn0", 3, 10), **bn_params("bn1", 3, 11)}
    nodes = [
        bn_node("bn0", "x", "a"),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Conv", ["r", "w"], ["c"]),
        bn_node("bn1", "c", "b"),
        helper.make_node("Add", ["b", "c"], ["y"]),
    ]
    m = make_model(nodes, [("x", ["N", 3, 4, 4])], [("y", ["N", 3, 4, 4])], inits)
    f, ctx = _fold(m)
    assert _no_bn(f) and ctx.results["fold-bn"]["folded"]["affine"] == 2
    assert set(ctx.bn_stats) == {"a", "b"}
    x = rand((2, 3, 4, 4))
    np.testing.assert_allclose(run(f, x), run(m, x), atol=1e-4)


def test_model_without_bn_passes_through_with_a_note():
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    m = make_model(nodes, [("x", ["N", 3])], [("y", ["N", 3])], {})
    f, ctx = _fold(m)
    assert [n.op_type for n in f.graph.node] == ["Relu"]
    assert any("no BatchNormalization statistics" in n for n in ctx.notes)


@pytest.mark.parametrize("name", ["resnet20_cifar10.onnx", "resnet56_cifar10.onnx"])
def test_real_resnets_fold_exactly(name, cifar_exact):
    m = load_model(shared_file(f"models/{name}"))
    f, ctx = _fold(m)
    assert _no_bn(f)
    n_bn = sum(1 for n in m.graph.node if n.op_type == "BatchNormalization")
    assert len(ctx.bn_stats) == n_bn
    x_real = cifar_exact[0][:256]
    x_rand = rand((64, 3, 32, 32), seed=2)
    for x in (x_real, x_rand):
        assert np.abs(run(f, x) - run(m, x)).max() <= 1e-4
    assert CIFAR_MEAN.shape == (3,)
