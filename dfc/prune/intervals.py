"""Interval arithmetic over the dense part of a graph (data-free bounds, as in PAODING §4).

`activation_bounds` pushes an input box through the graph: an affine map y = W·x + b sends the box
(centre c, radius r) to (W·c + b, |W|·r); monotone activations map the bounds element-wise.
`propagate_impact` pushes an interval of *output changes* δ from one tensor to the graph output:
affine maps as above without bias, and an activation with Lipschitz constant L sends [lo, hi] to
L·[min(lo, 0), max(hi, 0)] (a sound bound for monotone activations).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfc.graph import ir

MONOTONE = {"Relu": 1.0, "LeakyRelu": 1.0, "Tanh": 1.0, "Sigmoid": 0.25, "Identity": 1.0, "Dropout": 1.0,
            "Flatten": 1.0, "Clip": 1.0}
ACTIVATIONS = {
    "Relu": lambda v, n: np.maximum(v, 0),
    "LeakyRelu": lambda v, n: np.where(v > 0, v, float(n.attrs.get("alpha", 0.01)) * v),
    "Tanh": lambda v, n: np.tanh(v),
    "Sigmoid": lambda v, n: 1 / (1 + np.exp(-v)),
    "Identity": lambda v, n: v,
    "Dropout": lambda v, n: v,
    "Flatten": lambda v, n: v,
    "Clip": lambda v, n: np.clip(v, *(ir.clip_bounds(n) or (-np.inf, np.inf))),
}


def dense_weight(n: gs.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(W as [in, out], bias [out]) of a 2-D Gemm/MatMul with constant weight, else None."""
    w = ir.const_value(ir.input_at(n, 1))
    if w is None or w.ndim != 2 or int(n.attrs.get("transA", 0)):
        return None
    w = w.T if n.op == "Gemm" and int(n.attrs.get("transB", 0)) else w
    alpha = float(n.attrs.get("alpha", 1.0)) if n.op == "Gemm" else 1.0
    c = ir.const_value(ir.input_at(n, 2)) if n.op == "Gemm" else None
    beta = float(n.attrs.get("beta", 1.0)) if n.op == "Gemm" else 0.0
    b = np.zeros(w.shape[1]) if c is None else beta * np.broadcast_to(np.ravel(c), (w.shape[1],))
    return alpha * w.astype(np.float64), b.astype(np.float64)


def _affine(n: gs.Node, lo: np.ndarray, hi: np.ndarray, with_bias: bool) -> tuple[np.ndarray, np.ndarray] | None:
    if n.op in ("Gemm", "MatMul"):
        wb = dense_weight(n)
        if wb is None:
            return None
        w, b = wb
        c, r = (lo + hi) / 2, (hi - lo) / 2
        mid = c @ w + (b if with_bias else 0)
        rad = r @ np.abs(w)
        return mid - rad, mid + rad
    if n.op in ("Add", "Sub", "Mul") and len(n.inputs) == 2:
        v = ir.const_value(n.inputs[1])
        if v is None or v.size not in (1, lo.size):
            return None
        v = np.broadcast_to(np.ravel(v).astype(np.float64), lo.shape)
        if n.op == "Mul":
            a, b = lo * v, hi * v
            return np.minimum(a, b), np.maximum(a, b)
        if not with_bias:
            return lo, hi
        return (lo + v, hi + v) if n.op == "Add" else (lo - v, hi - v)
    return None


def activation_bounds(graph: gs.Graph, lo: np.ndarray, hi: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Bounds of every tensor reachable from the (single, 2-D) graph input through supported ops."""
    bounds = {graph.inputs[0].name: (np.asarray(lo, np.float64), np.asarray(hi, np.float64))}
    for n in graph.nodes:
        x = n.inputs[0] if n.inputs else None
        if x is None or x.name not in bounds:
            continue
        l, h = bounds[x.name]
        if n.op in ACTIVATIONS:
            out = (ACTIVATIONS[n.op](l, n), ACTIVATIONS[n.op](h, n))
        else:
            out = _affine(n, l, h, with_bias=True)
        if out is not None:
            bounds[n.outputs[0].name] = out
    return bounds


def propagate_impact(graph: gs.Graph, start: gs.Tensor, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Bound on the change of the graph output caused by a change in [lo, hi] of tensor `start`;
    None when the path to the output branches or crosses an op without a bound."""
    t = start
    while not ir.is_graph_output(graph, t):
        nxt = ir.consumers(t)
        if len(nxt) != 1 or nxt[0].inputs[0] is not t:
            return None
        n = nxt[0]
        if n.op in MONOTONE:
            lip = MONOTONE[n.op]
            lo, hi = lip * np.minimum(lo, 0), lip * np.maximum(hi, 0)
        else:
            out = _affine(n, lo, hi, with_bias=False)
            if out is None:
                return None
            lo, hi = out
        t = n.outputs[0]
    return lo, hi


def interval_entropy(lo: np.ndarray, hi: np.ndarray, similarity: float = 0.9) -> float:
    """ENT(B) = −Σ_i p_i·log p_i, p_i = share of the intervals similar to interval i (Dai et al. 2016).

    Similarity of [a, b] and [c, d] within the union U of all intervals (and 0):
    1 − (|a − c| + |b − d|) / (2·|U|). Near 0 when all outputs shift alike (the argmax is kept).
    """
    lo, hi = np.ravel(lo), np.ravel(hi)
    width = max(float(hi.max(initial=0.0)) - float(lo.min(initial=0.0)), 1e-12)
    sim = 1 - (np.abs(lo[:, None] - lo[None, :]) + np.abs(hi[:, None] - hi[None, :])) / (2 * width)
    p = (sim >= similarity).mean(axis=1)
    return float(-(p * np.log(p)).sum())
