"""Which layers give up channels, and how many: hardware-aligned counts and a cost budget for the pruning search.

- `allowed_drop(count, n0, multiple)`: a Conv layer keeps a multiple of `multiple` channels (at least one block) or
  stays whole, so ORT's NCHWc kernels (blocks of 8 with AVX2, 16 with AVX-512) run every pruned layer; the next
  chunk a layer can lose is what takes it down to the next lower multiple.
- `LayerCosts`: the graph's weighted layers as `dfc.prune.layer_cost.LayerSpec`s and, per channel family, the layers whose
  input (sinks), output (origins) or both (depthwise convs between them) lose channels with it; `saved(fam, d)` is the
  cost (MACs, bytes, ORT seconds) the model sheds when the family loses `d` more channels, with the families already
  chosen in this step taken off first.
- `pick_chunks`: the greedy global ranking of PAODING's progressive schedule, in chunks: repeatedly the chunk with the
  smallest predicted error per unit of cost saved (error: the criterion's share of its family, summed over the
  chunk's channels) until the step's budget is spent.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from dfc.graph import ir
from dfc.prune.layer_cost import LayerSpec, spec_of
from dfc.graph.ops import WEIGHTED


def allowed_drop(count: int, n0: int, multiple: int) -> int:
    """How many channels a layer of `count` channels (originally `n0`) loses next: down to the next lower multiple of
    `multiple` (at least `multiple` kept; `multiple` 1: one channel, at least one kept). 0 when it cannot lose any."""
    if multiple <= 1:
        return 1 if count > 1 else 0
    if n0 <= multiple or count <= multiple:
        return 0
    lower = (count - 1) // multiple * multiple
    return count - lower if lower >= multiple else 0


def aligned_keep(n0: int, ratio: float, multiple: int) -> int:
    """The kept count of a layer of `n0` channels under a uniform `ratio`: the multiple of `multiple` nearest to
    n0·(1 − ratio) (at least one block; the whole layer when it has no more than one block)."""
    if multiple <= 1:
        return max(1, n0 - round(ratio * n0))
    if n0 <= multiple:
        return n0
    keep = int(round(n0 * (1 - ratio) / multiple)) * multiple
    return n0 if keep >= n0 else max(multiple, keep)


@dataclass
class _Layer:
    spec: LayerSpec
    in_fam: tuple | None = None
    in_mult: int = 1  # input features per channel (a Gemm after Flatten reads H·W features per channel)
    out_fam: tuple | None = None


@dataclass
class LayerCosts:
    """Per-layer cost under this step's removals (see the module docstring)."""

    cost: object  # a dfc.prune.layer_cost cost: LayerSpec -> float
    layers: dict[str, _Layer] = field(default_factory=dict)
    touching: dict[tuple, list[str]] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)

    @classmethod
    def of(cls, graph: gs.Graph, families: dict[tuple, list], cost, bits: dict[str, int] | None = None) -> "LayerCosts":
        """`families`: family -> its groups (`dfc.prune.channels.Group`) in the shape-inferred `graph`; `bits`: weight bits per
        layer name when the model will be quantized."""
        self = cls(cost)
        for n in graph.nodes:
            if n.op in WEIGHTED:
                spec = spec_of(n, (bits or {}).get(n.name, 32))
                if spec is not None:
                    self.layers[n.name] = _Layer(spec)
        tensors = graph.tensors() if families else {}
        for fam, groups in families.items():
            g = groups[0]
            names = set()
            for node, _ in g.origins:
                if node.name in self.layers:
                    self.layers[node.name].out_fam = fam
                    names.add(node.name)
            for node, _, feats in g.sinks:
                if node.name in self.layers:
                    self.layers[node.name].in_fam, self.layers[node.name].in_mult = fam, len(feats)
                    names.add(node.name)
            for tname in g.members:
                t = tensors.get(tname)
                for c in ir.consumers(t) if t is not None else ():
                    lay = self.layers.get(c.name)
                    if lay is not None and lay.spec.depthwise and c.inputs[0] is t:
                        lay.in_fam = lay.out_fam = fam
                        names.add(c.name)
            self.touching[fam] = sorted(names)
        return self

    def _spec_now(self, lay: _Layer, extra: Counter | None = None) -> LayerSpec:
        extra = extra or Counter()
        d_in = (self.dropped[lay.in_fam] + extra[lay.in_fam]) * lay.in_mult if lay.in_fam else 0
        d_out = self.dropped[lay.out_fam] + extra[lay.out_fam] if lay.out_fam else 0
        if lay.spec.depthwise:
            return lay.spec.with_channels(c_in=lay.spec.c_in - d_in) if d_in else lay.spec
        return lay.spec.with_channels(lay.spec.c_in - d_in, lay.spec.c_out - d_out)

    def total(self) -> float:
        """The layers' cost with this step's removals."""
        return float(sum(self.cost(self._spec_now(lay)) for lay in self.layers.values()))

    def saved(self, fam: tuple, d: int) -> float:
        """Cost shed when `fam` loses `d` more channels."""
        extra = Counter({fam: d})
        return float(sum(self.cost(self._spec_now(self.layers[n])) - self.cost(self._spec_now(self.layers[n], extra))
                         for n in self.touching.get(fam, ())))


def pick_chunks(families: dict[tuple, list], n0: Counter, scores_of, multiple_of, budget: float, costs: LayerCosts,
                exact: bool) -> Counter:
    """Channels each family loses in this step: chunks (`allowed_drop`) taken cheapest first by
    Σ scores of the chunk's lowest-ranked channels / cost saved, until `budget` cost is saved. `exact`: stop at the
    chunk that would overshoot the budget by more than half of it (a ratio of channels); else (a target) go on until
    the budget is met. Updates `costs.dropped`."""
    order = {fam: np.sort(np.asarray(scores_of(fam), np.float64)) for fam in families}
    want: Counter = Counter()
    spent = 0.0
    while spent < budget:
        best = None
        for fam, groups in families.items():
            count = len(groups) - want[fam]
            d = allowed_drop(count, n0[fam], multiple_of(fam))
            if d <= 0:
                continue
            gain = costs.saved(fam, d)
            if gain <= 0:  # a timing that did not fall with the channels (noise, a kernel switch): ranked last
                gain = 1e-12
            err = float(order[fam][want[fam]:want[fam] + d].sum())
            key = (err / gain, fam)
            if best is None or key < best[0]:
                best = (key, fam, d, gain)
        if best is None:
            break
        _, fam, d, gain = best
        if exact and spent + gain - budget > budget - spent:
            break
        want[fam] += d
        costs.dropped[fam] += d
        spent += gain
    return want
