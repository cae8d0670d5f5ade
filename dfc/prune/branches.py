"""Residual branches and their removal (depth pruning): y = S + f(S) becomes y = S + E[f(S)].

A residual branch is the sub-graph f between a tensor S and an Add whose other input is S itself (an identity
shortcut): every node of f reads only S, constants or tensors of f, and every tensor of f but its output is read
only inside f. Removing f keeps the Add, with the branch's per-channel mean as a constant of shape [1, C, 1, ...]:
E[f(S)]_c = β_c of the BatchNorm that ends the branch (after folding, the statistics of the branch output,
`BNStats.output_mean_std`), so a branch without BN statistics at its output is not a candidate. All of the branch's
layers leave the graph, so the latency saved is that of whole layers at their full width, with no channel-count
alignment to respect.

The error is not predicted from weights: a branch's removal shifts the statistics every later layer was trained
on, so `remove_toward` measures it, as the output error on the probe inputs of the graph without the branch (`probe.error`: KL for a classifier).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from dfc.graph import ir
from dfc.graph.ops import WEIGHTED


@dataclass(frozen=True)
class Branch:
    add: str  # the Add node that closes the branch
    index: int  # which input of the Add is the branch output
    source: str  # S, the tensor the branch and the shortcut read
    output: str  # the branch's output tensor
    nodes: tuple[str, ...]  # the branch's nodes
    layers: tuple[str, ...]  # its Conv / Gemm / MatMul nodes


def residual_branches(graph: gs.Graph, bn_stats=None) -> list[Branch]:
    """The graph's removable residual branches (see the module docstring), in graph order; with `bn_stats`, only
    those whose output has BN statistics (their mean is known)."""
    found = []
    for add in graph.nodes:
        if add.op != "Add" or len(add.inputs) != 2 or any(isinstance(t, gs.Constant) for t in add.inputs):
            continue
        for index in (0, 1):
            out, src = add.inputs[index], add.inputs[1 - index]
            if bn_stats is not None and out.name not in bn_stats:
                continue
            nodes = _branch_nodes(graph, out, src)
            if nodes is None:
                continue
            layers = tuple(n.name for n in nodes if n.op in WEIGHTED)
            if layers:
                found.append(Branch(add.name, index, src.name, out.name, tuple(n.name for n in nodes), layers))
    return found


def _branch_nodes(graph: gs.Graph, out: gs.Tensor, src: gs.Tensor) -> list[gs.Node] | None:
    """The nodes between `src` and `out` when they form a residual branch (module docstring), else None."""
    if ir.is_graph_output(graph, out) or len(ir.consumers(out)) != 1:
        return None
    seen: dict[int, gs.Node] = {}
    stack = [out]
    while stack:
        t = stack.pop()
        if t is src or isinstance(t, gs.Constant) or t is None:
            continue
        p = ir.producer(t)
        if p is None:  # reached a graph input other than S
            return None
        if id(p) in seen:
            continue
        seen[id(p)] = p
        stack.extend(p.inputs)
    inside = {id(n) for n in seen.values()}
    for n in seen.values():
        for t in n.outputs:
            if t is out:
                continue
            if ir.is_graph_output(graph, t) or any(id(c) not in inside for c in ir.consumers(t)):
                return None
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    return sorted(seen.values(), key=lambda n: order[id(n)])


def branch_mean(branch: Branch, bn_stats, rank: int) -> np.ndarray:
    """E[f(S)] per channel from the BN statistics of the branch output, shaped [1, C, 1, ...] for a rank-`rank`
    activation."""
    mean, _ = bn_stats[branch.output].output_mean_std()
    return mean.astype(np.float32).reshape((1, -1) + (1,) * (rank - 2))


def remove_branch(graph: gs.Graph, branch: Branch, bn_stats) -> gs.Graph:
    """The graph with `branch` replaced by its mean (the Add reads a constant); its nodes and their BN statistics
    are dropped."""
    nodes = {n.name: n for n in graph.nodes}
    add = nodes[branch.add]
    out = add.inputs[branch.index]
    rank = len(out.shape) if out.shape is not None else len(add.outputs[0].shape)
    add.inputs[branch.index] = ir.make_const(f"{branch.add}_branch_mean", branch_mean(branch, bn_stats, rank))
    for name in branch.nodes:
        n = nodes[name]
        for t in n.outputs:
            bn_stats.pop(t.name, None)
        n.inputs.clear()
        n.outputs.clear()
    ir.tidy(graph)
    return graph


def remove_toward(graph: gs.Graph, bn_stats, x: np.ndarray, ref: list[np.ndarray], branch_cost, predicted, aim: float,
                  desc: str | None = None) -> tuple[gs.Graph, dict]:
    """Greedy depth pruning toward a predicted target ratio: while `predicted(graph)` > `aim`, remove the branch
    whose removal adds the least output error on the probe inputs `x` (`probe.error` against the reference outputs `ref`,
    re-measured on the current graph after every removal) per unit of `branch_cost(branch)` saved.
    Returns the graph and a report: candidates, the branches removed in order with the probe error after each and
    the prediction before it, and the prediction reached."""
    from dfc.measure import probe
    from dfc.progress import manual_bar

    removed, err_now = [], probe.error(ref, probe.outputs(graph, x))
    bar = manual_bar(desc, unit="branch")
    branches = residual_branches(graph, bn_stats)
    candidates, cost = len(branches), {}
    while branches and (now := predicted(graph)) > aim:
        base = ir.export_model(graph)
        best = None
        for b in branches:
            if b not in cost:  # a branch's layers are untouched by other removals: its cost is fixed
                cost[b] = max(float(branch_cost(b)), 1e-12)
            trial = remove_branch(ir.import_graph(base), b, dict(bn_stats))
            err = probe.error(ref, probe.outputs(trial, x))
            score = (err - err_now) / cost[b]
            if best is None or score < best[0]:
                best = (score, err, b)
        _, err_now, b = best
        graph = remove_branch(graph, b, bn_stats)
        removed.append({"add": b.add, "layers": list(b.layers), "probe_error": float(err_now),
                        "predicted_before": float(now)})
        bar.update(1)
        branches = residual_branches(graph, bn_stats)
    bar.close()
    return ir.infer_shapes(graph), {"candidates": candidates, "removed": removed, "predicted": float(predicted(graph))}
