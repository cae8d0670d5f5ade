"""Channel dependency analysis: which channels of which tensors must be removed together.

Every channel of every activation tensor (axis 1 of NCHW / [N, F] tensors) is an *element*. Ops
link the elements that carry the same channel, and union-find closes the links into *groups*: a
group is removed as a whole or not at all.

Rules (one method per op family below):
- Conv (group 1), Gemm, MatMul with a constant weight: input and output channel spaces are separate;
  the output channels are the group's *origins* (weight rows), the input channels its *sinks*.
  Depthwise Conv ties input channel c to output channels c·m … c·m+m−1; other grouped Convs block.
- BatchNormalization, InstanceNormalization, PRelu, activations, pools: channel c in = channel c out.
- Element-wise Add/Sub/Mul/Div/Max/Min: joins channel c of every non-broadcast input and the output;
  a join of two or more activations is a *residual* join (scope `all` only).
- Concat on axis 1 maps input k's channel c to output channel offset_k + c.
- Flatten (axis 1) / Reshape to [N, C·H·W] maps channel c to features c·H·W … (c+1)·H·W − 1.
- Slice on the channel axis (step 1) maps output c to input start + c; other Slices keep channels.
- Pad on the channel axis (constant mode) maps input c to output c + p_before; the padded output
  channels are origins of their own (zeros), as in the option-A shortcut of CIFAR ResNets.
- Graph inputs and outputs, and every op not listed, block all the channels they touch (an unknown
  op is never assumed element-wise); the group's `blocked` says why.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from dfc.graph import ir
from dfc.graph.ops import WEIGHTED

CHANNEL_AXIS = 1
WEIGHT_OPS = WEIGHTED
# channel-wise ops that map 0 to 0 (dead channels stay dead through them)
ZERO_PRESERVING_UNARY = {
    "Relu", "LeakyRelu", "Tanh", "Identity", "Dropout", "Neg", "Abs", "Softsign", "Elu", "Selu", "Gelu",
    "HardSwish", "Mish", "Sign", "Erf", "Sin", "Asinh", "Atanh", "Floor", "Ceil", "Round",
}
OTHER_UNARY = {"Sigmoid", "HardSigmoid", "Softplus", "Exp", "Cos", "Reciprocal", "Sqrt", "Log", "Cast", "Clip", "Not"}
POOLS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"}
PARAM_INPUTS = {"BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2), "PRelu": (1,)}
BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum"}


@dataclass
class Group:
    """One set of channels removed together: `members[tensor] = channel indices`."""

    id: int
    members: dict[str, list[int]] = field(default_factory=dict)
    origins: list[tuple[gs.Node, int]] = field(default_factory=list)  # (weight node, output channel)
    pad_origins: list[tuple[gs.Node, int]] = field(default_factory=list)  # (Pad node, output channel)
    sinks: list[tuple[gs.Node, str, list[int]]] = field(default_factory=list)  # (weight node, input tensor, features)
    blocked: list[str] = field(default_factory=list)
    residual: bool = False

    @property
    def family(self) -> tuple[str, ...]:
        """The layer(s) the group belongs to: the names of its weight origins (its pruning 'layer')."""
        return tuple(sorted({n.name for n, _ in self.origins} | {n.name for n, _ in self.pad_origins}))

    def describe(self, limit: int = 2) -> str:
        names = list(self.members)
        more = f" (+{len(names) - limit} more tensors)" if len(names) > limit else ""
        return ", ".join(f"{t}[{','.join(map(str, self.members[t][:4]))}]" for t in names[:limit]) + more


class ChannelAnalysis:
    """Union-find over the channels of a graph whose tensor shapes are inferred (`ir.infer_shapes`)."""

    def __init__(self, graph: gs.Graph):
        self.graph = graph
        self.base: dict[str, int] = {}
        self.size: dict[str, int] = {}
        self.tensors: dict[str, gs.Tensor] = {}
        total = 0
        for name, t in graph.tensors().items():
            c = _channels(t)
            if c is not None:
                self.base[name], self.size[name], self.tensors[name] = total, c, t
                total += c
        self.parent = np.arange(total)
        self.links: list[tuple[str, np.ndarray, np.ndarray]] = []  # (node, a, b): kept for the closure check
        self.reasons: dict[int, str] = {}
        self.residual: set[int] = set()
        self.origin: dict[int, list[tuple[gs.Node, int]]] = defaultdict(list)
        self.pad_origin: dict[int, list[tuple[gs.Node, int]]] = defaultdict(list)
        self.sink: dict[int, list[tuple[gs.Node, str, int]]] = defaultdict(list)
        for t in graph.inputs:
            self._block_tensor(t, f"graph input {t.name!r}")
        for t in graph.outputs:
            self._block_tensor(t, f"graph output {t.name!r}")
        for n in graph.nodes:
            self._visit(n)
        self.groups = self._collect()

    # ------------------------------------------------------------- element helpers

    def ids(self, t: gs.Tensor | None) -> np.ndarray | None:
        if t is None or t.name not in self.base:
            return None
        b = self.base[t.name]
        return np.arange(b, b + self.size[t.name])

    def find(self, e: int) -> int:
        p = self.parent
        root = e
        while p[root] != root:
            root = p[root]
        while p[e] != root:
            p[e], e = root, p[e]
        return root

    def link(self, node: gs.Node, a: np.ndarray, b: np.ndarray) -> None:
        """Elements a[i] and b[i] carry the same channel."""
        self.links.append((node.name, a, b))
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[ry] = rx

    def _block_ids(self, ids: np.ndarray | None, reason: str) -> None:
        if ids is not None:
            for e in ids.tolist():
                self.reasons.setdefault(e, reason)

    def _block_tensor(self, t: gs.Tensor, reason: str) -> None:
        self._block_ids(self.ids(t), reason)

    def _block_node(self, n: gs.Node, reason: str) -> None:
        for t in list(n.inputs) + list(n.outputs):
            if t is not None:
                self._block_tensor(t, reason)

    # ------------------------------------------------------------- rules

    def _visit(self, n: gs.Node) -> None:
        op = n.op
        if op in WEIGHT_OPS:
            self._weighted(n)
        elif op in ZERO_PRESERVING_UNARY or op in OTHER_UNARY or op in POOLS or op in PARAM_INPUTS:
            self._channelwise(n)
        elif op in BINARY:
            self._elementwise(n)
        elif op == "Slice":
            self._slice(n)
        elif op == "Pad":
            self._pad(n)
        elif op == "Concat":
            self._concat(n)
        elif op in ("Flatten", "Reshape"):
            self._flatten(n)
        else:
            self._block_node(n, f"op {op} (node {n.name!r}) is not known to the channel analysis")

    def _weighted(self, n: gs.Node) -> None:
        x, y = n.inputs[0], n.outputs[0]
        w = ir.const_value(ir.input_at(n, 1))
        xi, yi = self.ids(x), self.ids(y)
        if w is None or xi is None or yi is None:
            return self._block_node(n, f"{n.op} node {n.name!r} has no constant weight or unknown shapes")
        if n.op == "Gemm" and int(n.attrs.get("transA", 0)):
            return self._block_node(n, f"Gemm node {n.name!r} uses transA")
        if n.op in ("Gemm", "MatMul") and (w.ndim != 2 or len(x.shape) != 2):
            return self._block_node(n, f"{n.op} node {n.name!r} is not a 2-D dense layer")
        if n.op == "Conv" and int(n.attrs.get("group", 1)) != 1:
            g = int(n.attrs["group"])
            if g == len(xi) and len(yi) % g == 0 and w.shape[1] == 1:  # depthwise, multiplier m
                m = len(yi) // g
                return self.link(n, np.repeat(xi, m), yi)
            return self._block_node(n, f"grouped Conv {n.name!r} (group={g}) is not depthwise")
        for c, e in enumerate(yi.tolist()):
            self.origin[e].append((n, c))
        for c, e in enumerate(xi.tolist()):
            self.sink[e].append((n, x.name, c))

    def _channelwise(self, n: gs.Node) -> None:
        x, y = n.inputs[0], n.outputs[0]
        xi, yi = self.ids(x), self.ids(y)
        extra = [o for o in n.outputs[1:] if o.outputs or ir.is_graph_output(self.graph, o)]
        if xi is None or yi is None or len(xi) != len(yi) or extra:
            return self._block_node(n, f"{n.op} node {n.name!r}: channel counts of input and output differ or unknown")
        for i in PARAM_INPUTS.get(n.op, ()):
            v = ir.const_value(ir.input_at(n, i))
            if v is None or v.size not in (1, len(xi)):
                return self._block_node(n, f"{n.op} node {n.name!r}: parameter {i} is not a per-channel constant")
        if n.op == "Clip" and any(ir.input_at(n, i) is not None and ir.const_value(n.inputs[i]) is None for i in (1, 2)):
            return self._block_node(n, f"Clip node {n.name!r}: bounds are not constants")
        self.link(n, xi, yi)

    def _elementwise(self, n: gs.Node) -> None:
        y = n.outputs[0]
        yi = self.ids(y)
        if yi is None:
            return self._block_node(n, f"{n.op} node {n.name!r}: output channels unknown")
        ry, joined = len(y.shape), []
        for t in n.inputs:
            axis = _aligned_axis(t, ry)
            dim = None if axis is None else t.shape[axis]
            if ir.const_value(t) is not None:
                if axis is not None and dim not in (1, len(yi)):
                    return self._block_node(n, f"{n.op} node {n.name!r}: constant operand does not broadcast per channel")
                continue
            if axis is None or dim == 1:
                continue  # broadcast along channels
            ti = self.ids(t)
            if axis != CHANNEL_AXIS or ti is None or len(ti) != len(yi):
                return self._block_node(n, f"{n.op} node {n.name!r}: operand {t.name!r} does not line up with the channels")
            joined.append(ti)
        for ti in joined:
            self.link(n, ti, yi)
        if len(joined) >= 2:
            self.residual.update(yi.tolist())

    def _slice(self, n: gs.Node) -> None:
        x, y = n.inputs[0], n.outputs[0]
        xi, yi = self.ids(x), self.ids(y)
        spec = slice_spec(n)
        if xi is None or yi is None or spec is None:
            return self._block_node(n, f"Slice node {n.name!r}: parameters not constant or shapes unknown")
        if CHANNEL_AXIS not in spec:
            if len(xi) != len(yi):
                return self._block_node(n, f"Slice node {n.name!r}: channel counts differ")
            return self.link(n, xi, yi)
        start, end, step = spec[CHANNEL_AXIS]
        start, end = _clamp_range(start, end, len(xi))
        if step != 1 or end - start != len(yi):
            return self._block_node(n, f"Slice node {n.name!r} takes channels with step {step}")
        self.link(n, xi[start:end], yi)

    def _pad(self, n: gs.Node) -> None:
        x, y = n.inputs[0], n.outputs[0]
        xi, yi = self.ids(x), self.ids(y)
        amounts = pad_amounts(n)
        if xi is None or yi is None or amounts is None:
            return self._block_node(n, f"Pad node {n.name!r}: pads not constant or shapes unknown")
        before, after = amounts
        if before == after == 0:
            return self.link(n, xi, yi)
        if n.attrs.get("mode", "constant") not in ("constant", b"constant") or before < 0 or after < 0:
            return self._block_node(n, f"Pad node {n.name!r} pads or crops channels in a non-constant mode")
        self.link(n, xi, yi[before:before + len(xi)])
        for c in list(range(before)) + list(range(before + len(xi), len(yi))):
            self.pad_origin[int(yi[c])].append((n, c))

    def _concat(self, n: gs.Node) -> None:
        y = n.outputs[0]
        yi = self.ids(y)
        axis = int(n.attrs.get("axis", 0))
        if yi is None:
            return self._block_node(n, f"Concat node {n.name!r}: output channels unknown")
        axis = axis + len(y.shape) if axis < 0 else axis
        parts = [self.ids(t) for t in n.inputs]
        if any(p is None for p in parts) or any(ir.const_value(t) is not None for t in n.inputs):
            return self._block_node(n, f"Concat node {n.name!r}: constant or unknown-shape inputs")
        if axis != CHANNEL_AXIS:
            for p in parts:
                if len(p) != len(yi):
                    return self._block_node(n, f"Concat node {n.name!r}: channel counts differ")
                self.link(n, p, yi)
            return
        off = 0
        for p in parts:
            self.link(n, p, yi[off:off + len(p)])
            off += len(p)

    def _flatten(self, n: gs.Node) -> None:
        x, y = n.inputs[0], n.outputs[0]
        xi, yi = self.ids(x), self.ids(y)
        ok = xi is not None and yi is not None and len(y.shape) == 2 and all(isinstance(d, (int, np.integer)) for d in x.shape[1:])
        if n.op == "Flatten":
            ok = ok and int(n.attrs.get("axis", 1)) == 1
        else:
            shape = ir.const_value(ir.input_at(n, 1))
            ok = ok and shape is not None and shape.size == 2
        if not ok or len(yi) % len(xi):
            return self._block_node(n, f"{n.op} node {n.name!r} is not a flatten of [N, C, ...] to [N, C·H·W]")
        self.link(n, np.repeat(xi, len(yi) // len(xi)), yi)

    # ------------------------------------------------------------- groups

    def _collect(self) -> list[Group]:
        roots = np.array([self.find(e) for e in range(len(self.parent))], dtype=np.int64)
        self.root_of = roots
        by_root: dict[int, Group] = {}
        names = sorted(self.base, key=lambda k: self.base[k])
        for name in names:
            b = self.base[name]
            for c in range(self.size[name]):
                e = b + c
                g = by_root.get(int(roots[e]))
                if g is None:
                    g = by_root[int(roots[e])] = Group(id=len(by_root))
                g.members.setdefault(name, []).append(c)
                if e in self.reasons and self.reasons[e] not in g.blocked:
                    g.blocked.append(self.reasons[e])
                g.residual = g.residual or e in self.residual
                g.origins.extend(self.origin.get(e, ()))
                g.pad_origins.extend(self.pad_origin.get(e, ()))
                for node, tname, feat in self.sink.get(e, ()):
                    _add_sink(g, node, tname, feat)
        groups = list(by_root.values())
        for g in groups:
            if not g.blocked and not g.origins and not g.pad_origins:
                g.blocked.append("no layer produces these channels")
        return groups

    def removal(self, groups: list[Group]) -> dict[str, np.ndarray]:
        """tensor name -> kept channel indices, for every tensor that loses channels."""
        lost: dict[str, set[int]] = defaultdict(set)
        for g in groups:
            for name, chans in g.members.items():
                lost[name].update(chans)
        return {name: np.array([c for c in range(self.size[name]) if c not in gone], np.int64) for name, gone in lost.items()}

    def check_closed(self, keep: dict[str, np.ndarray]) -> None:
        """Every link must lose channels on both sides or on neither (the groups close)."""
        removed = np.zeros(len(self.parent), bool)
        for name, k in keep.items():
            mask = np.ones(self.size[name], bool)
            mask[k] = False
            removed[self.base[name]:self.base[name] + self.size[name]] = mask
        for node, a, b in self.links:
            if not np.array_equal(removed[a], removed[b]):
                from dfc.errors import DfcError

                raise DfcError(f"channel groups do not close at node {node!r}; no edit was made")


def _add_sink(g: Group, node: gs.Node, tname: str, feat: int) -> None:
    for i, (n, t, feats) in enumerate(g.sinks):
        if n is node and t == tname:
            feats.append(feat)
            return
    g.sinks.append((node, tname, [feat]))


def _channels(t: gs.Tensor) -> int | None:
    if not isinstance(t, gs.Variable) or ir.const_value(t) is not None:
        return None
    shape = t.shape
    if shape is None or len(shape) < 2 or not isinstance(shape[CHANNEL_AXIS], (int, np.integer)):
        return None
    return int(shape[CHANNEL_AXIS])


def _aligned_axis(t: gs.Tensor, out_rank: int) -> int | None:
    """Axis of `t` that broadcasts onto the output's channel axis, None when `t` has fewer dims."""
    v = ir.const_value(t)
    shape = v.shape if v is not None else t.shape
    if shape is None:
        return None
    axis = CHANNEL_AXIS - (out_rank - len(shape))
    return axis if axis >= 0 else None


def _clamp_range(start: int, end: int, size: int) -> tuple[int, int]:
    start = start + size if start < 0 else start
    end = end + size if end < 0 else end
    return max(0, min(start, size)), max(0, min(end, size))


def slice_spec(n: gs.Node) -> dict[int, tuple[int, int, int]] | None:
    """axis -> (start, end, step) of a Slice with constant parameters (axes normalised), else None."""
    starts, ends = ir.const_value(ir.input_at(n, 1)), ir.const_value(ir.input_at(n, 2))
    axes_t, steps_t = ir.input_at(n, 3), ir.input_at(n, 4)
    axes = ir.const_value(axes_t) if axes_t is not None else np.arange(len(starts) if starts is not None else 0)
    steps = ir.const_value(steps_t) if steps_t is not None else np.ones(len(axes), np.int64)
    rank = ir.rank_of(n.inputs[0])
    if any(v is None for v in (starts, ends, axes, steps)) or rank is None:
        return None
    return {int(a) % rank: (int(s), int(e), int(st)) for a, s, e, st in zip(axes, starts, ends, steps)}


def pad_amounts(n: gs.Node) -> tuple[int, int] | None:
    """(before, after) padding of a Pad node on the channel axis, None when not constant."""
    pads = ir.const_value(ir.input_at(n, 1))
    rank = ir.rank_of(n.inputs[0])
    if pads is None or rank is None:
        return None
    axes_t = ir.input_at(n, 3)
    axes = list(range(rank)) if axes_t is None else [int(a) % rank for a in ir.const_value(axes_t)]
    if CHANNEL_AXIS not in axes:
        return 0, 0
    i = axes.index(CHANNEL_AXIS)
    return int(pads[i]), int(pads[i + len(axes)])
