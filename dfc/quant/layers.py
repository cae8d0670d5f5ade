"""Which tensors and layers `quantize` touches (graph analysis, no edits): quantizable layers and their bit plan, the
activations a quantizer can absorb, value-preserving ops that share their input's parameters, per-channel
constant Adds."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfc.graph import ir
from dfc.graph.ops import POOLS, SHARED_PARAM_OPS, WEIGHTED
from dfc.graph.preflight import QUANTIZED_OPS

FUSABLE_ACTIVATION_PRODUCERS = WEIGHTED + ("Add",)


def find_quantized_node(graph: gs.Graph) -> gs.Node | None:
    """The first node that shows the graph is already quantized, or None."""
    return next((n for n in graph.nodes if n.op in QUANTIZED_OPS), None)


def quantizable_layers(graph: gs.Graph) -> list[gs.Node]:
    """The Conv/Gemm/MatMul nodes whose constant float weights `quantize` quantizes, in graph order."""
    return [n for n in graph.nodes if n.op in WEIGHTED and weight_axis(n) is not None]


def int_bias_form(n: gs.Node) -> bool:
    """Whether the node's bias can be an int32 DequantizeLinear (scale s_x·s_w): not a Gemm with alpha or beta."""
    return n.op != "Gemm" or (float(n.attrs.get("alpha", 1.0)) == 1.0 and float(n.attrs.get("beta", 1.0)) == 1.0)


def is_edge(n: gs.Node, weighted: list[gs.Node]) -> bool:
    return n is weighted[0] or n is weighted[-1]


def weight_bit_plan(graph: gs.Graph, wbits: int, first_last_bits: int, weighted: list[gs.Node] | None = None
                    ) -> dict[str, int]:
    """Layer name -> weight bits: `first_last_bits` for the first and last quantizable layers and for depthwise convs,
    else `wbits` (`weighted`: the graph's `quantizable_layers`, when the caller has them). A depthwise filter has
    k·k weights (9 for 3×3): at 4 bits each channel gets 15 levels for 9 weights. EfficientNet-Lite0 W4A8 (BNS): top-1
    65.6 with 4-bit depthwise filters, 76.8 with 8-bit ones, which are 4 % of its weights (README, mobile models)."""
    weighted = quantizable_layers(graph) if weighted is None else weighted
    return {n.name: (first_last_bits if is_edge(n, weighted) or is_depthwise(n) else wbits) for n in weighted}


def is_depthwise(n: gs.Node) -> bool:
    """A Conv with one input channel per group and more than one group."""
    w = ir.const_value(ir.input_at(n, 1))
    return n.op == "Conv" and int(n.attrs.get("group", 1)) > 1 and w is not None and w.shape[1] == 1


def weight_axis(n: gs.Node) -> int | None:
    """Output-channel axis of the node's constant weight, or None if it cannot be quantized."""
    w = ir.const_value(ir.input_at(n, 1))
    if w is None or w.dtype != np.float32 or not isinstance(n.inputs[0], gs.Variable):
        return None
    if n.op == "Conv":
        return 0
    if n.op == "Gemm":
        if int(n.attrs.get("transA", 0)) or w.ndim != 2:
            return None
        return 0 if int(n.attrs.get("transB", 0)) else 1
    return 1 if w.ndim == 2 else None  # MatMul [in, out]


def next_to_quantized(n: gs.Node, quantized: set[int]) -> bool:
    """Whether an Add or pooling node reads from or feeds a quantized layer (through value-preserving ops): one
    between float layers would only add QuantizeLinear/DequantizeLinear transitions."""
    keeps = lambda m: m is not None and (m.op in SHARED_PARAM_OPS + ("Relu", "Clip") or ir.is_zero_pad(m))  # noqa: E731
    for t in n.inputs:
        p = ir.producer(t)
        while keeps(p):
            p = ir.producer(p.inputs[0])
        if p is not None and id(p) in quantized:
            return True
    frontier = list(n.outputs)
    while frontier:
        for c in ir.consumers(frontier.pop()):
            if id(c) in quantized:
                return True
            if keeps(c):
                frontier.extend(c.outputs)
    return False


def fusable_activations(graph: gs.Graph, weighted: list[gs.Node]) -> dict[str, tuple[gs.Node, float]]:
    """producer-output name -> (activation, upper bound) for the Relu and Clip(0, hi) nodes (ReLU6) that the
    producer's output quantizer can absorb: calibrated on the activation's output, its range starts at 0, so the
    zero point is 0 and QuantizeLinear's saturation at 0 is the lower clip; the upper end of the range is capped
    at hi (inf for Relu), so the saturation at the top is at or below the upper clip."""
    quantized = {id(n) for n in weighted}
    fused = {}
    for r in ir.nodes_by_op(graph, "Relu", "Clip"):
        p = ir.producer(r.inputs[0])
        if p is None or p.op not in FUSABLE_ACTIVATION_PRODUCERS:
            continue
        if p.op != "Add" and id(p) not in quantized:
            continue
        if p.op == "Add" and not all(isinstance(t, gs.Variable) for t in p.inputs):
            continue
        hi = absorbable_upper(graph, r)
        if hi is not None:
            fused[r.inputs[0].name] = (r, hi)
    return fused


def absorbable_upper(graph: gs.Graph, r: gs.Node) -> float | None:
    """The upper clip of `r` when its input's quantizer can absorb it (a Relu, or a Clip(0, hi) with hi > 0, the
    only reader of its input, not a graph output), else None."""
    bounds = (0.0, float("inf")) if r.op == "Relu" else ir.clip_bounds(r) if r.op == "Clip" else None
    if bounds is None or bounds[0] != 0.0 or not bounds[1] > 0.0 or ir.is_graph_output(graph, r.outputs[0]):
        return None
    return bounds[1] if ir.single_consumer(r.inputs[0], graph) is r else None


def constant_add(n: gs.Node) -> tuple[gs.Variable, gs.Constant] | None:
    """(activation, constant) of an Add of an activation and a float constant, else None."""
    if n.op != "Add" or len(n.inputs) != 2:
        return None
    var = [t for t in n.inputs if isinstance(t, gs.Variable)]
    const = [t for t in n.inputs if isinstance(t, gs.Constant)]
    if len(var) != 1 or len(const) != 1 or const[0].values.dtype != np.float32:
        return None
    return var[0], const[0]


def per_channel_constant(c: np.ndarray, shape: list) -> bool:
    """Whether constant `c` holds one value per channel (axis 1) of an activation of `shape`: what depth pruning
    leaves of a removed residual branch (y = S + E[f(S)], `dfc.prune.branches`). A scalar (x + 3 in a hard-swish)
    is not: its Add has no quantized consumer to fuse with."""
    if len(shape) < 2 or c.ndim > len(shape) or c.size < 2:
        return False
    padded = [1] * (len(shape) - c.ndim) + list(c.shape)  # numpy broadcasting aligns shapes on the right
    return padded[1] == shape[1] and all(d == 1 for i, d in enumerate(padded) if i != 1)


def shared_params(graph: gs.Graph, act_bits: dict[str, int]) -> dict[str, str]:
    """Output of a value-preserving op (reshapes, MaxPool, Slice, zero Pad; chains of them) -> the quantized
    tensor upstream whose parameters it reuses."""
    shared: dict[str, str] = {}
    keeps = lambda n: n is not None and (n.op in SHARED_PARAM_OPS or ir.is_zero_pad(n))  # noqa: E731
    for n in graph.nodes:
        if not keeps(n) or n.outputs[0].name not in act_bits:
            continue
        src = n.inputs[0]
        while src.name not in act_bits and keeps(ir.producer(src)):
            src = ir.producer(src).inputs[0]
        name = shared.get(src.name, src.name)
        if name in act_bits:
            shared[n.outputs[0].name] = name
            act_bits[name] = max(act_bits[name], act_bits[n.outputs[0].name])
    return shared


def activation_plan(graph: gs.Graph, weighted: list[gs.Node], layer_abits: dict, abits: int, kept_float: set):
    """(absorbed activations, tensor -> activation bits, constant Adds to quantize, tensor -> the tensor whose
    parameters it shares) of the layers in `weighted`."""
    fused = fusable_activations(graph, weighted)
    act_bits: dict[str, int] = {}

    def want(t: gs.Tensor, bits: int) -> None:
        # a graph output stays float for the user; when nodes also read it, they read its quantized copy
        if isinstance(t, gs.Constant) or (ir.is_graph_output(graph, t) and not t.outputs):
            return
        act_bits[t.name] = max(act_bits.get(t.name, 0), bits)

    def out_of(n: gs.Node) -> gs.Tensor:
        t = n.outputs[0]
        r = fused.get(t.name)
        return r[0].outputs[0] if r is not None else t

    for n in weighted:
        want(n.inputs[0], layer_abits[id(n)])
        want(out_of(n), abits)
    quantized_ids = {id(n) for n in weighted}
    for n in graph.nodes:
        if n.op in ("Add",) + POOLS and kept_float and not next_to_quantized(n, quantized_ids):
            continue
        if n.op == "Add" and all(isinstance(t, gs.Variable) for t in n.inputs):
            for t in n.inputs:
                want(t, abits)
            want(out_of(n), abits)
        elif n.op in POOLS:
            want(n.inputs[0], abits)
            want(n.outputs[0], abits)
    # an activation already quantized plus a per-channel constant: the constant is quantized too, so that ORT
    # runs a QLinearAdd (left in float, each is a DequantizeLinear -> Add -> Relu -> QuantizeLinear detour; a
    # W8A8 ResNet-56 with 18 residual branches removed ran at 0.31x fp32 that way, 0.21x with QLinearAdds). In
    # graph order, so that a chain of them (consecutive removed branches) qualifies link by link.
    const_adds = {}
    shapes = None
    for n in graph.nodes:
        pair = constant_add(n)
        if pair is None or pair[0].name not in act_bits:
            continue
        shapes = ir.static_shapes(graph) if shapes is None else shapes
        full = shapes.get(pair[0].name)  # unknown: a QLinearAdd broadcasting [1, C, 1, 1] is slower than float
        if full is None or not per_channel_constant(pair[1].values, full):
            continue
        r = ir.single_consumer(n.outputs[0], graph)
        hi = absorbable_upper(graph, r) if r is not None else None
        out = r.outputs[0] if hi is not None else n.outputs[0]
        if ir.is_graph_output(graph, out) and not out.outputs:
            continue  # a float output: no QLinearAdd to run, rounding the constant would only cost
        if hi is not None:
            fused[n.outputs[0].name] = (r, hi)
        want(out, act_bits[pair[0].name])
        const_adds[n.name] = (pair[1], [1] + full[1:])
    shared = shared_params(graph, act_bits)
    return fused, act_bits, const_adds, shared
