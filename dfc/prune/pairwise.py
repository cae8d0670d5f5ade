"""PAODING pair-wise pruning of dense neurons (Meng et al. 2022, §4; after Srinivas & Babu 2015).

Two neurons i, j of a dense layer with similar incoming weights compute similar activations; j can
be removed and its outgoing weights added to i's (the next layer then sees a_i·(h_i + h_j) ≈ what
it saw). For the removed neuron j and its survivor i:
    saliency s(i ← j) = (‖w_i − w_j‖² + (b_i − b_j)²) · ‖a_j‖²,
with w the incoming rows, b the biases, a_j the *removed* neuron's outgoing weights.
The lowest-saliency disjoint pairs form a candidate pool (2× what the step needs); each candidate's
impact on the outputs is bounded data-free by interval arithmetic (`dfc.prune.intervals`): the next
layer changes by a_j·(h_i − h_j) with h_i − h_j ∈ [lo_i − hi_j, hi_i − lo_j], pushed to the
output. Candidates are ranked by 0.5·σ(L) + 0.5·σ(ENT) (L: total width of the output intervals,
ENT: interval entropy), ties by saliency, and the best `count` are taken.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfc.graph import ir
from dfc.prune.channels import Group
from dfc.prune.intervals import dense_weight, interval_entropy, propagate_impact


def pairable(groups: list[Group]) -> bool:
    """A family of neuron groups that pair-wise pruning can handle: one dense origin, dense sinks,
    one feature per tensor, no residual join."""
    if not groups:
        return False
    origin = {n.name for g in groups for n, _ in g.origins}
    for g in groups:
        if g.residual or g.pad_origins or len(g.origins) != 1 or not g.sinks:
            return False
        if any(len(c) != 1 for c in g.members.values()):
            return False
        if any(n.op not in ("Gemm", "MatMul") for n, _, _ in g.sinks) or g.origins[0][0].op not in ("Gemm", "MatMul"):
            return False
    return len(origin) == 1


def _incoming(origin: gs.Node) -> tuple[np.ndarray, np.ndarray]:
    w, b = dense_weight(origin)
    return w.T, b  # rows per neuron


def _outgoing(g: Group) -> np.ndarray:
    """Concatenated outgoing weights of the group's neuron over all its sinks."""
    parts = []
    for node, _, feats in g.sinks:
        w, _ = dense_weight(node)
        parts.append(w[feats[0]])
    return np.concatenate(parts)


def saliency_matrix(w_in: np.ndarray, b_in: np.ndarray, w_out: np.ndarray) -> np.ndarray:
    """S[i, j] = (‖w_i − w_j‖² + (b_i − b_j)²) · ‖a_j‖² for keeping i and removing j; S[i, i] = inf."""
    sq = (w_in ** 2).sum(1) + b_in ** 2
    dist = sq[:, None] + sq[None, :] - 2 * (w_in @ w_in.T + np.outer(b_in, b_in))
    s = np.maximum(dist, 0) * (w_out ** 2).sum(1)[None, :]
    np.fill_diagonal(s, np.inf)
    return s


def disjoint_lowest(s: np.ndarray, count: int) -> list[tuple[int, int, float]]:
    """Greedy: the `count` lowest entries (i, j) of S with every index used at most once."""
    order = np.argsort(s, axis=None)
    used, out = set(), []
    for flat in order:
        i, j = divmod(int(flat), s.shape[1])
        if not np.isfinite(s[i, j]) or len(out) >= count:
            break
        if i in used or j in used:
            continue
        used.update((i, j))
        out.append((i, j, float(s[i, j])))
    return out


def choose_pairs(graph: gs.Graph, groups: list[Group], count: int, bounds: dict | None) -> tuple[list[tuple[Group, Group]], bool]:
    """(survivor, removed) pairs for `count` removals in one dense layer; second value: impact used."""
    origin = groups[0].origins[0][0]
    w_all, b_all = _incoming(origin)
    idx = [g.origins[0][1] for g in groups]
    w_in, b_in = w_all[idx], b_all[idx]
    w_out = np.stack([_outgoing(g) for g in groups])
    pool = disjoint_lowest(saliency_matrix(w_in, b_in, w_out), 2 * count)
    act = _activation_tensor(groups[0])
    impact = [None] * len(pool)
    if bounds is not None and act is not None and act.name in bounds:
        impact = [_impact_score(graph, groups[i], groups[j], act, bounds) for i, j, _ in pool]
    used_impact = all(s is not None for s in impact)
    scored = sorted((s if used_impact else 0.0, sal, i, j) for s, (i, j, sal) in zip(impact, pool))
    return [(groups[i], groups[j]) for _, _, i, j in scored[:count]], used_impact


def _activation_tensor(g: Group) -> gs.Tensor | None:
    """The tensor the sinks read (the neuron's activation)."""
    names = {t for _, t, _ in g.sinks}
    if len(names) != 1:
        return None
    return g.sinks[0][0].inputs[0]


def _impact_score(graph: gs.Graph, keep: Group, drop: Group, act: gs.Tensor, bounds: dict) -> float | None:
    lo, hi = bounds[act.name]
    i, j = keep.members[act.name][0], drop.members[act.name][0]
    d_lo, d_hi = lo[..., i] - hi[..., j], hi[..., i] - lo[..., j]
    total_lo = total_hi = None
    for node, _, feats in drop.sinks:
        w, _ = dense_weight(node)
        a = w[feats[0]]
        lo_k, hi_k = np.minimum(a * d_lo, a * d_hi), np.maximum(a * d_lo, a * d_hi)
        out = propagate_impact(graph, node.outputs[0], lo_k, hi_k)
        if out is None:
            return None
        total_lo = out[0] if total_lo is None else total_lo + out[0]
        total_hi = out[1] if total_hi is None else total_hi + out[1]
    big_l = float(np.sum(total_hi - total_lo))
    ent = interval_entropy(total_lo, total_hi)
    return 0.5 * _sigmoid(big_l) + 0.5 * _sigmoid(ent)


def _sigmoid(v: float) -> float:
    return float(1 / (1 + np.exp(-v)))
