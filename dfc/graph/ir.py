"""Graph IR helpers on onnx-graphsurgeon, in one place.

Passes work on `gs.Graph`. These helpers answer the questions every pass asks: who produces a
tensor, who consumes it, is it a constant (and what is its value), and they do the edits every
pass needs: bypass or remove a node, make constants, cleanup + toposort, shape inference.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from dfc.graph.ops import WEIGHTED

MIN_OPSET = 11

# ------------------------------------------------------------------ conversion


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """ModelProto -> gs.Graph (the model's metadata is carried by the pass context, not here)."""
    return gs.import_onnx(model)


def export_model(graph: gs.Graph, like: onnx.ModelProto | None = None, metadata: dict | None = None) -> onnx.ModelProto:
    """gs.Graph -> ModelProto, keeping ir_version/producer of `like` and writing `metadata`."""
    kwargs = {}
    if like is not None:
        kwargs["ir_version"] = like.ir_version
    model = gs.export_onnx(graph, **kwargs)
    if like is not None:
        model.producer_name = like.producer_name
        model.producer_version = like.producer_version
        model.model_version = like.model_version
        model.doc_string = like.doc_string
    del model.metadata_props[:]
    for k in sorted(metadata or {}):
        prop = model.metadata_props.add()
        prop.key, prop.value = k, metadata[k]
    return model


def default_opset(graph: gs.Graph) -> int:
    return int(graph.opset)


# ------------------------------------------------------------------ queries


def producer(t: gs.Tensor) -> gs.Node | None:
    """The node that writes tensor `t`, or None for graph inputs and constants."""
    return t.inputs[0] if t.inputs else None


def consumers(t: gs.Tensor) -> list[gs.Node]:
    """Nodes that read tensor `t` (a node reading it twice appears once)."""
    seen, out = set(), []
    for n in t.outputs:
        if id(n) not in seen:
            seen.add(id(n))
            out.append(n)
    return out


def is_graph_output(graph: gs.Graph, t: gs.Tensor) -> bool:
    return any(o is t for o in graph.outputs)


def is_const(t: gs.Tensor | None) -> bool:
    return isinstance(t, gs.Constant)


def const_value(t: gs.Tensor | None) -> np.ndarray | None:
    """The numpy value of a constant tensor (an initializer or a Constant node's output), else None."""
    if isinstance(t, gs.Constant):
        return np.asarray(t.values)
    if isinstance(t, gs.Variable) and t.inputs and t.inputs[0].op == "Constant":
        v = t.inputs[0].attrs.get("value")
        if isinstance(v, gs.Constant):
            return np.asarray(v.values)
    return None


def input_at(node: gs.Node, i: int) -> gs.Tensor | None:
    """The i-th input of `node`, None when absent or the empty optional name."""
    if i >= len(node.inputs):
        return None
    t = node.inputs[i]
    if t is None or (isinstance(t, gs.Variable) and t.name == "" and not t.inputs):
        return None
    return t


def single_consumer(t: gs.Tensor, graph: gs.Graph) -> gs.Node | None:
    """The one consumer of `t`, or None when it has several or is a graph output."""
    c = consumers(t)
    if len(c) != 1 or is_graph_output(graph, t):
        return None
    return c[0]


def nodes_by_op(graph: gs.Graph, *ops: str) -> list[gs.Node]:
    return [n for n in graph.nodes if n.op in ops]


# ------------------------------------------------------------------ edits


def make_const(name: str, value: np.ndarray) -> gs.Constant:
    value = np.asarray(value)
    return gs.Constant(name, value if value.flags.c_contiguous else value.copy(order="C"))


def unique_name(graph: gs.Graph, base: str) -> str:
    """A tensor name not yet used in `graph`."""
    taken = graph.tensors().keys()
    if base not in taken:
        return base
    i = 1
    while f"{base}_{i}" in taken:
        i += 1
    return f"{base}_{i}"


def replace_uses(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor, skip: gs.Node | None = None,
                 nodes_only: bool = False) -> None:
    """Make every reader of `old` (nodes, and graph outputs unless `nodes_only`) read `new` instead; `skip` keeps
    its input."""
    for n in list(old.outputs):
        if n is skip:
            continue
        for i, t in enumerate(n.inputs):
            if t is old:
                n.inputs[i] = new
    if not nodes_only:
        graph.outputs = [new if o is old else o for o in graph.outputs]


def weight_rows(node: gs.Node, w: np.ndarray) -> np.ndarray:
    """The weight as [output channels, inputs per output]: Conv flattened per filter, Gemm as stored with transB,
    else transposed (MatMul / Gemm without transB store [in, out])."""
    if node.op == "Conv":
        return w.reshape(w.shape[0], -1)
    return w if node.op == "Gemm" and int(node.attrs.get("transB", 0)) else w.T


def is_zero_pad(n: gs.Node) -> bool:
    """A Pad in constant mode with value 0 (or none given)."""
    if n.op != "Pad" or n.attrs.get("mode", "constant") not in ("constant", b"constant"):
        return False
    v = const_value(input_at(n, 2))
    return v is None or not np.any(v)


def clip_bounds(n: gs.Node) -> tuple[float, float] | None:
    """(min, max) of a Clip node (inputs from opset 11, attributes before; ±inf when absent), None when a bound
    is not a constant."""
    out = []
    for i, attr, default in ((1, "min", -np.inf), (2, "max", np.inf)):
        t = input_at(n, i)
        if t is not None:
            v = const_value(t)
            if v is None:
                return None
            out.append(float(np.ravel(v)[0]))
        else:
            out.append(float(n.attrs.get(attr, default)))
    return out[0], out[1]


def bypass_node(graph: gs.Graph, node: gs.Node) -> None:
    """Remove a one-in/one-out node, rewiring so that its producer writes the node's output tensor.

    The output tensor keeps its name (it may be a graph output or carry metadata keys); the node's
    input tensor is dropped. Requires the input to be produced by a node whose output feeds only
    `node`; otherwise consumers are rewired to the input tensor instead. Only the node is removed;
    tensors left unused go at the next `tidy` (the pass manager tidies after every pass).
    """
    src, dst = node.inputs[0], node.outputs[0]
    prod = producer(src)
    if prod is not None and len(consumers(src)) == 1 and not is_graph_output(graph, src):
        idx = [i for i, t in enumerate(prod.outputs) if t is src][0]
        node.inputs.clear()
        node.outputs.clear()
        prod.outputs[idx] = dst
    else:
        node.inputs.clear()
        node.outputs.clear()
        replace_uses(graph, dst, src)
    graph.nodes.remove(node)


def tidy(graph: gs.Graph) -> gs.Graph:
    """Drop dead nodes and tensors, then sort nodes topologically."""
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return graph


def infer_shapes(graph: gs.Graph) -> gs.Graph:
    """Round-trip through ONNX shape inference so every Variable gets a shape/dtype where knowable."""
    model = gs.export_onnx(graph)
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # shape inference is best effort; passes that need a shape check for None
        pass
    return gs.import_onnx(model)


def static_shapes(graph: gs.Graph) -> dict[str, list[int]]:
    """Tensor name -> shape, for the tensors whose dimensions ONNX shape inference knows beyond the batch (the first
    dimension is kept as it is, a number or a name)."""
    shapes = {}
    for t in infer_shapes(graph).tensors().values():
        shape = getattr(t, "shape", None)
        if isinstance(t, gs.Variable) and shape and all(isinstance(d, (int, np.integer)) and d > 0 for d in shape[1:]):
            shapes[t.name] = list(shape)
    return shapes


def rank_of(t: gs.Tensor) -> int | None:
    shape = getattr(t, "shape", None)
    return None if shape is None else len(shape)


def weighted_nodes(graph: gs.Graph) -> list[gs.Node]:
    """Conv / Gemm / MatMul nodes whose weight (input 1) is a constant, in topological order."""
    return [n for n in graph.nodes if n.op in WEIGHTED and const_value(input_at(n, 1)) is not None]


def count_params(graph: gs.Graph) -> int:
    """Elements of all float/int weight initializers (quantization scales and zero points excluded)."""
    total = 0
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and t.values.size > 1 and not _is_qparam(t):
            total += int(t.values.size)
    return total


def _is_qparam(t: gs.Constant) -> bool:
    for n in t.outputs:
        if n.op in ("QuantizeLinear", "DequantizeLinear") and (len(n.inputs) > 1 and (n.inputs[1] is t or (len(n.inputs) > 2 and n.inputs[2] is t))):
            return True
    return False
