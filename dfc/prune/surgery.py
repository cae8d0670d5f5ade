"""Channel surgery: physically remove channel groups from a graph and rewire every node they touch.

Given the kept channels of every tensor that loses some (`ChannelAnalysis.removal`):
- Conv:   W ← W[keep_out][:, keep_in], b ← b[keep_out]; a depthwise Conv keeps W[keep_out] and
          its `group` becomes the new input channel count.
- Gemm:   W ← rows/columns by transB, C ← C[keep_out];  MatMul: W ← W[keep_in][:, keep_out].
- BN / InstanceNorm / PRelu parameters and per-channel constants of element-wise ops are sliced.
- Slice on the channel axis: start ← #kept input channels below start, end ← start + #kept outputs.
- Pad on the channel axis: before ← #kept padded channels in front, after ← #kept padded behind.
  Both stay exact ops because a group always holds an input channel and its mapped output channel
  together (the padded zeros sit outside the input range), so no Gather is ever needed.
- Reshape to [N, F] with a literal F: F ← new feature count.
Activation shapes are then re-inferred. A group is *dead* when it is identically zero: every
origin has zero weights and bias (or is a zero pad) and every op on the way maps 0 to 0.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfc.graph import ir
from dfc.prune.channels import (
    BINARY, CHANNEL_AXIS, PARAM_INPUTS, POOLS, ZERO_PRESERVING_UNARY, ChannelAnalysis, Group, pad_amounts, slice_spec,
)
from dfc.pipeline import Context
from dfc.graph.ops import WEIGHTED


def remove_groups(graph: gs.Graph, analysis: ChannelAnalysis, groups: list[Group], ctx: Context | None = None) -> gs.Graph:
    """Remove `groups` (none may be blocked); returns the graph with shapes re-inferred."""
    if not groups:
        return graph
    blocked = [g for g in groups if g.blocked]
    if blocked:
        raise ValueError(f"refusing to remove blocked group {blocked[0].describe()}: {blocked[0].blocked[0]}")
    keep = analysis.removal(groups)
    analysis.check_closed(keep)
    size = analysis.size
    for n in list(graph.nodes):
        touched = [t for t in list(n.inputs) + list(n.outputs) if t is not None and t.name in keep]
        if touched:
            _rewrite(n, keep, size)
    if ctx is not None:
        for name, k in keep.items():
            if name in ctx.bn_stats:
                ctx.bn_stats[name] = ctx.bn_stats[name].select(k)
    io = {id(t) for t in list(graph.inputs) + list(graph.outputs)}
    for t in graph.tensors().values():
        if isinstance(t, gs.Variable) and id(t) not in io:
            t.shape = None
    ir.tidy(graph)
    return ir.infer_shapes(graph)


def _kept(keep: dict[str, np.ndarray], size: dict[str, int], t: gs.Tensor) -> np.ndarray:
    return keep[t.name] if t.name in keep else np.arange(size.get(t.name, 0))


def _set_input(n: gs.Node, i: int, value: np.ndarray) -> None:
    n.inputs[i] = ir.make_const(f"{n.name}_in{i}_pruned", value)


def _rewrite(n: gs.Node, keep: dict[str, np.ndarray], size: dict[str, int]) -> None:
    x, y = n.inputs[0], n.outputs[0]
    if n.op in WEIGHTED:
        return _rewrite_weighted(n, _kept(keep, size, x), _kept(keep, size, y))
    if n.op in PARAM_INPUTS:
        ky = _kept(keep, size, y)
        for i in PARAM_INPUTS[n.op]:
            v = ir.const_value(n.inputs[i])
            if v.size == size[y.name] and v.size > 1:  # PRelu's slope broadcasts: [C, 1, 1]
                axis = CHANNEL_AXIS - (len(y.shape) - v.ndim) if n.op == "PRelu" else 0
                _set_input(n, i, np.take(v, ky, axis=axis))
        return
    if n.op in BINARY:
        ky, ry = _kept(keep, size, y), len(y.shape)
        for i, t in enumerate(n.inputs):
            v = ir.const_value(t)
            axis = None if v is None else CHANNEL_AXIS - (ry - v.ndim)
            if v is not None and axis is not None and axis >= 0 and v.shape[axis] == size[y.name] > 1:
                _set_input(n, i, np.take(v, ky, axis=axis))
        return
    if n.op == "Slice":
        spec = slice_spec(n)
        if CHANNEL_AXIS in spec:
            kx, ky = _kept(keep, size, x), _kept(keep, size, y)
            start, _, _ = spec[CHANNEL_AXIS]
            start = start + size[x.name] if start < 0 else start
            new_start = int(np.sum(kx < start))
            axes = list(spec)
            i = axes.index(CHANNEL_AXIS)
            starts, ends = ir.const_value(n.inputs[1]).copy(), ir.const_value(n.inputs[2]).copy()
            starts[i], ends[i] = new_start, new_start + len(ky)
            _set_input(n, 1, starts)
            _set_input(n, 2, ends)
        return
    if n.op == "Pad":
        before, after = pad_amounts(n)
        if before or after:
            ky = _kept(keep, size, y)
            c_in = size[x.name]
            pads = ir.const_value(n.inputs[1]).copy()
            half = len(pads) // 2
            axes_t = ir.input_at(n, 3)
            axes = list(range(half)) if axes_t is None else [int(a) % len(y.shape) for a in ir.const_value(axes_t)]
            i = axes.index(CHANNEL_AXIS)
            pads[i] = int(np.sum(ky < before))
            pads[i + half] = int(np.sum(ky >= before + c_in))
            _set_input(n, 1, pads)
        return
    if n.op == "Reshape":
        shape = ir.const_value(n.inputs[1])
        if int(shape[1]) > 0:
            new = shape.copy()
            new[1] = len(_kept(keep, size, y))
            _set_input(n, 1, new)
    # every other op the analysis accepts keeps its attributes (shapes follow the inputs)


def _rewrite_weighted(n: gs.Node, kx: np.ndarray, ky: np.ndarray) -> None:
    w = ir.const_value(n.inputs[1])
    if n.op == "Conv":
        if int(n.attrs.get("group", 1)) != 1:
            w = w[ky]
            n.attrs["group"] = int(len(kx))
        else:
            w = w[ky][:, kx]
    elif n.op == "Gemm" and int(n.attrs.get("transB", 0)):
        w = w[ky][:, kx]
    else:
        w = w[kx][:, ky]
    _set_input(n, 1, w)
    b_t = ir.input_at(n, 2)
    b = ir.const_value(b_t)
    if b is not None and b.size > 1:
        _set_input(n, 2, b[..., ky] if b.ndim >= 1 and b.shape[-1] > 1 else b)


# ---------------------------------------------------------------- dead channels


def is_dead(g: Group, analysis: ChannelAnalysis) -> bool:
    """True when every channel of the group is identically zero (removing it is exact)."""
    if g.blocked or not (g.origins or g.pad_origins):
        return False
    for node, c in g.origins:
        w = ir.const_value(node.inputs[1])
        if not _zero(_out_slice(node, w, c)) or not _zero_at(ir.const_value(ir.input_at(node, 2)), c, axis=-1):
            return False
    for node, _ in g.pad_origins:
        if not _pad_value_zero(node):
            return False
    for name, chans in g.members.items():
        p = ir.producer(analysis.tensors[name])
        if p is None or (p.op in WEIGHTED and int(p.attrs.get("group", 1)) == 1):
            continue
        if not _maps_zero_to_zero(p, chans, analysis):
            return False
    return True


def _out_slice(node: gs.Node, w: np.ndarray, c: int) -> np.ndarray:
    if node.op == "Conv" or (node.op == "Gemm" and int(node.attrs.get("transB", 0))):
        return w[c]
    return w[:, c]


def _zero(v: np.ndarray | None) -> bool:
    return v is None or not np.any(v)


def _zero_at(v: np.ndarray | None, c: int, axis: int) -> bool:
    if v is None or v.size == 1:
        return v is None or not np.any(v)
    return not np.any(np.take(v, c, axis=axis))


def _pad_value_zero(n: gs.Node) -> bool:
    v = ir.const_value(ir.input_at(n, 2))
    return v is None or not np.any(v)


def _maps_zero_to_zero(p: gs.Node, chans: list[int], analysis: ChannelAnalysis) -> bool:
    op = p.op
    if op in ZERO_PRESERVING_UNARY or op in POOLS or op in ("Slice", "Concat", "Flatten", "Reshape", "PRelu"):
        return True
    if op == "Pad":
        return _pad_value_zero(p)
    if op == "Clip":
        lo, hi = (ir.const_value(ir.input_at(p, i)) for i in (1, 2))
        return (lo is None or float(lo) <= 0) and (hi is None or float(hi) >= 0)
    if op == "Conv":  # depthwise: zero in, bias out
        return all(_zero_at(ir.const_value(ir.input_at(p, 2)), c, -1) for c in chans)
    if op == "BatchNormalization":
        g, b, m, v = (np.asarray(ir.const_value(p.inputs[i]), np.float64) for i in range(1, 5))
        shift = np.broadcast_to(b - g * m / np.sqrt(v + float(p.attrs.get("epsilon", 1e-5))), (analysis.size[p.outputs[0].name],))
        return not np.any(shift[chans])
    if op == "InstanceNormalization":
        return all(_zero_at(ir.const_value(p.inputs[2]), c, -1) for c in chans)
    if op in BINARY:
        y = p.outputs[0]
        for i, t in enumerate(p.inputs):
            v = ir.const_value(t)
            in_group = t.name in analysis.base and analysis.size[t.name] == analysis.size[y.name]
            if op == "Div" and i == 1 and v is None:
                return False
            if op in ("Mul", "Div") or in_group:
                continue
            if v is None:
                return False  # a broadcast activation is added: not zero
            axis = CHANNEL_AXIS - (len(y.shape) - v.ndim)
            vals = v if axis < 0 or v.shape[axis] == 1 else np.take(v, chans, axis=axis)
            if np.any(vals):
                return False
        return True
    return False
