"""Exact graph rewrites of exporter idioms, as one mechanism: a rule is an anchor op and a function that either
rewrites the graph around one anchor node and returns True, or leaves it alone and returns False.
`apply_rules` runs every rule on every matching node until none fires (each rule shrinks or normalises the graph, so
this terminates) and counts the rewrites per rule. Rules here (each exact):

- `noop`: Identity, inference-mode Dropout → bypassed.
- `reducemean-to-gap`: ReduceMean over both spatial axes of a 4-D tensor → GlobalAveragePool (+ Flatten when
  keepdims=0), the form ONNX Runtime's quantized kernels recognise.
- `pad-into-conv`: a constant zero Pad over the spatial axes only, read by one Conv → the Conv's own `pads` (the TF
  "same" padding of EfficientNet-style exports); ORT then fuses the Conv with its quantizers.
- `batch-dim-in-reshape`: a Reshape whose target shape is computed from `Shape` (the dynamic-batch flatten of torch
  exports, `Unsqueeze(Gather(Shape(t), 0))`; Paddle's `Cast(Slice(Cast(Shape(t))))`; any form `shape_value` reads)
  → a constant shape with 0 ("copy this dim") where it takes a symbolic dim of the Reshape input at that position.
- `conv-bias-add`: Add of a Conv output and a per-output-channel constant → the Conv's bias.
- `matmul-bias-add`: a 2-D MatMul with a constant weight plus a constant bias → Gemm.
- `softmax-flatten`: the Flatten → Softmax → Reshape(Shape(x)) that onnx's version converter writes for an old
  Softmax, where the flatten changes nothing → Softmax(x).
- `hard-sigmoid`: `Clip(x + 3, 0, 6) / 6` (or `· (1/6)`) → HardSigmoid(x, α = 1/6, β = 1/2), and the HardSwish op →
  `x · HardSigmoid(x)`: the one form of hard-swish and its gate that the later passes know. ONNX Runtime runs it in
  two element-wise passes instead of four (PP-OCR's 64×16×24×96 activation: 0.54 ms vs 1.70 ms); the values agree
  to float rounding (|Δ| ≤ 1e-6 on x ∈ ±10).
Rule sets elsewhere use the same mechanism: `dfc.quant.qdq.QDQ_RULES` on the quantized graph.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from dfc.graph import ir


@dataclass(frozen=True)
class Rule:
    name: str
    ops: tuple[str, ...]  # anchor op types
    rewrite: Callable[[gs.Graph, gs.Node], bool]


def apply_rules(graph: gs.Graph, rules: list[Rule], max_rounds: int = 20, tidy: bool = True) -> dict[str, int]:
    """Run `rules` to a fixpoint; returns rule name -> rewrites made (every rule listed). `tidy`: clean up and sort
    the graph after each round that rewrote something (off where the caller keeps the node order)."""
    counts: Counter = Counter({r.name: 0 for r in rules})
    for _ in range(max_rounds):
        fired = 0
        for rule in rules:
            for node in [n for n in graph.nodes if n.op in rule.ops]:
                if node in graph.nodes and rule.rewrite(graph, node):
                    counts[rule.name] += 1
                    fired += 1
        if not fired:
            break
        if tidy:
            ir.tidy(graph)
    return dict(counts)


# ------------------------------------------------------------------ rules


def _bypass_noop(graph: gs.Graph, node: gs.Node) -> bool:
    if node.op == "Dropout":
        if len([o for o in node.outputs if o.outputs or ir.is_graph_output(graph, o)]) > 1:
            return False
        while len(node.outputs) > 1:  # graphsurgeon's lists take no slice deletion
            node.outputs.pop()
    if ir.is_graph_output(graph, node.inputs[0]) and ir.is_graph_output(graph, node.outputs[0]):
        return False
    ir.bypass_node(graph, node)
    return True


def _reduce_mean_to_gap(graph: gs.Graph, node: gs.Node) -> bool:
    if ir.rank_of(node.inputs[0]) != 4:
        return False
    axes = node.attrs.get("axes")
    if axes is None and ir.input_at(node, 1) is not None:
        axes = ir.const_value(node.inputs[1])
    if axes is None or sorted(int(a) % 4 for a in np.ravel(axes)) != [2, 3]:
        return False
    keep = int(node.attrs.get("keepdims", 1))
    x, y = node.inputs[0], node.outputs[0]
    node.inputs.clear()
    node.outputs.clear()
    graph.nodes.remove(node)
    if keep:
        graph.nodes.append(gs.Node("GlobalAveragePool", name=node.name, inputs=[x], outputs=[y]))
    else:
        pooled = gs.Variable(ir.unique_name(graph, y.name + "_gap"), dtype=y.dtype)
        graph.nodes.append(gs.Node("GlobalAveragePool", name=node.name, inputs=[x], outputs=[pooled]))
        graph.nodes.append(gs.Node("Flatten", name=node.name + "_flatten", attrs={"axis": 1}, inputs=[pooled], outputs=[y]))
    return True


def spatial_zero_pads(pad: gs.Node, rank: int) -> list[int] | None:
    """The [begins..., ends...] of a constant zero Pad over the spatial axes of a rank-`rank` tensor, or None when
    the Pad is not that (non-constant pads, negative pads, a non-zero value, batch/channel padding)."""
    if not ir.is_zero_pad(pad):
        return None
    pads = ir.const_value(ir.input_at(pad, 1)) if ir.input_at(pad, 1) is not None else pad.attrs.get("pads")
    if pads is None:
        return None
    pads = [int(p) for p in np.ravel(pads)]
    axes = list(range(rank))
    if ir.input_at(pad, 3) is not None:
        v = ir.const_value(pad.inputs[3])
        if v is None:
            return None
        axes = [int(a) % rank for a in np.ravel(v)]
    if len(pads) != 2 * len(axes):
        return None
    full = [0] * (2 * rank)
    for i, a in enumerate(axes):
        full[a], full[a + rank] = pads[i], pads[i + len(axes)]
    if any(p < 0 for p in full) or any(full[d] or full[d + rank] for d in (0, 1)):
        return None
    return full[2:rank] + full[rank + 2:]


def _pad_into_conv(graph: gs.Graph, node: gs.Node) -> bool:
    y = node.outputs[0]
    conv = ir.single_consumer(y, graph)
    if conv is None or conv.op != "Conv" or conv.inputs[0] is not y:
        return False
    if conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        return False
    w = ir.const_value(ir.input_at(conv, 1))
    rank = (w.ndim if w is not None else ir.rank_of(y) or 0)
    if rank < 3:
        return False
    extra = spatial_zero_pads(node, rank)
    if extra is None:
        return False
    k = rank - 2
    old = [int(p) for p in conv.attrs.get("pads", [0] * 2 * k)]
    conv.attrs["pads"] = [a + b for a, b in zip(old, extra)]
    conv.inputs[0] = node.inputs[0]
    node.inputs.clear()
    node.outputs.clear()
    graph.nodes.remove(node)
    return True


def shape_value(t: gs.Tensor, depth: int = 0) -> list | None:
    """The value of a 1-D shape tensor computed from `Shape` by shape arithmetic, as a list of ints and symbolic dim
    names (str), or None where it is not known: a small symbolic evaluator of Shape (start/end), Cast, Gather,
    Slice, Unsqueeze, Squeeze, Concat and Identity over constants and tensor shapes."""
    v = ir.const_value(t)
    if v is not None:
        return [int(a) for a in np.ravel(v)] if v.dtype.kind in "iu" and v.ndim <= 1 else None
    p = ir.producer(t)
    if p is None or depth > 16:
        return None
    if p.op == "Shape":
        shape = p.inputs[0].shape
        if shape is None:
            return None
        r = len(shape)
        start, end = int(p.attrs.get("start", 0)), p.attrs.get("end")
        end = r if end is None else int(end)
        dims = list(shape)[start % r if start < 0 else start: end % r if end < 0 else min(end, r)]
        return [d if isinstance(d, (int, np.integer)) and d >= 0 else (d if isinstance(d, str) else None) for d in dims]
    if p.op in ("Cast", "Identity", "Squeeze", "Unsqueeze") and p.inputs:
        return shape_value(p.inputs[0], depth + 1)
    if p.op == "Concat" and int(p.attrs.get("axis", 0)) in (0, -1):
        parts = [shape_value(i, depth + 1) for i in p.inputs]
        return None if any(q is None for q in parts) else [d for q in parts for d in q]
    src = shape_value(p.inputs[0], depth + 1) if p.inputs else None
    if src is None:
        return None
    if p.op == "Gather" and int(p.attrs.get("axis", 0)) == 0:
        idx = ir.const_value(ir.input_at(p, 1))
        return None if idx is None else [src[int(i)] for i in np.ravel(idx)]
    if p.op == "Slice":
        args = [ir.const_value(ir.input_at(p, i)) if ir.input_at(p, i) is not None else None for i in range(1, 5)]
        if args[0] is None or args[1] is None or (args[2] is not None and list(np.ravel(args[2])) not in ([0], [-1])):
            return None
        step = 1 if args[3] is None else int(np.ravel(args[3])[0])
        n = len(src)
        clamp = lambda i: max(0, min(int(i) + n if int(i) < 0 else int(i), n))  # noqa: E731
        return src[clamp(np.ravel(args[0])[0]): clamp(np.ravel(args[1])[0]): step] if step > 0 else None
    return None


def _dim(t: gs.Tensor, axis: int):
    shape = t.shape
    if shape is None or not -len(shape) <= axis < len(shape):
        return None
    return shape[axis]


def _batch_dim_in_reshape(graph: gs.Graph, node: gs.Node) -> bool:
    """A Reshape whose computed target shape is known but for symbolic dims that the input has at the same
    position → a constant shape with 0 there (Reshape's "copy this dim")."""
    if int(node.attrs.get("allowzero", 0)) or ir.const_value(node.inputs[1]) is not None:
        return False
    target = shape_value(node.inputs[1])
    if target is None or not target:
        return False
    x = node.inputs[0]
    out = []
    for i, d in enumerate(target):
        if isinstance(d, str):
            if d != _dim(x, i):
                return False
            out.append(0)
        elif d is None:
            return False
        else:
            out.append(int(d))
    node.inputs[1] = ir.make_const(ir.unique_name(graph, node.name + "_shape"), np.array(out, np.int64))
    return True


def _op_plus_constant(node: gs.Node, op: str) -> tuple[gs.Node, np.ndarray] | None:
    """(the `op` node, the constant) when the binary `node` adds a constant to the output of an `op` node."""
    if len(node.inputs) != 2:
        return None
    for i in (0, 1):
        p, c = ir.producer(node.inputs[i]), ir.const_value(node.inputs[1 - i])
        if p is not None and p.op == op and c is not None:
            return p, c
    return None


def _conv_bias_add(graph: gs.Graph, node: gs.Node) -> bool:
    """Add(Conv(x, W[, b]), c) with c one value per output channel (any broadcastable form: [C], [1, C, 1, 1],
    [C, 1, 1]) and the Conv read only by this Add → Conv(x, W, b + c) (Paddle exports the conv bias this way)."""
    pair = _op_plus_constant(node, "Conv")
    if pair is None:
        return False
    conv, c = pair
    w = ir.const_value(ir.input_at(conv, 1))
    if w is None or c.dtype != w.dtype or ir.single_consumer(conv.outputs[0], graph) is not node:
        return False
    k, rank = w.shape[0], w.ndim
    shape = [1] * (rank - c.ndim) + list(c.shape)
    if c.ndim > rank or shape[1] not in (1, k) or any(d != 1 for j, d in enumerate(shape) if j != 1):
        return False
    b = ir.const_value(ir.input_at(conv, 2))
    bias = (np.zeros(k, w.dtype) if b is None else b) + np.broadcast_to(np.ravel(c), (k,)).astype(w.dtype)
    const = ir.make_const(ir.unique_name(graph, conv.name + "_bias"), bias)
    if ir.input_at(conv, 2) is None:
        conv.inputs.append(const)
    else:
        conv.inputs[2] = const
    y = node.outputs[0]
    node.inputs.clear()
    node.outputs.clear()
    graph.nodes.remove(node)
    conv.outputs[0] = y
    return True


def _scalar(t: gs.Tensor | None) -> float | None:
    v = ir.const_value(t)
    return float(np.ravel(v)[0]) if v is not None and v.size == 1 and v.dtype.kind == "f" else None


def _const_operand(node: gs.Node) -> tuple[gs.Tensor, float] | None:
    """(the variable operand, the scalar constant) of a binary node with one scalar float constant input."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if _scalar(b) is not None and not ir.is_const(a):
        return a, _scalar(b)
    if node.op in ("Add", "Mul") and _scalar(a) is not None and not ir.is_const(b):
        return b, _scalar(a)
    return None


def _relu6_of_x_plus_3(t: gs.Tensor) -> gs.Tensor | None:
    """x when `t` = Clip(x + 3, 0, 6), else None."""
    clip = ir.producer(t)
    if clip is None or clip.op != "Clip" or ir.clip_bounds(clip) != (0.0, 6.0):
        return None
    add = ir.producer(clip.inputs[0])
    if add is None or add.op != "Add" or len(ir.consumers(add.outputs[0])) != 1:
        return None
    x = _const_operand(add)
    return x[0] if x is not None and x[1] == 3.0 else None


def _divides_by_6(node: gs.Node) -> gs.Tensor | None:
    """The dividend when `node` is Div(·, 6) or Mul(·, 1/6), else None."""
    k = _const_operand(node) if node.op in ("Div", "Mul") else None
    if k is None:
        return None
    ok = np.isclose(k[1], 6.0) if node.op == "Div" else np.isclose(k[1], 1.0 / 6.0, rtol=1e-5)
    return k[0] if ok else None


def _hard_sigmoid(graph: gs.Graph, node: gs.Node) -> bool:
    """Div(Clip(x+3, 0, 6), 6) → HardSigmoid(x, 1/6, 1/2); HardSwish(x) → Mul(x, HardSigmoid(x))."""
    y = node.outputs[0]
    if node.op == "HardSwish":
        x = node.inputs[0]
    else:
        t = _divides_by_6(node)
        x = _relu6_of_x_plus_3(t) if t is not None and len(ir.consumers(t)) == 1 else None
        if x is None:
            return False
    gate = gs.Variable(ir.unique_name(graph, y.name + "_hsig"), dtype=y.dtype)
    graph.nodes.append(gs.Node("HardSigmoid", name=ir.unique_name(graph, node.name + "_hsig"),
                               attrs={"alpha": 1.0 / 6.0, "beta": 0.5}, inputs=[x],
                               outputs=[gate if node.op == "HardSwish" else y]))
    if node.op == "HardSwish":
        graph.nodes.append(gs.Node("Mul", name=ir.unique_name(graph, node.name + "_mul"), inputs=[x, gate], outputs=[y]))
    node.inputs.clear()
    node.outputs.clear()
    graph.nodes.remove(node)
    return True


def _hard_swish_scale(graph: gs.Graph, node: gs.Node) -> bool:
    """Div(Mul(x, Clip(x+3, 0, 6)), 6) → Mul(x, Div(Clip(x+3, 0, 6), 6)), which `hard-sigmoid` then rewrites."""
    m = _divides_by_6(node)
    mul = ir.producer(m) if m is not None else None
    if mul is None or mul.op != "Mul" or len(ir.consumers(m)) != 1 or len(mul.inputs) != 2:
        return False
    for i in (0, 1):
        x, c = mul.inputs[i], mul.inputs[1 - i]
        if _relu6_of_x_plus_3(c) is x and len(ir.consumers(c)) == 1:
            break
    else:
        return False
    y = node.outputs[0]
    # the scaling moves onto the gate: node reads the Clip, the Mul writes y
    node.inputs[node.inputs.index(m)] = c
    gate = gs.Variable(ir.unique_name(graph, y.name + "_gate"), dtype=y.dtype)
    node.outputs[0] = gate
    mul.inputs[0], mul.inputs[1] = x, gate
    mul.outputs[0] = y
    return True


def _softmax_flatten(graph: gs.Graph, node: gs.Node) -> bool:
    """Reshape(Softmax(Flatten(x, axis=k), axis=1), Shape(x)) with x of rank k + 1 → Softmax(x, axis=k): what
    onnx's version converter writes for a Softmax of opset < 13 (softmax over the coerced 2-D); the same values when
    the flattened part is the last axis alone."""
    sm = ir.producer(node.inputs[0])
    if sm is None or sm.op != "Softmax" or int(sm.attrs.get("axis", -1)) not in (1, -1):
        return False
    fl = ir.producer(sm.inputs[0])
    shape = ir.producer(node.inputs[1])
    if fl is None or fl.op != "Flatten" or shape is None or shape.op != "Shape" or shape.inputs[0] is not fl.inputs[0]:
        return False
    x, k, rank = fl.inputs[0], int(fl.attrs.get("axis", 1)), ir.rank_of(fl.inputs[0])
    if rank is None or k % rank != rank - 1 or len(ir.consumers(sm.outputs[0])) != 1:
        return False
    y = node.outputs[0]
    node.inputs.clear()
    node.outputs.clear()
    graph.nodes.remove(node)
    graph.nodes.append(gs.Node("Softmax", name=sm.name, attrs={"axis": rank - 1}, inputs=[x], outputs=[y]))
    sm.outputs.clear()
    graph.nodes.remove(sm)
    return True


def _matmul_bias_add(graph: gs.Graph, node: gs.Node) -> bool:
    """Add(MatMul(x, W), b) with x and W 2-D, W and b constant, b one value per output → Gemm(x, W, b) (Paddle's
    and TF's dense layer), which ONNX Runtime quantizes as one QGemm."""
    pair = _op_plus_constant(node, "MatMul")
    if pair is None:
        return False
    mm, b = pair
    w = ir.const_value(mm.inputs[1])
    if w is None or w.ndim != 2 or ir.rank_of(mm.inputs[0]) != 2 or b.dtype != w.dtype or b.size != w.shape[1]:
        return False
    if b.ndim > 2 or (b.ndim == 2 and b.shape[0] != 1) or ir.single_consumer(mm.outputs[0], graph) is not node:
        return False
    y = node.outputs[0]
    node.inputs.clear()
    node.outputs.clear()
    graph.nodes.remove(node)
    graph.nodes.append(gs.Node("Gemm", name=mm.name, inputs=[mm.inputs[0], mm.inputs[1],
                                                         ir.make_const(ir.unique_name(graph, mm.name + "_bias"), np.ravel(b).copy())],
                               outputs=[y]))
    mm.inputs.clear()
    mm.outputs.clear()
    graph.nodes.remove(mm)
    return True


def batch_free_reshape(batch: int) -> Rule:
    """The rule for a fixed-batch export worked on with a symbolic batch (`dfc.graph.signature`): a Reshape whose constant
    target starts with the export's `batch` where the input's first dim is symbolic (the batch: every other dim of
    such a graph is fixed) reads 0 ("copy this dim") there."""

    def rewrite(graph: gs.Graph, node: gs.Node) -> bool:
        target = ir.const_value(ir.input_at(node, 1))
        if target is None or target.ndim != 1 or not target.size or int(target[0]) != batch:
            return False
        if int(node.attrs.get("allowzero", 0)) or not isinstance(_dim(node.inputs[0], 0), str):
            return False
        fixed = target.astype(np.int64).copy()
        fixed[0] = 0
        node.inputs[1] = ir.make_const(ir.unique_name(graph, node.name + "_batch_free"), fixed)
        return True

    return Rule("batch-free-reshape", ("Reshape",), rewrite)


RULES = [
    Rule("noop", ("Identity", "Dropout"), _bypass_noop),
    Rule("reducemean-to-gap", ("ReduceMean",), _reduce_mean_to_gap),
    Rule("pad-into-conv", ("Pad",), _pad_into_conv),
    Rule("softmax-flatten", ("Reshape",), _softmax_flatten),
    Rule("batch-dim-in-reshape", ("Reshape",), _batch_dim_in_reshape),
    Rule("conv-bias-add", ("Add",), _conv_bias_add),
    Rule("matmul-bias-add", ("Add",), _matmul_bias_add),
    Rule("hard-swish", ("Div", "Mul"), _hard_swish_scale),
    Rule("hard-sigmoid", ("Div", "Mul", "HardSwish"), _hard_sigmoid),
]
