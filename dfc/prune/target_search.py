"""The search toward a `--target-*` ratio: depth first (whole residual branches, `dfc.prune.branches`), then
channels, each stage in measured rounds that land the ratio in its band from either side (`dfc.prune.landing`). A
mixin of the `prune` pass (passes/prune.py)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import onnx
import onnx_graphsurgeon as gs

from dfc.graph import ir
from dfc.measure import probe
from dfc.prune.channel_budget import LayerCosts, aligned_keep, pick_chunks
from dfc.prune.channels import ChannelAnalysis, Group
from dfc.compensate.compensation import round_sig
from dfc.pipeline import Context
from dfc.prune.schedule import merge_stats
from dfc.prune.landing import BAND, FAST, LANDED, SLOW, Landing
from dfc.measure.latency import BUSY_CORES
from dfc.prune.target_meter import TargetMeter

SEARCH_ROUNDS = 6
AGAIN = "same graph, averaged into the round before"
UNIFORM_MAX = 0.95  # the largest uniform ratio a target search tries
PROBE_SAMPLES, PROBE_SALT = 256, 3
DEPTH_PROBE_SAMPLES = 64  # per candidate branch and removal: one ORT run each


@dataclass(eq=False)  # compared by identity (its context holds arrays)
class _State:
    """One round's result (or the search's start): the graph, its context (BN statistics, notes) and what was
    measured of it."""

    model: onnx.ModelProto
    ctx: Context
    stats: dict | None = None  # what the rounds that led here removed (None: nothing)
    aim: float = math.inf
    predicted: float | None = None
    measured: float | None = None
    margin: float = 0.0
    verdict: str | None = None


class TargetSearch:
    def _land(self, graph: gs.Graph, ctx: Context, meter: TargetMeter, run_round, first: dict, fallback: str
              ) -> tuple[gs.Graph, list[dict], "_State", list["_State"]]:
        """Rounds of (prune toward an aim, measure) until a result lands in the band (`dfc.prune.landing`), at most
        SEARCH_ROUNDS. A round that must remove more continues from the most-pruned result still above the goal, one
        that must remove less restarts from it (or from the start), so what an overshoot removed is given back.
        `run_round(graph, ctx, aim, first)` prunes toward `aim` and returns (graph, stats, predicted, exhausted);
        `first` holds what only the first round may use (an analysis of `graph`). A landed result far below where it
        settles best gets one centring round (`Landing.centring_aim`); the landed result nearer that point is kept.
        Without a landing, the result kept is `fallback`'s: "closest" (the largest measurement at or below the goal,
        else the smallest) or "slow" (the most-pruned result above the goal, else the start: a later stage finishes
        the search).
        Returns the graph, the rounds for the report, the kept state (its context to adopt) and every round's state."""
        kind = meter.kind
        land = Landing(float(self.options["target"][1]))
        start = _State(ir.export_model(graph), _fresh(ctx))
        states: list[_State] = []
        aim = land.first_aim(exact=kind == "macs")
        exact = kind != "latency"  # size and MACs measure the same on every run
        report, centring = [], False
        for rnd in range(SEARCH_ROUNDS):
            base = min((s for s in states if s.verdict == SLOW and s.aim > aim), key=lambda s: s.aim, default=start)
            tctx = _fresh(base.ctx)
            g = graph if rnd == 0 else ir.import_graph(base.model)
            g, stats, predicted, exhausted = run_round(g, tctx, aim, first if rnd == 0 else {})
            measured = meter.measured_ratio(g, tctx)
            st = _State(ir.export_model(g), tctx, stats if base.stats is None else merge_stats(base.stats, stats), aim,
                        predicted, measured, meter.margin, land.verdict(measured, meter.margin))
            if centring and _same_graph(st, states[-1]):  # the centring round gave nothing back: a second timing
                st = _measured_again(states[-1], st, land)
                prev = states[-1]
                report[-1].update(measured=round_sig(prev.measured), margin=round_sig(prev.margin), verdict=prev.verdict)
            states.append(st)
            report.append({"aim": round_sig(aim), "predicted": round_sig(predicted), "measured": round_sig(measured),
                           "margin": round_sig(meter.margin), "verdict": st.verdict,
                           "from": "start" if base is start else f"round {states.index(base) + 1}",
                           **({"busy_cores": round(meter.busy, 2)} if kind == "latency" and meter.busy > BUSY_CORES else {}),
                           **{k: v for k, v in (stats or {}).items() if k in ("groups_removed", "steps", "branches_removed")}})
            give_back = ((stats or {}).get("removed") or [{}])[-1].get("predicted_before")  # depth: before the last removal
            if st.verdict == LANDED and not centring and rnd + 1 < SEARCH_ROUNDS:
                nearer = land.centring_aim(aim, measured, meter.margin, exact, give_back)
                if nearer is not None:  # landed far below where it settles best: one round gives back toward it
                    aim, centring = nearer, True
                    report[-1]["then"] = "centring"
                    continue
            if land.slow and land.fast and any(_same_graph(st, s) for s in states[:-1]):
                break  # an aim inside the bracket rebuilt a graph already timed: no other graph lies between the slow
                # and the fast results (whole branches, PP-OCR: 0.28x apart)
            if (st.verdict == LANDED or centring or (st.verdict == SLOW and exhausted)
                    or not _removed(stats) and (base is not start or st.verdict == FAST)):
                # landed (or centred); nothing left to remove; or no removal between the last too-slow result and
                # the aim (the graph is that result again: no finer step exists, e.g. between whole branches)
                break
            aim = land.next_aim(aim, predicted, measured, meter.margin, give_back)
            if land.converged():
                break
        kept = _kept(states, start, land, fallback, exact)
        for st, row in zip(states, report):
            row["kept"] = st is kept
            if st is kept and row.get("busy_cores"):
                ctx.note(f"prune: the kept result was timed while other processes held {row['busy_cores']:g} cores "
                         "(after two pauses): its latency ratio is uncertain; run again on a quiet machine")
        return ir.import_graph(kept.model), report, kept, states

    def _remove_branches(self, graph: gs.Graph, ctx: Context) -> tuple[gs.Graph, dict]:
        """Depth pruning before channel pruning (`depth`): whole residual branches go, least probe error per unit of
        predicted cost first, until the cost model predicts the aim (`dfc.prune.branches.remove_toward`); measured
        rounds land it (`_land`): a result below the band gives branches back. Without a landing the stage keeps
        the most-pruned result above the goal and channel pruning takes what remains of the target; a landing ends
        the search (the report's `target`). At one latency, removing branches loses less than removing channels
        once fine-tuned: ResNet-56 at 0.58×, 12 branches + kd 89.3 top-1 vs channels 79.7."""
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

        candidates: list[int] = []

        def run_round(g: gs.Graph, tctx: Context, aim: float, first: dict):
            nodes.update({n.name: n for n in g.nodes})  # the round's own graph (an earlier round's may have lost them)
            g, rep = remove_toward(g, tctx.bn_stats, x, ref, cost, predicted, aim, desc="prune: residual branches")
            candidates.append(rep["candidates"])
            stats = {"removed": rep["removed"], "branches_removed": len(rep["removed"])}
            return g, stats, rep["predicted"], rep["predicted"] > aim

        graph, rounds, kept, states = self._land(graph, ctx, meter, run_round, {}, fallback="slow")
        probe.adopt(ctx, kept.ctx)
        report = {"candidates": candidates[0], "removed": (kept.stats or {}).get("removed", []), "rounds": rounds,
                  "probe": probe.source(ctx)}
        if kept.verdict == LANDED:
            report["target"] = self._target_record(kept, rounds, meter, stage="depth")
        else:  # its fast rounds: the channel stage may miss the goal from `kept` (`_meet_below_band`)
            self._depth_rounds = (states, rounds)
        return graph, report

    def _meet_below_band(self, graph: gs.Graph, ctx: Context, res: dict, stats: dict) -> gs.Graph:
        """Where the channel stage missed the goal (its scope exhausted) and a depth round met it below the band,
        that depth result is written: a target met by more than asked beats one missed (PP-OCR --target-size 0.5:
        channels exhausted at 0.589, two branches met it at 0.434)."""
        t = res.get("target") or {}
        states, rounds = getattr(self, "_depth_rounds", ([], []))
        fast = [state for state in states if state.verdict == FAST]
        if t.get("met", True) or not fast:
            return graph
        st = max(fast, key=lambda state: state.measured)  # the least pruned of them
        probe.adopt(ctx, st.ctx)
        for k in stats:  # what the channel stage reported describes a graph no longer written
            res.pop(k, None)
        res["channels_discarded"] = {"groups_removed": stats.get("groups_removed"), "measured": t.get("measured")}
        res["target"] = self._target_record(st, rounds, self._meter, stage="depth")
        res["depth"]["removed"] = (st.stats or {}).get("removed", [])
        for row, state in zip(rounds, states):
            row["kept"] = state is st
        ctx.note(f"prune: channels could not reach the target ({t.get('measured'):.3g}x at the end of their scope); "
                 f"kept the residual branches that meet it below the band instead ({st.measured:.3g}x)")
        return ir.import_graph(st.model)

    def _target_meter(self, graph: gs.Graph, ctx: Context) -> TargetMeter | None:
        """The reference and cost model of `target` (built once, shared by the checked schedule's trials)."""
        o = self.options
        if o["target"] is None:
            return None
        if self._meter is None:
            self._meter = TargetMeter(ir.infer_shapes(graph), o["target"][0], ctx, self._bit_plan(graph), o["quant"],
                                      batch=ctx.fixed_batch or int(o["latency_batch"]), threads=int(o["threads"]))
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
        """Channel pruning toward the target in measured rounds that land it (`_land`); every round is in the
        report (`target.search`); a result outside the band is a note."""
        o = self.options
        kind, goal = o["target"][0], float(o["target"][1])
        meter = self._target_meter(graph, ctx)
        bits = meter.bits

        def run_round(g: gs.Graph, tctx: Context, aim: float, first: dict):
            last: dict = {"exhausted": False, "predicted": None}

            def want(k, graph, families, n0, removed, scores_of):
                if o["rank"] != "global":
                    return self._uniform_toward(k, graph, families, n0, removed, scores_of, meter, aim, last)
                costs = LayerCosts.of(graph, families, meter.cost, bits if kind != "macs" else None)
                pred = meter.predicted_ratio(costs.total())
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

            est = max(1, math.ceil((1.0 - min(aim, 1.0)) / float(o["step"])))
            g, stats = self._steps(g, tctx, first.get("analysis"), f"{desc} -> {kind} {goal:g}", want, est)
            if last["predicted"] is None:
                last["predicted"] = meter.predicted_ratio(meter.layer_total(g))
            return g, stats, last["predicted"], last["exhausted"]

        graph, rounds, kept, _ = self._land(graph, ctx, meter, run_round, {"analysis": analysis}, fallback="closest")
        probe.adopt(ctx, kept.ctx)
        total = kept.stats or {"groups_in_scope": 0, "groups_removed": 0, "pairs_merged": 0, "steps": 0}
        total["target"] = self._target_record(kept, rounds, meter, stage="channels")
        how = f"{len(rounds)} search rounds; scope {o['scope']!r}, channel multiple {o['multiple']}"
        if kept.verdict == SLOW:
            ctx.note(f"prune: target {kind} {goal:g}x not met: the closest result measured {kept.measured:.3g}x ({how})")
        elif kept.verdict == FAST:
            ctx.note(f"prune: target {kind} {goal:g}x: no result landed in [{BAND * goal:.3g}x, {goal:g}x]; kept the "
                     f"closest one below it, {kept.measured:.3g}x ({how})")
        return graph, total

    def _target_record(self, kept: "_State", rounds: list[dict], meter: TargetMeter, stage: str) -> dict:
        o = self.options
        kind, goal = o["target"][0], float(o["target"][1])
        return {"kind": kind, "ratio": goal, "band": [round_sig(BAND * goal), goal], "measured": kept.measured,
                "margin": round_sig(kept.margin), "met": kept.measured <= goal, "landed": kept.verdict == LANDED,
                "predicted": kept.predicted, "stage": stage,
                # the cost model's error on the kept graph: (measured − predicted) / predicted
                "prediction_error": round_sig((kept.measured - kept.predicted) / kept.predicted) if kept.predicted else None, "search": rounds if stage == "channels" else [],
                "quantized": o["quant"] is not None, "cost_model": type(meter.cost).__name__,
                "layers_timed": getattr(meter.cost, "measured", None)}  # shapes timed now, not from the cache

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


def _fresh(ctx: Context) -> Context:
    """A trial copy of `ctx` (own BN statistics) that keeps its notes."""
    t = probe.trial_context(ctx)
    t.notes = list(ctx.notes)
    return t


def _same_graph(a: _State, b: _State) -> bool:
    return a.predicted == b.predicted and a.model.graph == b.model.graph


def _measured_again(landed: _State, again: _State, land: Landing) -> _State:
    """A centring round that rebuilt the landed graph: the two timings averaged into the landed state (their
    difference is the between-run noise, kept as its margin when larger); the round itself is not a candidate."""
    first = landed.measured
    landed.measured = (first + again.measured) / 2
    landed.margin = max(landed.margin, again.margin, abs(again.measured - first) / 2)
    landed.verdict = land.verdict(landed.measured, landed.margin)
    again.verdict = AGAIN
    return again


def _removed(stats: dict | None) -> bool:
    return bool(stats) and bool(stats.get("groups_removed") or stats.get("branches_removed"))


def _kept(states: list[_State], start: _State, land: Landing, fallback: str, exact: bool) -> _State:
    """The landed state nearest where it settles best (`Landing.better`), else the fallback's choice
    (`TargetSearch._land`)."""
    landed = [s for s in states if s.verdict == LANDED]
    if landed:
        best = landed[0]
        for s in landed[1:]:
            best = s if land.better((s.measured, s.margin), (best.measured, best.margin), exact) else best
        return best
    slow = [s for s in states if s.verdict == SLOW]
    if fallback == "slow":
        return min(slow, key=lambda s: s.measured, default=start)
    met = [s for s in states if s.measured + s.margin <= land.goal]
    if met:
        return max(met, key=lambda s: s.measured)
    return min(states, key=lambda s: s.measured)
