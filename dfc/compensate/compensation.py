"""UDFC on the graph: rebuild pruned channels from kept ones, and quantized channels from themselves,
by rescaling the consumers' input-channel weights (the closed forms are in `dfc.compensate.udfc`).

A channel group (`dfc.prune.channels.Group`) is described by its *filter vector*: the folded weight rows
of all its origin layers, concatenated in origin-name order, and one bias per origin layer (padded
zero channels of a shortcut contribute nothing). Its consumers are the group's sinks: Conv input
channels, Gemm/MatMul input features (through Flatten: the H·W features of each channel; through a
global average pool: one feature), so the compensation goes into every consumer of the group and a
residual stream is merged consistently across all its producers and consumers.
The rescaling is only valid when the path from the producers to the consumers is positively
homogeneous (ReLU, pooling, reshapes, residual Adds, zero padding); a group whose path has any other
op (Sigmoid, Clip, an unfolded BatchNorm, a depthwise Conv, a constant Add, ...) is left alone and
reported.
"""

from __future__ import annotations

import re

from collections import defaultdict

import numpy as np
import onnx_graphsurgeon as gs

from dfc.graph import ir
from dfc.compensate import udfc
from dfc.quant import quant_math as qm
from dfc.prune.channels import ChannelAnalysis, Group

LINEAR_OPS = {"AveragePool", "GlobalAveragePool", "Identity", "Dropout", "Flatten", "Reshape", "Concat", "Slice"}
HOMOGENEOUS_OPS = LINEAR_OPS | {"Relu", "LeakyRelu", "MaxPool", "GlobalMaxPool"}
LINEAR_JOINS = {"Add", "Sub", "Sum"}
METHODS = ("udfc", "none")
PARTNERS = ("single", "nnls")
LOSSES = ("bn", "weights")


def path_nodes(g: Group, analysis: ChannelAnalysis) -> list[gs.Node]:
    """The nodes between the group's origins and its sinks (each once, graph order not kept)."""
    origins = {id(n) for n, _ in g.origins}
    sinks = {id(n) for n, _, _ in g.sinks}
    seen: dict[int, gs.Node] = {}
    for name in g.members:
        t = analysis.tensors[name]
        for n in list(t.inputs) + list(t.outputs):
            if (id(n) in origins and t in n.outputs) or (id(n) in sinks and n.inputs[0] is t):
                continue
            seen.setdefault(id(n), n)
    return list(seen.values())


def path_problem(g: Group, analysis: ChannelAnalysis) -> str | None:
    """Why rescaling the consumers of `g` would not reproduce a rescaled channel, or None when the
    path from its origins to its sinks commutes with a non-negative scale."""
    if g.blocked:
        return g.blocked[0]
    if not g.origins:
        return "no weighted layer produces the channels"
    if len({n.name for n, _ in g.origins}) != len(g.origins):
        return "two channels of one layer feed the same group"
    for n in path_nodes(g, analysis):
        if not _in_ops(n, HOMOGENEOUS_OPS):
            return f"{n.op} node {n.name!r} does not commute with rescaling"
    return None


def skipped_notes(skipped: dict[str, int], what: str) -> list[str]:
    """One line per kind of reason (the reason with its node names taken out), with the number of channel groups and
    places: `{prefix}: N {what} in K place(s) not compensated: Clip node does not commute with rescaling (e.g. 'a',
    'b', ...)`."""
    kinds: dict[str, list] = {}
    for reason, n in skipped.items():
        names = re.findall(r"node '([^']*)'", reason)
        kind = re.sub(r" '[^']*'", "", reason)
        entry = kinds.setdefault(kind, [0, []])
        entry[0] += n
        entry[1] += names or [reason]
    lines = []
    for kind, (n, names) in kinds.items():
        shown = ", ".join(repr(x) for x in names[:3]) + (", ..." if len(names) > 3 else "")
        lines.append(f"{n} {what} in {len(names)} place(s) not compensated: {kind} (e.g. {shown})")
    return lines


def _in_ops(n: gs.Node, ops: set[str]) -> bool:
    if n.op in ops:
        return True
    if n.op in LINEAR_JOINS:
        return all(isinstance(x, gs.Variable) for x in n.inputs)
    return ir.is_zero_pad(n)


def _sink_axis(node: gs.Node) -> int:
    """Axis of the weight that indexes the node's input channels / features."""
    if node.op == "Conv" or (node.op == "Gemm" and int(node.attrs.get("transB", 0))):
        return 1
    return 0


class WeightEditor:
    """Copy-on-write edits of the weights of Conv/Gemm/MatMul nodes; `commit` writes them back."""

    def __init__(self) -> None:
        self.edited: dict[int, tuple[gs.Node, np.ndarray]] = {}
        self.biases: dict[int, tuple[gs.Node, np.ndarray]] = {}

    def current(self, node: gs.Node) -> np.ndarray:
        """The node's weight as edited so far (read only; reading does not mark it edited)."""
        hit = self.edited.get(id(node))
        return hit[1] if hit is not None else ir.const_value(node.inputs[1])

    def weight(self, node: gs.Node) -> np.ndarray:
        """The node's weight for editing (a float64 copy, written back by `commit`)."""
        if id(node) not in self.edited:
            self.edited[id(node)] = (node, np.array(ir.const_value(node.inputs[1]), dtype=np.float64, copy=True))
        return self.edited[id(node)][1]

    def rows(self, node: gs.Node) -> tuple[np.ndarray, np.ndarray]:
        """(filter rows [C_out, D], bias [C_out]) as the layer computes them (Gemm alpha/beta applied)."""
        w = np.asarray(self.current(node), np.float64)
        b = ir.const_value(ir.input_at(node, 2))
        rows = ir.weight_rows(node, w)
        if node.op == "Gemm":
            rows = float(node.attrs.get("alpha", 1.0)) * rows
        bias = np.zeros(rows.shape[0])
        if b is not None and node.op != "MatMul":
            beta = float(node.attrs.get("beta", 1.0)) if node.op == "Gemm" else 1.0
            bias = beta * np.broadcast_to(np.ravel(b).astype(np.float64), (rows.shape[0],))
        return rows, bias

    def add_columns(self, keep: Group, drop: Group, scale: float) -> None:
        """Every consumer of `drop`: W2[:, keep] += scale·W2[:, drop] (features in order)."""
        kept = {(id(n), t): feats for n, t, feats in keep.sinks}
        for node, t, feats in drop.sinks:
            w = self.weight(node)
            k, d = kept[(id(node), t)], feats
            if _sink_axis(node) == 1:
                w[:, k] += scale * w[:, d]
            else:
                w[k] += scale * w[d]

    def scale_columns(self, g: Group, scale: float) -> None:
        """Every consumer of `g`: W2[:, g] *= scale."""
        for node, _, feats in g.sinks:
            w = self.weight(node)
            if _sink_axis(node) == 1:
                w[:, feats] *= scale
            else:
                w[feats] *= scale

    def add_mean(self, g: Group, mean: float) -> bool:
        """Every consumer of `g` gets the group's mean activation in its bias, b2 += W2[:, g]·E[a] (kernel taps summed
        for a Conv; zero padding at the borders neglected): removing the channel then leaves its variance, not its
        mean. False (nothing edited) when a consumer has no bias to take it (MatMul)."""
        if any(node.op == "MatMul" for node, _, _ in g.sinks):
            return False
        for node, _, feats in g.sinks:
            w = np.asarray(self.current(node), np.float64)
            cols = w[:, feats] if _sink_axis(node) == 1 else w[feats].T
            delta = mean * cols.reshape(cols.shape[0], -1).sum(1)
            if node.op == "Gemm":
                delta *= float(node.attrs.get("alpha", 1.0)) / float(node.attrs.get("beta", 1.0))
            if id(node) not in self.biases:
                b = ir.const_value(ir.input_at(node, 2))
                b = np.zeros(len(delta)) if b is None else np.broadcast_to(np.ravel(b), (len(delta),)).astype(np.float64)
                self.biases[id(node)] = (node, np.array(b, np.float64, copy=True))
            self.biases[id(node)][1][:] += delta
        return True

    def commit(self, suffix: str) -> None:
        for node, w in self.edited.values():
            dtype = ir.const_value(node.inputs[1]).dtype
            node.inputs[1] = ir.make_const(f"{node.name}_w_{suffix}", w.astype(dtype))
        for node, b in self.biases.values():
            const = ir.make_const(f"{node.name}_b_{suffix}", b.astype(np.float32))
            if ir.input_at(node, 2) is None:
                while len(node.inputs) > 2:
                    node.inputs.pop()
                node.inputs.append(const)
            else:
                node.inputs[2] = const
        self.edited.clear()
        self.biases.clear()


def fake_quant_row(row: np.ndarray, bits: int) -> np.ndarray:
    """The row after per-channel weight quantization at `bits` (`dfc.quant.quant_math.quantize_weight`)."""
    q, s = qm.quantize_weight(row.astype(np.float32)[None], bits, 0)
    return qm.dequantize_weight(q, s, 0)[0].astype(np.float64)


class FamilyModel:
    """The inner product that UDFC's losses use for one family of groups (same origin layers).

    `bn`: E[act(z)·act(z)] of the Gaussian BN-moment model (`dfc.compensate.udfc.moment_gram`), used when every
    group has one origin layer whose BN statistics are known and whose output goes through at most
    one ReLU/LeakyReLU and then positively homogeneous ops; `weights`: the issue's ⟨F, F⟩ + α·b·b
    otherwise (residual streams, no BN statistics) or when asked for. `linear` says whether the path
    after the activation is linear, which the non-negative combination of several channels needs."""

    def __init__(self, groups: list[Group], analysis: ChannelAnalysis, editor: WeightEditor, loss: str,
                 alpha: float, bn_stats: dict | None, seed: int = 0):
        self.groups, self.editor, self.alpha, self.seed = groups, editor, alpha, seed
        nodes = path_nodes(groups[0], analysis)
        self.activation, self.slope = "identity", 0.0
        acts = [n for n in nodes if n.op in ("Relu", "LeakyRelu")]
        self.linear = all(_in_ops(n, LINEAR_OPS) for n in nodes if n not in acts) and len(acts) <= 1
        self.stats = None
        origin = groups[0].origins[0][0] if len(groups[0].origins) == 1 else None
        st = (bn_stats or {}).get(origin.outputs[0].name) if origin is not None else None
        first = acts[0] if acts else None
        single_act = first is None or (len(acts) == 1 and origin is not None and first.inputs[0] is origin.outputs[0])
        if loss == "bn" and st is not None and single_act and st.channels == self.editor.rows(origin)[0].shape[0]:
            self.kind, self.stats = "bn", st
            if first is not None:
                self.activation = "relu" if first.op == "Relu" else "leaky"
                self.slope = float(first.attrs.get("alpha", 0.01))
        else:
            self.kind = "weights"

    def _rows(self, idx: list[int], bits: dict[str, int] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows [n, D] over the origins in name order, biases [n, K], float row norms per origin [n, K])."""
        fs, bs, ns = [], [], []
        for i in idx:
            parts, biases, norms = [], [], []
            for node, c in sorted(self.groups[i].origins, key=lambda o: o[0].name):
                rows, b = self.editor.rows(node)
                row = rows[c]
                norms.append(float(np.linalg.norm(row)))
                parts.append(fake_quant_row(row, bits[node.name]) if bits and node.name in bits else row)
                biases.append(b[c])
            fs.append(np.concatenate(parts))
            bs.append(biases)
            ns.append(norms)
        return np.array(fs), np.array(bs, np.float64), np.array(ns, np.float64)

    def grams(self, targets: list[int], sources: list[int], bits: dict[str, int] | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cross [T, S], source Gram [S, S], target squared norms [T]); targets run in float,
        sources as quantized by `bits` (float when None)."""
        ft, bt, _ = self._rows(targets, None)
        fs, bs, ns = self._rows(sources, bits)
        if self.kind == "weights":
            return udfc.weights_grams(ft, bt, fs, bs, self.alpha)
        chan = lambda idx: [self.groups[i].origins[0][1] for i in idx]  # noqa: E731
        ct, cs = chan(targets), chan(sources)
        # |γ| as the std, not the ε-corrected `BNStats.output_mean_std` (they differ only where σ² ~ ε): measured,
        # the corrected one moved ResNet-56 `--prune 0.3` from 89.48 to 89.09 top-1
        gamma, beta = np.abs(self.stats.gamma.astype(np.float64)), self.stats.beta.astype(np.float64)
        src_std = gamma[cs] * np.linalg.norm(fs, axis=1) / np.where(ns[:, 0] > 0, ns[:, 0], 1.0)
        g = udfc.moment_gram(np.concatenate([ft, fs]), np.concatenate([beta[ct], beta[cs]]),
                             np.concatenate([gamma[ct], src_std]), self.activation, self.slope, seed=self.seed)
        t = len(targets)
        return g[:t, t:], g[t:, t:], np.diag(g)[:t]


def compensate_pruned(model: FamilyModel, keep: list[int], drop: list[int], partners: str,
                      bits: dict[str, int] | None = None, requant: FamilyModel | None = None) -> dict:
    """Rebuild each dropped group from kept ones of its family, before the surgery.

    single: the partner m with the smallest ℓ(s*) among s* > 0, W2[:, m] += s*·W2[:, n];
    nnls: W2[:, j] += c_j·W2[:, n] for the non-negative least-squares c (only on a linear path;
    otherwise single). With `bits` the partners run quantized (Q_m) and each added column is divided
    by the partner's s′ from the `requant` model (the weights loss with αq: the later `udfc-requant`
    pass multiplies W2[:, m] by that s′, which leaves the merged part at s*·W2[:, n]). Returns the
    family's report row."""
    groups, editor = model.groups, model.editor
    cross, source, target = model.grams(drop, keep, bits)
    s_req = np.ones(len(keep))
    if bits and requant is not None:
        c_q, s_q, _ = requant.grams(keep, keep, bits)
        s_req = udfc.requant_scales(np.diag(c_q), np.diag(s_q))
    use_nnls = partners == "nnls" and model.linear
    scales, errors, merged = [], [], 0
    if use_nnls:
        for i, n in enumerate(drop):
            c, err = udfc.nnls_from_gram(source, cross[i], float(target[i]))
            for j in np.flatnonzero(c > 0):
                editor.add_columns(groups[keep[j]], groups[n], float(c[j] / s_req[j]))
                scales.append(float(c[j]))
            merged += int(np.any(c > 0))
            errors.append(err)
    else:
        s, loss = udfc.scales_from_gram(cross, np.diag(source), target)
        for i, (n, best) in enumerate(zip(drop, udfc.best_partners(s, loss))):
            if best is None:
                errors.append(float(target[i]))
                continue
            j, sj, err = best
            editor.add_columns(groups[keep[j]], groups[n], sj / float(s_req[j]))
            scales.append(sj)
            errors.append(err)
            merged += 1
    total = float(np.sum(target))
    return {
        "dropped": len(drop), "merged": merged, "loss": model.kind, "partners": "nnls" if use_nnls else "single",
        "scale_min": round_sig(min(scales)) if scales else None, "scale_median": round_sig(np.median(scales)) if scales else None,
        "scale_max": round_sig(max(scales)) if scales else None,
        "predicted_error": round_sig(float(np.sum(errors)) / total) if total > 0 else 0.0,
    }


def compensate_quantized(graph: gs.Graph, bits: dict[str, int], alpha_q: float) -> tuple[list[dict], dict]:
    """W2[:, m] *= s′*_m (weights loss, `dfc.compensate.udfc`) for every compensable group whose origins are
    quantized, family by family in
    topological order of the last producer (so a consumer is rescaled before its own weights are
    quantized; residual streams, whose consumers come before their last producer, use the consumer
    weights as they are then). Edits the graph's weights; returns (report rows, skipped reasons)."""
    analysis = ChannelAnalysis(graph)
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    editor = WeightEditor()
    families: dict[tuple, list[Group]] = defaultdict(list)
    skipped: dict[str, int] = defaultdict(int)
    for g in analysis.groups:
        if not g.origins or not g.sinks or not all(n.name in bits for n, _ in g.origins):
            continue
        problem = path_problem(g, analysis)
        if problem is None:
            families[g.family].append(g)
        else:
            skipped[problem] += 1
    rows = []
    for fam in sorted(families, key=lambda f: max(order[id(n)] for n, _ in families[f][0].origins)):
        groups = families[fam]
        model = FamilyModel(groups, analysis, editor, "weights", alpha_q, None)
        idx = list(range(len(groups)))
        cross, source, target = model.grams(idx, idx, bits)
        c, q = np.diag(cross), np.diag(source)
        s = udfc.requant_scales(c, q)
        for g, sg in zip(groups, s):
            editor.scale_columns(g, float(sg))
        before = udfc.requant_losses(c, q, target, np.ones(len(s))).sum()
        after = udfc.requant_losses(c, q, target, s).sum()
        rows.append({"layer": family_name(fam), "channels": len(groups),
                     "scale_min": round_sig(s.min()), "scale_max": round_sig(s.max()),
                     "predicted_error_before": round_sig(before), "predicted_error_after": round_sig(after)})
    editor.commit("requant")
    return rows, dict(skipped)


def family_name(fam: tuple[str, ...]) -> str:
    return fam[0] if len(fam) == 1 else f"{fam[0]} (+{len(fam) - 1} layers)"


def round_sig(v) -> float:
    """v to 6 significant digits (report numbers)."""
    return float(f"{float(v):.6g}")


def removal_errors(model: FamilyModel, partners: str, compensable: bool) -> tuple[np.ndarray, np.ndarray]:
    """Predicted error at the consumers of removing each group alone (the `udfc` pruning criterion):
    ‖W2[:, n]‖² · E‖a_n − â_n‖², â_n the UDFC rebuild of a_n from the family's other groups (NNLS or
    the best single partner; nothing when the group is not compensable, so E‖a_n‖²), and the plain removal error
    ‖W2[:, n]‖² · E‖a_n‖² beside it (one computation of the Gram matrices for both)."""
    idx = list(range(len(model.groups)))
    cross, source, target = model.grams(idx, idx)
    err = np.array(target, dtype=np.float64)
    if compensable and len(idx) > 1:
        if partners == "nnls" and model.linear:
            for n in idx:
                others = idx[:n] + idx[n + 1:]
                err[n] = udfc.nnls_from_gram(source[np.ix_(others, others)], cross[n, others], float(target[n]))[1]
        else:
            s, loss = udfc.scales_from_gram(cross, np.diag(source), target)
            np.fill_diagonal(s, 0.0)
            err = np.where(s > 0, loss, target[:, None]).min(1)
    norms = consumer_norms(model.groups, model.editor)
    return err * norms, np.asarray(target, np.float64) * norms


def consumer_norms(groups: list[Group], editor: WeightEditor) -> np.ndarray:
    """‖W2[:, n]‖² summed over every consumer of each group."""
    out = np.zeros(len(groups))
    for k, g in enumerate(groups):
        for node, _, feats in g.sinks:
            w = editor.current(node)
            out[k] += float((w[:, feats] ** 2).sum() if _sink_axis(node) == 1 else (w[feats] ** 2).sum())
    return out
