"""The search toward a `--target-*` ratio: depth first (whole residual branches, `dfc.prune.branches`), then
channels in measured rounds, each aiming at a ratio tightened by the last measured miss (`tightened_aim`). A mixin
of the `prune` pass (passes/prune.py)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from dfc.graph import ir
from dfc.measure import probe
from dfc.prune.channel_budget import LayerCosts, aligned_keep, pick_chunks
from dfc.prune.channels import ChannelAnalysis, Group
from dfc.compensate.compensation import round_sig
from dfc.pipeline import Context
from dfc.prune.schedule import merge_stats
from dfc.prune.target_meter import TargetMeter

TARGET_ROUNDS = 3
UNIFORM_MAX = 0.95  # the largest uniform ratio a target search tries
PROBE_SAMPLES, PROBE_SALT = 256, 3
DEPTH_PROBE_SAMPLES = 64  # per candidate branch and removal: one ORT run each


class TargetSearch:
    def _remove_branches(self, graph: gs.Graph, ctx: Context) -> tuple[gs.Graph, dict]:
        """Depth pruning before channel pruning (`depth`): whole residual branches go, least probe error per unit of
        predicted cost first, until the cost model predicts the target (`dfc.prune.branches.remove_toward`); then the
        graph is measured and, while the measurement misses, the aim is tightened as in `_target_rounds` (at most
        TARGET_ROUNDS rounds). Channel pruning then takes what remains of the target. At one latency, removing
        branches loses less than removing channels once fine-tuned: ResNet-56 at 0.58×, 12 branches + kd 89.3
        top-1 vs channels 79.7."""
        from dfc.prune.branches import remove_toward, residual_branches
        from dfc.prune.layer_cost import spec_of

        if not residual_branches(graph, ctx.bn_stats):
            return graph, {"candidates": 0, "removed": [], "rounds": [], "probe": None}
        meter = self._target_meter(graph, ctx)
        bits = meter.bits if meter.kind != "macs" else None
        x = probe.inputs(graph, ctx, DEPTH_PROBE_SAMPLES, salt=PROBE_SALT, purpose="prune: depth (branch removal)")
        if x is None:
            return graph, {"candidates": 0, "removed": [], "rounds": [], "probe": None, "skipped": "no probe inputs"}
        ref = probe.outputs(graph, x)
        nodes = {n.name: n for n in graph.nodes}

        def cost(branch) -> float:
            specs = [spec_of(nodes[name], (bits or {}).get(name, 32)) for name in branch.layers]
            return float(sum(meter.cost(s) for s in specs if s is not None))

        def predicted(g: gs.Graph) -> float:
            return meter.predicted_ratio(meter.layer_total(g))

        goal = float(self.options["target"][1])
        aim, report = goal, {"candidates": None, "removed": [], "rounds": [], "probe": probe.source(ctx)}
        for _ in range(TARGET_ROUNDS):
            graph, rep = remove_toward(graph, ctx.bn_stats, x, ref, cost, predicted, aim, desc="prune: residual branches")
            nodes.update({n.name: n for n in graph.nodes})
            report["candidates"] = report["candidates"] if report["candidates"] is not None else rep["candidates"]
            report["removed"] += rep["removed"]
            measured = meter.measured_ratio(graph)
            report["rounds"].append({"aim": round_sig(aim), "predicted": round_sig(rep["predicted"]),
                                     "measured": round_sig(measured), "margin": round_sig(meter.margin),
                                     "branches_removed": len(rep["removed"])})
            high = measured + meter.margin
            if high <= goal or rep["predicted"] > aim:  # met, or no branch left to remove
                break
            aim = tightened_aim(aim, goal, high, rep["predicted"])
        return graph, report

    def _target_meter(self, graph: gs.Graph, ctx: Context) -> TargetMeter | None:
        """The reference and cost model of `target` (built once, shared by the checked schedule's trials)."""
        o = self.options
        if o["target"] is None:
            return None
        if self._meter is None:
            self._meter = TargetMeter(ir.infer_shapes(graph), o["target"][0], ctx, self._bit_plan(graph), o["quant"],
                                      batch=int(o["latency_batch"]), threads=int(o["threads"]))
        return self._meter

    def _bit_plan(self, graph: gs.Graph) -> dict | None:
        q = self.options["quant"]
        if q is None:
            return None
        from dfc.quant.layers import weight_bit_plan

        return weight_bit_plan(graph, q["wbits"], q["first_last_bits"])

    def _multiple_of(self, fam_groups: list[Group]) -> int:
        """The channel multiple of a family: `multiple` when every layer producing it is a Conv (the NCHWc kernels'
        block), 1 for dense layers."""
        k = int(self.options["multiple"])
        return k if k > 1 and all(n.op == "Conv" for n, _ in fam_groups[0].origins) else 1

    def _target_rounds(self, graph: gs.Graph, ctx: Context, analysis: ChannelAnalysis | None, desc: str
                       ) -> tuple[gs.Graph, dict]:
        """Prune until the predicted target ratio is reached, measure the result (`TargetMeter.measured_ratio`); while
        the measurement misses the target, aim lower by the miss (goal · target / measured) and go on, at most
        TARGET_ROUNDS rounds. Every round is in the report (`target.search`); a miss is a note."""
        o = self.options
        kind, goal = o["target"][0], float(o["target"][1])
        meter = self._target_meter(graph, ctx)
        bits = meter.bits
        aim, rounds, total = goal, [], None
        for rnd in range(TARGET_ROUNDS):
            last: dict = {"exhausted": False, "predicted": None}

            def want(k, graph, families, n0, removed, scores_of, aim=aim, last=last):
                if o["rank"] != "global":
                    return self._uniform_toward(k, graph, families, n0, removed, scores_of, meter, aim, last)
                costs = LayerCosts.of(graph, families, meter.cost, bits if kind != "macs" else None)
                layers = costs.total()
                pred = meter.predicted_ratio(layers)
                last["predicted"] = pred
                if pred <= aim:
                    return None
                need = (pred - aim) * meter.reference  # the prediction is (layers + rest) / reference
                budget = min(need, float(o["step"]) * meter.layers0)
                got = pick_chunks(families, n0, scores_of, lambda f: self._multiple_of(families[f]), budget, costs, exact=False)
                if not got:
                    last["exhausted"] = True
                    return None
                last["predicted"] = meter.predicted_ratio(costs.total())
                return dict(got)

            est = max(1, math.ceil((1.0 - aim) / float(o["step"])))
            graph, stats = self._steps(graph, ctx, analysis if rnd == 0 else None, f"{desc} -> {kind} {goal:g}", want, est)
            measured = meter.measured_ratio(graph)
            rounds.append({"aim": round_sig(aim), "predicted": round_sig(last["predicted"]), "measured": round_sig(measured),
                           "margin": round_sig(meter.margin), "groups_removed": stats["groups_removed"], "steps": stats["steps"]})
            total = stats if total is None else merge_stats(total, stats)
            # met when the measurement is below the goal by more than its own uncertainty (a timing that meets
            # the goal only by its noise misses it as often when the output is measured again)
            high = measured + meter.margin
            if high <= goal or last["exhausted"]:
                break
            aim = tightened_aim(aim, goal, high, last["predicted"])
        measured = rounds[-1]["measured"]
        total["target"] = {"kind": kind, "ratio": goal, "measured": measured, "met": measured <= goal,
                           "predicted": rounds[-1]["predicted"], "search": rounds, "quantized": o["quant"] is not None,
                           "cost_model": type(meter.cost).__name__,
                           "layers_timed": getattr(meter.cost, "measured", None)}  # shapes timed now, not from the cache
        if measured > goal:
            ctx.note(f"prune: target {kind} {goal:g}x not met: the closest result measured {measured:.3g}x "
                     f"({'no more channels could go' if last['exhausted'] else f'{len(rounds)} search rounds'}"
                     f"; scope {o['scope']!r}, channel multiple {o['multiple']})")
        return graph, total

    def _uniform_toward(self, k: int, graph: gs.Graph, families: dict, n0: Counter, removed: Counter, scores_of,
                        meter: TargetMeter, aim: float, last: dict) -> dict | None:
        """The uniform schedule toward a target: at the first step, the smallest ratio whose aligned per-layer counts
        the cost model predicts at or below `aim` (bisection); then steps of `step` up to it."""
        o = self.options
        bits = meter.bits if meter.kind != "macs" else None
        multiple = {f: self._multiple_of(families[f]) for f in families}

        costs = LayerCosts.of(graph, families, meter.cost, bits)

        def predicted(r: float) -> float:
            costs.dropped = Counter({f: n0[f] - aligned_keep(n0[f], r, multiple[f]) for f in families})
            return meter.predicted_ratio(costs.total())

        if k == 1:
            lo, hi = 0.0, UNIFORM_MAX
            if predicted(hi) > aim:
                last["exhausted"], last["ratio"] = True, hi
            else:
                for _ in range(12):
                    mid = (lo + hi) / 2
                    lo, hi = (lo, mid) if predicted(mid) <= aim else (mid, hi)
                last["ratio"] = hi
        r = last["ratio"]
        step = float(o["step"])
        if (k - 1) * step >= r:
            last["predicted"] = predicted(0.0) if k > 1 else last.get("predicted")
            return None
        last["predicted"] = predicted(r) if k == 1 else last["predicted"]
        return self._targets(families, n0, removed, min(r, k * step), scores_of)


def tightened_aim(aim: float, goal: float, measured: float, predicted: float) -> float:
    """The next round's aim after a measurement that missed `goal`: the miss taken as a ratio and as an offset from
    the prediction (a size prediction misses by the bytes of the quantizers), whichever aims lower."""
    return min(aim * goal / measured, predicted - (measured - goal) * 1.05)
