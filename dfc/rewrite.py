"""Exact graph rewrites of exporter idioms, as one mechanism: a rule is an anchor op and a function that either
rewrites the graph around one anchor node and returns True, or leaves it alone and returns False.
`apply_rules` runs every rule on every matching node until none fires (each rule shrinks or normalises the graph, so
this terminates) and counts the rewrites per rule. Rules here (each exact):

- `noop`: Identity, inference-mode Dropout → bypassed.
- `reducemean-to-gap`: ReduceMean over both spatial axes of a 4-D tensor → GlobalAveragePool (+ Flatten when
  keepdims=0), the form ONNX Runtime's quantized kernels recognise.
- `pad-into-conv`: a constant zero Pad over the spatial axes only, read by one Conv → the Conv's own `pads` (the TF
  "same" padding of EfficientNet-style exports); ORT then fuses the Conv with its quantizers.
- `batch-dim-in-reshape`: a Reshape whose target shape is a Concat of `Unsqueeze(Gather(Shape(t), k))` and constants
  (the dynamic-batch flatten of torch exports) → a constant shape with 0 ("copy this dim") where the gathered dim is
  the same symbolic dim as the Reshape input's at that position.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from dfc import ir


@dataclass(frozen=True)
class Rule:
    name: str
    ops: tuple[str, ...]  # anchor op types
    rewrite: Callable[[gs.Graph, gs.Node], bool]


def apply_rules(graph: gs.Graph, rules: list[Rule], max_rounds: int = 20) -> dict[str, int]:
    """Run `rules` to a fixpoint; returns rule name -> rewrites made (every rule listed)."""
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


def _gathered_dim(t: gs.Tensor) -> tuple[gs.Tensor, int] | None:
    """(tensor, axis) when `t` = Unsqueeze(Gather(Shape(tensor), axis)) (a one-element shape piece), else None."""
    u = ir.producer(t)
    if u is None or u.op != "Unsqueeze":
        return None
    g = ir.producer(u.inputs[0])
    if g is None or g.op != "Gather" or int(g.attrs.get("axis", 0)) != 0:
        return None
    idx = ir.const_value(ir.input_at(g, 1))
    s = ir.producer(g.inputs[0])
    if idx is None or idx.size != 1 or s is None or s.op != "Shape" or s.attrs.get("start") or s.attrs.get("end"):
        return None
    return s.inputs[0], int(np.ravel(idx)[0])


def _dim(t: gs.Tensor, axis: int):
    shape = t.shape
    if shape is None or not -len(shape) <= axis < len(shape):
        return None
    return shape[axis]


def _batch_dim_in_reshape(graph: gs.Graph, node: gs.Node) -> bool:
    if int(node.attrs.get("allowzero", 0)) or ir.const_value(node.inputs[1]) is not None:
        return False
    cat = ir.producer(node.inputs[1])
    if cat is None or cat.op != "Concat":
        return False
    x = node.inputs[0]
    target: list[int] = []
    for t in cat.inputs:
        v = ir.const_value(t)
        if v is not None:
            target += [int(a) for a in np.ravel(v)]
            continue
        src = _gathered_dim(t)
        if src is None:
            return False
        d_src, d_x = _dim(src[0], src[1]), _dim(x, len(target))
        if not isinstance(d_src, str) or d_src != d_x:  # the same symbolic dim at this position: Reshape's 0 copies it
            return False
        target.append(0)
    node.inputs[1] = ir.make_const(ir.unique_name(graph, node.name + "_shape"), np.array(target, np.int64))
    return True


RULES = [
    Rule("noop", ("Identity", "Dropout"), _bypass_noop),
    Rule("reducemean-to-gap", ("ReduceMean",), _reduce_mean_to_gap),
    Rule("pad-into-conv", ("Pad",), _pad_into_conv),
    Rule("batch-dim-in-reshape", ("Reshape",), _batch_dim_in_reshape),
]
