"""Channel ranking criteria on the BN-folded weights of a group's origin layers (mean over its origins), and the
pruning scopes.

  l1 = Σ|W[o]|,  l2 = ‖W[o]‖₂,  paoding = Σ|W[o]| / (k_h·k_w·C_in)  (PAODING's filter "scale", Meng et al. 2022),
  l1-prebn = Σ|W[o]| of the filter before BN folding (W / k, k = γ/√(σ²+ε) from the kept BN statistics);
  udfc = ‖W2[:, o]‖² · E‖a_o − â_o‖², the consumers' error after UDFC rebuilds channel o from the others
  (`dfc.compensate.compensation.removal_errors`; computed by the schedule, which has the family models).
Scopes: `inner` (block-private groups: no residual join, no graph output), `all` (residual streams too).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfc.graph import ir
from dfc.graph.bn_stats import ESTIMATED
from dfc.prune.channels import Group

CRITERIA = ("udfc", "l1", "l2", "paoding", "l1-prebn")
SCOPES = ("inner", "all")


def filter_scores(node: gs.Node, criterion: str, bn_stats=None) -> np.ndarray:
    """Per output channel of a Conv/Gemm/MatMul: l1, l2 or PAODING scale of its (folded) filter;
    `l1-prebn`: l1 of the filter before BN folding, W / k with k = γ/√(σ²+ε) from the kept BN stats."""
    w = ir.const_value(node.inputs[1]).astype(np.float64)
    rows = ir.weight_rows(node, w)
    if criterion == "l1-prebn":
        st = (bn_stats or {}).get(node.outputs[0].name)
        if st is not None and st.source != ESTIMATED and st.channels == rows.shape[0]:
            rows = rows / np.maximum(np.abs(st.gamma / np.sqrt(st.var + st.eps)), 1e-12)[:, None]
        return np.abs(rows).sum(1)
    if criterion == "l2":
        return np.sqrt((rows ** 2).sum(1))
    l1 = np.abs(rows).sum(1)
    return l1 / rows.shape[1] if criterion == "paoding" else l1


def relative(scores: np.ndarray, plain: np.ndarray | None = None) -> np.ndarray:
    """`scores` over the sum of `plain` (the scores themselves when None): the share of the family's total."""
    total = float(np.sum(scores if plain is None else plain))
    return np.asarray(scores, np.float64) / total if total > 0 else np.asarray(scores, np.float64)


def group_scores(groups: list[Group], criterion: str, bn_stats=None) -> np.ndarray:
    """Mean criterion over each group's weight origins (a group of only padded zeros scores 0)."""
    cache: dict[int, np.ndarray] = {}
    out = np.zeros(len(groups))
    for k, g in enumerate(groups):
        vals = []
        for node, c in g.origins:
            if id(node) not in cache:
                cache[id(node)] = filter_scores(node, criterion, bn_stats)
            vals.append(cache[id(node)][c])
        out[k] = float(np.mean(vals)) if vals else 0.0
    return out


def in_scope(g: Group, scope: str) -> bool:
    return not g.blocked and (scope == "all" or not g.residual)
