import numpy as np
import onnx_graphsurgeon as gs

from conftest import conv_bn_relu_cnn
from dfc.graph import ir


def test_producer_consumers_and_constants():
    g = ir.import_graph(conv_bn_relu_cnn())
    t = g.tensors()
    r1 = t["r1"]
    assert ir.producer(r1).name == "relu1"
    assert sorted(n.name for n in ir.consumers(r1)) == ["add", "conv2"]
    assert ir.producer(g.inputs[0]) is None
    assert ir.const_value(t["w1"]).shape == (8, 3, 3, 3)
    assert ir.const_value(r1) is None
    assert ir.single_consumer(t["c1"], g).op == "BatchNormalization"
    assert ir.single_consumer(r1, g) is None
    assert ir.is_graph_output(g, t["y"])


def test_bypass_keeps_output_name_and_replace_uses():
    g = ir.import_graph(conv_bn_relu_cnn())
    flat = [n for n in g.nodes if n.name == "flatten"][0]
    ir.bypass_node(g, flat)
    gap = [n for n in g.nodes if n.name == "gap"][0]
    assert gap.outputs[0].name == "f"  # producer now writes the bypassed node's output
    assert all(n.name != "flatten" for n in g.nodes)
    new = gs.Variable("r1_copy", dtype=np.float32)
    ir.replace_uses(g, g.tensors()["r1"], new)
    assert all(n.inputs[0] is new for n in g.nodes if n.name == "conv2")


def test_infer_shapes_and_unique_name():
    g = ir.infer_shapes(ir.import_graph(conv_bn_relu_cnn()))
    assert ir.rank_of(g.tensors()["c1"]) == 4
    assert ir.unique_name(g, "w1") == "w1_1"
    assert ir.unique_name(g, "fresh") == "fresh"


def test_make_const_keeps_scalars_scalar():
    c = ir.make_const("s", np.array(0.5, np.float32))
    assert c.values.shape == ()
