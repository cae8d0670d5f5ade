"""Channel dependency analysis and surgery, one small graph per coupling rule, checked against ORT.

Oracle: removing a group changes the outputs exactly as zeroing the group's features in every
layer that reads it (its sinks) does, because an unblocked group reaches the outputs only through
its sinks. So for each rule: prune some groups, zero the same sinks in the original, compare in ORT.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import make_model, rand, run
from onnx import helper

from dfc.graph import ir
from dfc.prune.channels import ChannelAnalysis
from dfc.graph.modelio import check_model
from dfc.prune.surgery import remove_groups


def analyse(model):
    g = ir.infer_shapes(ir.import_graph(model))
    return g, ChannelAnalysis(g)


def zero_sinks(model, ids):
    """The oracle: the original with the chosen groups' features zeroed in every sink's weight."""
    g, a = analyse(model)
    for gid in ids:
        for node, _, feats in a.groups[gid].sinks:
            w = ir.const_value(node.inputs[1]).copy()
            if node.op == "Conv":
                w[:, feats] = 0
            elif node.op == "Gemm" and int(node.attrs.get("transB", 0)):
                w[:, feats] = 0
            else:
                w[feats] = 0
            node.inputs[1] = ir.make_const(node.inputs[1].name + "_z", w)
    return ir.export_model(g, like=model)


def prune_groups(model, ids):
    g, a = analyse(model)
    g = remove_groups(g, a, [a.groups[i] for i in ids])
    out = ir.export_model(g, like=model)
    check_model(out, what="pruned test model")
    return out


def group_with(a, tensor, channel):
    for grp in a.groups:
        if channel in grp.members.get(tensor, ()):
            return grp
    raise AssertionError(f"no group holds {tensor}[{channel}]")


def assert_removal_matches_oracle(model, picks, x, tol=1e-5):
    """picks: (tensor, channel) pairs naming the groups to remove."""
    _, a = analyse(model)
    ids = sorted({group_with(a, t, c).id for t, c in picks})
    assert all(not a.groups[i].blocked for i in ids), [a.groups[i].blocked for i in ids]
    pruned = prune_groups(model, ids)
    diff = np.abs(run(pruned, x) - run(zero_sinks(model, ids), x)).max()
    assert diff <= tol, diff
    return pruned, a, ids


def weights(model):
    return {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}


def w(shape, seed):
    return rand(shape, seed, 0.4)


def conv(x, wname, y, **kw):
    return helper.make_node("Conv", [x, wname], [y], pads=[1, 1, 1, 1], name=y + "_conv", **kw)


def test_conv_input_and_output_channels_are_separate():
    nodes = [conv("x", "w1", "a"), helper.make_node("Relu", ["a"], ["r"], name="relu"), conv("r", "w2", "y")]
    m = make_model(nodes, [("x", ["N", 3, 6, 6])], [("y", ["N", 5, 6, 6])], {"w1": w((8, 3, 3, 3), 1), "w2": w((5, 8, 3, 3), 2)})
    _, a = analyse(m)
    grp = group_with(a, "a", 2)
    assert grp.members == {"a": [2], "r": [2]} and not grp.residual and not grp.blocked
    assert [n.name for n, _ in grp.origins] == ["a_conv"] and [n.name for n, _, _ in grp.sinks] == ["y_conv"]
    assert group_with(a, "x", 0).blocked == ["graph input 'x'"] and "graph output 'y'" in group_with(a, "y", 0).blocked
    pruned, _, _ = assert_removal_matches_oracle(m, [("a", 2), ("a", 5)], rand((2, 3, 6, 6)))
    shapes = {n.op_type: [d.dims for d in pruned.graph.initializer] for n in pruned.graph.node}
    assert sorted(tuple(d) for d in shapes["Conv"]) == [(5, 6, 3, 3), (6, 3, 3, 3)]


def test_depthwise_conv_ties_input_and_output_channels():
    nodes = [conv("x", "w1", "a"), conv("a", "wd", "d", group=8), helper.make_node("Relu", ["d"], ["r"], name="relu"), conv("r", "w2", "y")]
    inits = {"w1": w((8, 3, 3, 3), 1), "wd": w((8, 1, 3, 3), 2), "w2": w((4, 8, 3, 3), 3)}
    m = make_model(nodes, [("x", ["N", 3, 6, 6])], [("y", ["N", 4, 6, 6])], inits)
    _, a = analyse(m)
    assert group_with(a, "a", 3).members == {"a": [3], "d": [3], "r": [3]}
    pruned, _, _ = assert_removal_matches_oracle(m, [("a", 3)], rand((2, 3, 6, 6)))
    dw = [n for n in pruned.graph.node if n.name == "d_conv"][0]
    assert helper.get_attribute_value(dw.attribute[[a.name for a in dw.attribute].index("group")]) == 7


def test_grouped_conv_blocks():
    nodes = [conv("x", "w1", "a"), conv("a", "wg", "y", group=2)]
    m = make_model(nodes, [("x", ["N", 3, 6, 6])], [("y", ["N", 4, 6, 6])], {"w1": w((8, 3, 3, 3), 1), "wg": w((4, 4, 3, 3), 2)})
    _, a = analyse(m)
    assert "is not depthwise" in group_with(a, "a", 0).blocked[0]


@pytest.mark.parametrize("act", ["Relu", "LeakyRelu", "Sigmoid", "HardSwish", "Clip", "Tanh"])
def test_bn_and_activations_join_channels(act):
    from conftest import bn_node, bn_params

    extra = {"lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}
    act_node = helper.make_node(act, ["b", "lo", "hi"] if act == "Clip" else ["b"], ["r"], name="act")
    nodes = [conv("x", "w1", "a"), bn_node("bn", "a", "b"), act_node, helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             conv("p", "w2", "y")]
    inits = {"w1": w((8, 3, 3, 3), 1), "w2": w((4, 8, 3, 3), 2), **bn_params("bn", 8, 3), **(extra if act == "Clip" else {})}
    m = make_model(nodes, [("x", ["N", 3, 6, 6])], [("y", ["N", 4, 3, 3])], inits)
    _, a = analyse(m)
    assert set(group_with(a, "a", 1).members) == {"a", "b", "r", "p"}
    pruned, _, _ = assert_removal_matches_oracle(m, [("a", 1), ("b", 6)], rand((2, 3, 6, 6)))
    bn = [n for n in pruned.graph.node if n.op_type == "BatchNormalization"][0]
    assert [tuple(weights(pruned)[i].shape) for i in bn.input[1:]] == [(6,)] * 4


def test_residual_add_joins_both_operands_and_constants_are_sliced():
    nodes = [
        conv("x", "w1", "a"), conv("x", "w2", "b"),
        helper.make_node("Mul", ["b", "scale"], ["bs"], name="mul"),
        helper.make_node("Add", ["a", "bs"], ["s"], name="add"),
        helper.make_node("Sub", ["s", "shift"], ["s2"], name="sub"),
        helper.make_node("Relu", ["s2"], ["r"], name="relu"),
        conv("r", "w3", "y"),
    ]
    inits = {"w1": w((8, 3, 3, 3), 1), "w2": w((8, 3, 3, 3), 2), "w3": w((4, 8, 3, 3), 3),
             "scale": rand((1, 8, 1, 1), 4), "shift": rand((8, 1, 1), 5)}
    m = make_model(nodes, [("x", ["N", 3, 6, 6])], [("y", ["N", 4, 6, 6])], inits)
    _, a = analyse(m)
    grp = group_with(a, "a", 4)
    assert grp.residual and set(grp.members) == {"a", "b", "bs", "s", "s2", "r"}
    assert sorted(n.name for n, _ in grp.origins) == ["a_conv", "b_conv"]
    assert_removal_matches_oracle(m, [("a", 4), ("b", 0)], rand((2, 3, 6, 6)))


def test_concat_maps_channels_with_offsets():
    nodes = [conv("x", "w1", "a"), conv("x", "w2", "b"), helper.make_node("Concat", ["a", "b"], ["c"], axis=1, name="cat"), conv("c", "w3", "y")]
    inits = {"w1": w((4, 3, 3, 3), 1), "w2": w((6, 3, 3, 3), 2), "w3": w((5, 10, 3, 3), 3)}
    m = make_model(nodes, [("x", ["N", 3, 6, 6])], [("y", ["N", 5, 6, 6])], inits)
    _, a = analyse(m)
    assert group_with(a, "b", 2).members == {"b": [2], "c": [6]}
    assert_removal_matches_oracle(m, [("b", 2), ("a", 0)], rand((2, 3, 6, 6)))


def test_flatten_maps_a_channel_to_its_hw_features():
    nodes = [conv("x", "w1", "a"), helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], axis=1, name="flat"),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1, name="fc")]
    inits = {"w1": w((4, 3, 3, 3), 1), "fc": w((3, 4 * 9), 2), "fcb": rand(3, 3)}
    m = make_model(nodes, [("x", ["N", 3, 3, 3])], [("y", ["N", 3])], inits)
    _, a = analyse(m)
    assert group_with(a, "a", 1).members["f"] == list(range(9, 18))
    pruned, _, _ = assert_removal_matches_oracle(m, [("a", 1)], rand((2, 3, 3, 3)))
    assert (3, 27) in [tuple(i.dims) for i in pruned.graph.initializer]


def test_reshape_to_features_is_a_flatten():
    nodes = [conv("x", "w1", "a"), helper.make_node("Reshape", ["a", "shape"], ["f"], name="reshape"),
             helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")]
    inits = {"w1": w((4, 3, 3, 3), 1), "shape": np.array([0, -1], np.int64), "fc": w((4 * 4, 2), 2)}
    m = make_model(nodes, [("x", ["N", 3, 2, 2])], [("y", ["N", 2])], inits)
    assert_removal_matches_oracle(m, [("a", 3)], rand((2, 3, 2, 2)))


def test_option_a_shortcut_slice_and_channel_pad():
    """x(4ch) -> Slice ::2 spatially -> Pad 2 zero channels each side -> Add with a stride-2 conv(8)."""
    nodes = [
        conv("x", "w0", "s1"), helper.make_node("Relu", ["s1"], ["r1"], name="relu1"),
        helper.make_node("Slice", ["r1", "st", "en", "ax", "sp"], ["sl"], name="slice"),
        helper.make_node("Pad", ["sl", "pads"], ["pd"], name="pad"),
        helper.make_node("Conv", ["r1", "w1"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv_s2"),
        helper.make_node("Add", ["c", "pd"], ["s2"], name="add"),
        helper.make_node("Relu", ["s2"], ["r2"], name="relu2"), conv("r2", "w2", "y"),
    ]
    inits = {"w0": w((4, 3, 3, 3), 1), "w1": w((8, 4, 3, 3), 2), "w2": w((3, 8, 3, 3), 3),
             "st": np.array([0, 0], np.int64), "en": np.array([2**62, 2**62], np.int64), "ax": np.array([2, 3], np.int64),
             "sp": np.array([2, 2], np.int64), "pads": np.array([0, 2, 0, 0, 0, 2, 0, 0], np.int64)}
    m = make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", ["N", 3, 4, 4])], inits)
    _, a = analyse(m)
    mapped = group_with(a, "r1", 1)
    assert mapped.members["pd"] == [3] and mapped.members["c"] == [3] and mapped.residual
    padded = group_with(a, "c", 0)
    assert "r1" not in padded.members and padded.pad_origins and padded.residual
    pruned, _, _ = assert_removal_matches_oracle(m, [("r1", 1), ("c", 0), ("c", 7)], rand((2, 3, 8, 8)))
    pad = [n for n in pruned.graph.node if n.op_type == "Pad"][0]
    pads = {i.name: onnx.numpy_helper.to_array(i) for i in pruned.graph.initializer}[pad.input[1]]
    assert pads.tolist() == [0, 1, 0, 0, 0, 1, 0, 0]


def test_channel_slice_maps_with_its_start():
    nodes = [conv("x", "w1", "a"), helper.make_node("Slice", ["a", "st", "en", "ax"], ["s"], name="slice"), conv("s", "w2", "y")]
    inits = {"w1": w((8, 3, 3, 3), 1), "w2": w((2, 4, 3, 3), 2), "st": np.array([2], np.int64), "en": np.array([6], np.int64),
             "ax": np.array([1], np.int64)}
    m = make_model(nodes, [("x", ["N", 3, 5, 5])], [("y", ["N", 2, 5, 5])], inits)
    _, a = analyse(m)
    assert group_with(a, "a", 3).members == {"a": [3], "s": [1]}
    assert group_with(a, "a", 0).members == {"a": [0]}  # sliced away: a group with no sink
    assert_removal_matches_oracle(m, [("a", 0), ("a", 3), ("a", 7)], rand((2, 3, 5, 5)))


def test_dense_neurons_gemm_and_matmul():
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["h2"], name="fc2"), helper.make_node("Add", ["h2", "b2"], ["h3"], name="bias2"),
             helper.make_node("Relu", ["h3"], ["r2"], name="relu2"), helper.make_node("Gemm", ["r2", "w3"], ["y"], transB=1, name="fc3")]
    inits = {"w1": w((6, 10), 1), "b1": rand(10, 2), "w2": w((10, 7), 3), "b2": rand(7, 4), "w3": w((3, 7), 5)}
    m = make_model(nodes, [("x", ["N", 6])], [("y", ["N", 3])], inits)
    assert_removal_matches_oracle(m, [("h", 2), ("h", 9), ("h2", 0)], rand((4, 6)))


def test_unknown_op_blocks_its_channels_and_names_itself():
    nodes = [conv("x", "w1", "a"), helper.make_node("Softmax", ["a"], ["s"], axis=1, name="softmax"), conv("s", "w2", "b"),
             helper.make_node("Relu", ["b"], ["y"], name="relu")]
    m = make_model(nodes, [("x", ["N", 3, 5, 5])], [("y", ["N", 4, 5, 5])], {"w1": w((8, 3, 3, 3), 1), "w2": w((4, 8, 3, 3), 2)})
    _, a = analyse(m)
    assert group_with(a, "a", 0).blocked == ["op Softmax (node 'softmax') is not known to the channel analysis"]
    assert "graph output 'y'" in group_with(a, "b", 0).blocked
    with pytest.raises(ValueError, match="refusing to remove blocked group"):
        prune_groups(m, [group_with(a, "a", 0).id])


def test_closure_check_rejects_a_partial_plan():
    from dfc.errors import DfcError

    nodes = [conv("x", "w1", "a"), helper.make_node("Relu", ["a"], ["r"], name="relu"), conv("r", "w2", "y")]
    m = make_model(nodes, [("x", ["N", 3, 4, 4])], [("y", ["N", 2, 4, 4])], {"w1": w((4, 3, 3, 3), 1), "w2": w((2, 4, 3, 3), 2)})
    _, a = analyse(m)
    keep = a.removal([group_with(a, "a", 1)])
    keep["r"] = np.arange(4)  # pretend the Relu output keeps the channel
    with pytest.raises(DfcError, match="do not close at node 'relu'"):
        a.check_closed(keep)
