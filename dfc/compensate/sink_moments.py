"""Moments of a channel group where its consumers read it, from BatchNorm statistics alone.

The last BN on the way to a consumer gives its channel c as z ~ N(β_c, γ_c²·σ_c²/(σ_c² + ε)) (`BNStats.output_mean_std`) (the folded layer's output, as in the
BNS inverter). Between that tensor and the consumer there may be channel-wise activations (Relu, LeakyRelu, Clip:
ReLU6, HardSigmoid, and hard-swish in `cleanup`'s form x·HardSigmoid(x)) and mean-preserving reshapes/pools (GlobalAveragePool, Flatten, Reshape). The consumer then sees
a = f(z) with f the activations in order, and

    E[a] = ∫ f(β + γ·t) φ(t) dt,   E[a²] = ∫ f(β + γ·t)² φ(t) dt

(a fine grid over ±8 standard deviations). Used where a removed channel cannot be rebuilt by rescaling a kept one
(a Clip or a depthwise conv on the path): its mean goes into the consumers' bias, E‖a − E[a]‖² = Var[a] is the error
that remains (for pooled consumers Var[a] is an upper bound: pooling averages part of it away).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfc.graph import ir
from dfc.prune.channels import Group
from dfc.prune.intervals import ACTIVATIONS

CHANNELWISE = ("Relu", "LeakyRelu", "Clip", "HardSigmoid")
MEAN_PRESERVING = ("GlobalAveragePool", "Flatten", "Reshape")
_T = np.linspace(-8.0, 8.0, 1601)
_W = np.exp(-_T ** 2 / 2)
_W /= _W.sum()


def _hard_swish_input(p: gs.Node) -> gs.Tensor | None:
    """x when `p` is Mul(x, HardSigmoid(x)) (hard-swish as `cleanup` writes it), else None."""
    if p.op != "Mul" or len(p.inputs) != 2:
        return None
    for x, g in (p.inputs, p.inputs[::-1]):
        h = ir.producer(g)
        if h is not None and h.op == "HardSigmoid" and h.inputs[0] is x:
            return x
    return None


def _hard_sigmoid(z: np.ndarray, n: gs.Node) -> np.ndarray:
    return np.clip(float(n.attrs.get("alpha", 0.2)) * z + float(n.attrs.get("beta", 0.5)), 0.0, 1.0)


def _activate(z: np.ndarray, a: gs.Node) -> np.ndarray:
    """The channel-wise activation `a` (a hard-swish Mul: z·HardSigmoid(z)) applied to the values z."""
    if a.op == "Mul":
        gate = next(ir.producer(t) for t in a.inputs if ir.producer(t) is not None and ir.producer(t).op == "HardSigmoid")
        return z * _hard_sigmoid(z, gate)
    return _hard_sigmoid(z, a) if a.op == "HardSigmoid" else ACTIVATIONS[a.op](z, a)


def _source(t: gs.Tensor, bn_stats) -> tuple[str, list[gs.Node]] | None:
    """(name of the BN'd tensor behind `t`, the activations between, in order), or None when something else is
    on the way."""
    acts: list[gs.Node] = []
    while t.name not in bn_stats:
        p = ir.producer(t)
        x = _hard_swish_input(p) if p is not None else None
        if x is not None:
            acts.insert(0, p)
            t = x
            continue
        if p is None or p.op not in CHANNELWISE + MEAN_PRESERVING:
            return None
        if p.op == "Clip" and ir.clip_bounds(p) is None:
            return None
        if p.op in CHANNELWISE:
            acts.insert(0, p)
        t = p.inputs[0]
    return t.name, acts


def _activated(mu, sd, acts: list[gs.Node]) -> np.ndarray:
    """f(μ + σ·t) on the grid `_T`, f the activations `acts` in order: one row per channel where mu/sd are arrays."""
    z = np.asarray(mu, np.float64)[..., None] + np.asarray(sd, np.float64)[..., None] * _T
    for a in acts:
        z = _activate(z, a)
    return z


def tensor_means(t: gs.Tensor, bn_stats) -> np.ndarray | None:
    """E[a] of every channel of tensor `t` where it is a BN'd tensor behind channel-wise activations and mean-preserving
    reshapes/pools (`_source`), from the BN statistics alone; None otherwise."""
    src = _source(t, bn_stats) if bn_stats else None
    if src is None:
        return None
    return _activated(*bn_stats[src[0]].output_mean_std(), src[1]) @ _W


def group_moments(groups: list[Group], bn_stats) -> tuple[np.ndarray, np.ndarray] | None:
    """(E[a], E[a²]) per group at its consumers, or None when some group's consumers do not read a BN'd channel
    through channel-wise activations only, or read it through different paths."""
    if not bn_stats:
        return None
    means, second = [], []
    for g in groups:
        paths = {}
        for node, _, _ in g.sinks:
            src = _source(node.inputs[0], bn_stats)
            if src is None or len(g.members.get(src[0], [])) != 1:
                return None
            paths[(src[0], tuple(a.name for a in src[1]))] = src
        if len(paths) != 1:
            return None
        name, acts = next(iter(paths.values()))
        c = g.members[name][0]
        mu, sd = bn_stats[name].output_mean_std()
        z = _activated(mu[c], sd[c], acts)
        means.append(float(_W @ z))
        second.append(float(_W @ (z * z)))
    return np.array(means), np.array(second)
