"""`prune`: structured pruning by graph surgery (PAODING-style criteria, progressive schedule).

1. Dead channels (identically zero groups) are removed first, always: exact.
2. With ratio R > 0, the groups in scope (`inner`: block-private groups, no residual join and no
   graph output; `all`: residual streams too) are removed in steps of `step` until R of every
   layer's groups are gone (uniform), or R of all groups ranked together (`rank` global; "auto": both, checked
   on the probe, see below). The
   graph is re-analysed and the groups re-ranked after every step.
With a target and `depth`, whole residual branches are removed first (`dfc.prune.branches`: y = S + f(S) becomes
y = S + E[f(S)], least probe error per unit of predicted cost first, measured rounds), channels after.
Criteria on the BN-folded weights of a group's origin layers (mean over its origins):
  l1 = Σ|W[o]|,  l2 = ‖W[o]‖₂,  paoding = Σ|W[o]| / (k_h·k_w·C_in)  (PAODING's filter "scale"),
  l1-prebn = Σ|W[o]| of the filter before BN folding;
  udfc (default) = ‖W2[:, o]‖² · E‖a_o − â_o‖², the consumers' error after UDFC rebuilds channel o
  from the others (`dfc.compensate.compensation.removal_errors`; plain removal error when not compensating).
With `paoding`, dense layers are pruned pair-wise instead (`dfc.prune.pairwise`): a removed neuron's
outgoing weights are merged into its most similar survivor's.
With `compensate` = udfc every removed group is first rebuilt from the kept groups of its
family by rescaling their consumer weights (`dfc.compensate.compensation.compensate_pruned`): one partner or a
non-negative combination (`partners`), on the BN-moment or the weights loss (`loss`); with
`weight_bits` = (wbits, first_last_bits) the partners' filters are taken as they will be quantized.
With `check` (default) the UDFC result is verified: the same schedule runs once with and once without
compensation, each on its own copy, and the one whose outputs are closer (mean squared error) to
the unpruned graph's on synthetic probe inputs is kept (`dfc.measure.probe`: the BNS calibration samples
when the run has them, else Gaussian noise in the input space), so compensation never makes the
pruned model worse on those inputs; the report gives both errors.
A "layer" (family) is the set of layers that produce the group's channels: one conv for inner
groups; all the convs and shortcut pads that feed one residual stream for residual groups.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import onnx_graphsurgeon as gs

from dfc.graph import ir
from dfc.prune import pairwise
from dfc.measure import probe
from dfc.prune.channel_budget import LayerCosts, aligned_keep, pick_chunks
from dfc.prune.channels import ChannelAnalysis, Group
from dfc.prune.criteria import group_scores, in_scope, relative
from dfc.compensate.compensation import FamilyModel, WeightEditor, compensate_pruned
from dfc.compensate.compensation import consumer_norms, family_name, path_problem, removal_errors, round_sig, skipped_notes
from dfc.compensate.sink_moments import group_moments
from dfc.errors import DfcError
from dfc.prune.intervals import activation_bounds
from dfc.options.schema import by_name, check_value
from dfc.pipeline import Context, Pass, register
from dfc.progress import manual_bar
from dfc.prune.targets import KINDS as TARGET_KINDS, TargetMeter
from dfc.measure.runtime import nchwc_block
from dfc.prune.surgery import is_dead, remove_groups

TARGET_ROUNDS = 3
UNIFORM_MAX = 0.95  # the largest uniform ratio a target search tries
PROBE_SAMPLES, PROBE_SALT = 256, 3
DEPTH_PROBE_SAMPLES = 64  # per candidate branch and removal: one ORT run each


@register
class Prune(Pass):
    name = "prune"

    @classmethod
    def default_options(cls):
        return {"ratio": 0.0, "scope": "inner", "criterion": "udfc", "step": 0.05, "rank": "uniform",
                "compensate": "none", "partners": "nnls", "loss": "bn", "alpha_p": 0.0, "alpha_q": 1000.0,
                "weight_bits": None, "check": True, "multiple": 1, "target": None, "quant": None, "threads": 2,
                "latency_batch": 64, "depth": False}

    def run(self, graph: gs.Graph, ctx: Context) -> gs.Graph:
        o = self.options
        schema = by_name()  # the options' own rules, named as this pass's options
        for key, name in (("scope", "prune_scope"), ("criterion", "criterion"), ("compensate", "compensate"),
                          ("partners", "udfc_partners"), ("loss", "udfc_loss"), ("step", "prune_step"),
                          ("multiple", "channel_multiple"), ("rank", "prune_rank")):
            check_value(schema[name], o[key], f"prune: {key}")
        if o["target"] is not None:
            kind, goal = o["target"]
            if kind not in TARGET_KINDS:
                raise DfcError(f"prune: target kind must be one of {', '.join(TARGET_KINDS)}, got {kind!r}")
            check_value(schema["target_" + kind], goal, f"prune: target {kind}")
        graph = ir.infer_shapes(graph)
        before = _layer_shapes(graph)
        analysis = ChannelAnalysis(graph)
        res: dict = {"ratio": o["ratio"], "scope": o["scope"], "criterion": o["criterion"], "step": o["step"],
                     "global": o["rank"] == "global", "multiple": int(o["multiple"]),
                     "blocked": _blocked_summary(analysis.groups)}
        dead = [g for g in analysis.groups if is_dead(g, analysis)]
        graph = remove_groups(graph, analysis, dead, ctx)
        res["dead_groups_removed"] = len(dead)
        if o["target"] is not None and o["depth"]:
            graph, res["depth"] = self._remove_branches(graph, ctx)
            dead = True  # the analysis is stale
        if o["ratio"] > 0 or o["target"] is not None:
            if o["check"] and (o["compensate"] != "none" or o["rank"] == "auto"):
                graph, stats = self._checked_schedule(graph, ctx)
            else:
                runner = self if o["rank"] != "auto" else Prune(**{**o, "rank": "uniform"})
                runner._meter = self._meter
                graph, stats = runner._schedule(graph, ctx, None if dead else analysis)
            res.update(stats)
        res["layers"] = _layer_report(before, _layer_shapes(graph))
        _blocked_kernel_note(res["layers"], ctx)
        ctx.results["prune"] = res
        return graph

    # ---------------------------------------------------------------- schedule

    def _checked_schedule(self, graph: gs.Graph, ctx: Context) -> tuple[gs.Graph, dict]:
        """The schedule with and without compensation (and, with `rank` "auto", with uniform and global
        ranking) on copies of `graph`; keeps the candidate closest to `graph` on the probe inputs, so compensation
        never makes the result worse there and the ranking that suits the model is taken (ResNet-56 0.3 inner:
        uniform, probe MSE 2.44 vs 5.07 global, top-1 89.48 vs 87.71; EfficientNet-Lite0 0.1: global, 0.32 vs 0.67,
        top-1 83.4 vs 72.2). Unchecked, with a note, when no probe batch can be made."""
        o = self.options
        x = probe.inputs(graph, ctx, PROBE_SAMPLES, salt=PROBE_SALT, purpose="prune: the check of UDFC compensation")
        ranks = ["uniform", "global"] if o["rank"] == "auto" else [o["rank"]]
        comps = [o["compensate"], "none"] if o["compensate"] != "none" else ["none"]
        if x is None:
            return Prune(**{**o, "rank": ranks[0]})._schedule(graph, ctx, None)
        base = ir.export_model(graph)
        ref = probe.outputs(base, x)
        trials = {}
        for comp in comps:
            for rank in ranks:
                runner = Prune(**{**o, "compensate": comp, "rank": rank})
                runner._meter = self._target_meter(graph, ctx)
                tctx = probe.trial_context(ctx)
                name = f"{comp}, {rank}"
                g, stats = runner._schedule(ir.import_graph(base), tctx, None, desc=f"prune ({name})")
                trials[(comp, rank)] = (g, stats, tctx, probe.mse(ref, probe.outputs(g, x)))
        best = {comp: ranks[min((trials[(comp, r)][3], i) for i, r in enumerate(ranks))[1]] for comp in comps}  # per comp, its best rank (ties: the first)
        err = {comp: trials[(comp, best[comp])][3] for comp in comps}
        pick = comps[0] if err[comps[0]] <= err[comps[-1]] else comps[-1]
        g, stats, tctx, _ = trials[(pick, best[pick])]
        probe.adopt(ctx, tctx)
        stats["global"] = best[pick] == "global"
        stats["ranking_check"] = {"probe": probe.source(ctx), "samples": int(len(x)), "kept": best[pick],
                                  "mse": {f"{c}, {r}": round_sig(t[3]) for (c, r), t in trials.items()}}
        if o["compensate"] == "none":
            return g, stats
        err_c, err_n = err[comps[0]], err["none"]
        check = {"probe": probe.source(ctx), "samples": int(len(x)), "mse_compensated": round_sig(err_c),
                 "mse_plain": round_sig(err_n), "kept": pick}
        if pick == "none":
            ctx.note(f"prune: UDFC compensation did not reduce the output error on {len(x)} {check['probe']} probe inputs "
                     f"(MSE {err_c:.4g} with, {err_n:.4g} without); kept plain removal")
        stats["compensation"] = {**trials[(comps[0], best[comps[0]])][1].get("compensation", {}), "used": pick != "none",
                                 "check": check}
        return g, stats

    _meter: TargetMeter | None = None

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
        from dfc.passes.quantize import weight_bit_plan

        return weight_bit_plan(graph, q["wbits"], q["first_last_bits"])

    def _multiple_of(self, fam_groups: list[Group]) -> int:
        """The channel multiple of a family: `multiple` when every layer producing it is a Conv (the NCHWc kernels'
        block), 1 for dense layers."""
        k = int(self.options["multiple"])
        return k if k > 1 and all(n.op == "Conv" for n, _ in fam_groups[0].origins) else 1

    def _schedule(self, graph: gs.Graph, ctx: Context, analysis: ChannelAnalysis | None, desc: str = "prune"
                  ) -> tuple[gs.Graph, dict]:
        """Progressive pruning; `analysis` of `graph` when the caller already has it. With a target, rounds of
        (search to the predicted target, measure) until the measurement meets it (`_target_rounds`)."""
        o = self.options
        if o["target"] is not None:
            return self._target_rounds(graph, ctx, analysis, desc)
        ratio, step = float(o["ratio"]), float(o["step"])
        steps = max(1, math.ceil(ratio / step - 1e-9))

        def want(k, graph, families, n0, removed, scores_of):
            if k > steps:
                return None
            return self._targets(families, n0, removed, min(ratio, k * step), scores_of)

        return self._steps(graph, ctx, analysis, desc, want, steps)

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
            total = stats if total is None else _merge_stats(total, stats)
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

    def _steps(self, graph: gs.Graph, ctx: Context, analysis: ChannelAnalysis | None, desc: str, want_of, total: int
               ) -> tuple[gs.Graph, dict]:
        """The progressive schedule: per step k, `want_of(k, graph, families, n0, removed, scores_of)` says how many
        groups each family loses (None: stop); the groups are re-analysed and re-ranked after every step."""
        o = self.options
        scope = o["scope"]
        analysis = analysis or ChannelAnalysis(graph)
        start = [g for g in analysis.groups if in_scope(g, scope)]
        if not start:
            ctx.note(f"prune: no channel group is prunable in scope {scope!r}; nothing was pruned")
            return graph, {"groups_in_scope": 0, "groups_removed": 0, "pairs_merged": 0, "steps": 0}
        if o["criterion"] == "l1-prebn" and not ctx.bn_stats.measured():
            ctx.note("prune: --criterion l1-prebn needs BN statistics and the model has none; ranking by l1 of the folded filters")
        n0 = Counter(g.family for g in start)
        removed: Counter = Counter()
        merged, impact_used, dense_layers = 0, None, set()
        comp: dict[str, dict] = {}
        skipped: Counter = Counter()
        bits = None
        if o["weight_bits"] is not None and o["compensate"] != "none":
            from dfc.passes.quantize import weight_bit_plan

            bits = weight_bit_plan(graph, *o["weight_bits"])
        bar = manual_bar(desc, total=total, unit="step")
        k = 0
        while True:
            k += 1
            if k > 1:
                analysis = ChannelAnalysis(graph)
            families: dict[tuple, list[Group]] = defaultdict(list)
            for g in analysis.groups:
                if in_scope(g, scope) and g.family in n0:
                    families[g.family].append(g)
            scored: dict[tuple, np.ndarray] = {}

            def scores_of(fam: tuple) -> np.ndarray:  # once per family and step (global ranking needs them too)
                if fam not in scored:
                    scored[fam] = self._scores(families[fam], analysis, ctx)
                return scored[fam]

            want = want_of(k, graph, families, n0, removed, scores_of)
            if want is None:
                break
            bar.update(1)
            chosen: list[Group] = []
            pairs = []
            bounds = None
            editor = WeightEditor()
            for fam, count in want.items():
                if count <= 0:
                    continue
                groups = families[fam]
                if o["criterion"] == "paoding" and pairwise.pairable(groups):
                    if bounds is None:
                        bounds = _input_bounds(graph, ctx)
                    fam_pairs, used = pairwise.choose_pairs(graph, groups, count, bounds)
                    impact_used = used if impact_used is None else impact_used and used
                    pairs += fam_pairs
                    chosen += [d for _, d in fam_pairs]
                    dense_layers.add(fam)
                else:
                    drop = sorted(np.argsort(scores_of(fam), kind="stable")[:count].tolist())
                    chosen += [groups[i] for i in drop]
                    if o["compensate"] != "none":
                        self._compensate(groups, drop, analysis, editor, bits, ctx, comp, skipped)
                removed[fam] += count
            for keep, drop in pairs:
                editor.add_columns(keep, drop, 1.0)
            editor.commit(f"merged{k}")
            merged += len(pairs)
            graph = remove_groups(graph, analysis, chosen, ctx)
        bar.close()
        if impact_used is False:
            ctx.note("prune: pair-wise pruning ranked pairs by saliency only (no interval bound reaches the outputs)")
        for line in skipped_notes(skipped, "removed channel group(s)"):
            ctx.note(f"prune: {line}")
        stats = {"groups_in_scope": sum(n0.values()), "groups_removed": sum(removed.values()),
                 "pairs_merged": merged, "pairwise_layers": len(dense_layers), "steps": k - 1, "layers_in_scope": len(n0)}
        if o["compensate"] != "none":
            stats["compensation"] = {"method": o["compensate"], "partners": o["partners"], "loss": o["loss"],
                                     "alpha_p": o["alpha_p"], "partners_quantized": bits is not None,
                                     "layers": list(comp.values())}
        return graph, stats

    def _compensate(self, groups: list[Group], drop: list[int], analysis: ChannelAnalysis, editor: WeightEditor,
                    bits: dict | None, ctx: Context, comp: dict, skipped: Counter) -> None:
        """UDFC merges of one family's dropped groups into its kept ones; accumulates the report."""
        o = self.options
        problem = path_problem(groups[0], analysis)
        if problem is not None:
            moments = group_moments(groups, ctx.bn_stats)
            if moments is None or not all(editor.add_mean(groups[i], float(moments[0][i])) for i in drop):
                skipped[problem] += len(drop)
                return
            mean, second = moments
            norms = consumer_norms([groups[i] for i in drop], editor)
            plain = float(norms @ second[drop])
            row = {"loss": "bn-mean", "partners": "mean", "dropped": len(drop), "merged": len(drop), "scale_min": None,
                   "scale_median": None, "scale_max": None,
                   "predicted_error": round_sig(float(norms @ (second[drop] - mean[drop] ** 2)) / plain) if plain > 0 else 0.0}
            self._accumulate(comp, groups, row)
            return
        gone = set(drop)
        keep = [i for i in range(len(groups)) if i not in gone]
        model = FamilyModel(groups, analysis, editor, o["loss"], float(o["alpha_p"]), ctx.bn_stats, ctx.seed)
        requant = FamilyModel(groups, analysis, editor, "weights", float(o["alpha_q"]), None) if bits else None
        row = compensate_pruned(model, keep, drop, o["partners"], bits, requant)
        self._accumulate(comp, groups, row)

    @staticmethod
    def _accumulate(comp: dict, groups: list[Group], row: dict) -> None:
        name = family_name(groups[0].family)
        acc = comp.setdefault(name, {"layer": name, "loss": row["loss"], "partners": row["partners"], "dropped": 0,
                                     "merged": 0, "steps": []})
        acc["dropped"] += row["dropped"]
        acc["merged"] += row["merged"]
        acc["steps"].append({k: row[k] for k in ("merged", "scale_min", "scale_median", "scale_max", "predicted_error")})

    def _scores(self, groups: list[Group], analysis: ChannelAnalysis, ctx: Context) -> np.ndarray:
        """Criterion per group, lowest pruned first, as a fraction of the family's total (`relative`): `udfc`, the
        predicted consumer error after compensation over the error of removing every group of the family without
        it (the family's share of the consumers' signal); the norms over their sum. Within a family this is the
        plain ranking; across families (`rank` global) it compares what each layer loses of its own signal, so a
        narrow, sensitive layer is not emptied because its errors are small in absolute terms."""
        o = self.options
        if o["criterion"] != "udfc":
            return relative(group_scores(groups, o["criterion"], ctx.bn_stats))
        rescalable = path_problem(groups[0], analysis) is None
        moments = None if rescalable else group_moments(groups, ctx.bn_stats)
        if moments is not None:  # a Clip or depthwise conv on the path: the BN model of what the consumers read
            mean, second = moments
            norms = consumer_norms(groups, WeightEditor())
            err = second - mean ** 2 if o["compensate"] != "none" else second
            return relative(err * norms, second * norms)
        model = FamilyModel(groups, analysis, WeightEditor(), o["loss"], float(o["alpha_p"]), ctx.bn_stats, ctx.seed)
        err, plain = removal_errors(model, o["partners"], o["compensate"] != "none" and rescalable)
        return relative(err, plain)

    def _targets(self, families: dict, n0: Counter, removed: Counter, r: float, score) -> dict:
        """How many groups each family loses in this step (each keeps at least one; with a channel multiple K, a
        Conv family keeps a multiple of K or stays whole, `dfc.prune.channel_budget`)."""
        multiple = {f: self._multiple_of(families[f]) for f in families}
        if self.options["rank"] != "global":
            return {f: (n0[f] - aligned_keep(n0[f], r, multiple[f])) - removed[f] for f in families}
        # global: rank every candidate by its criterion, a fraction of its own layer's total (`_scores`)
        total = round(r * sum(n0.values())) - sum(removed.values())
        if any(k > 1 for k in multiple.values()):  # chunks of K channels, cheapest error per channel first
            return dict(pick_chunks(families, n0, score, multiple.get, float(total), _ChannelCount(), exact=True))
        ranked = []
        for fam in families:
            for s in score(fam):
                ranked.append((s, fam))
        ranked.sort(key=lambda t: t[0])
        want: Counter = Counter()
        for _, fam in ranked:
            if total <= 0:
                break
            if n0[fam] - removed[fam] - want[fam] > 1:
                want[fam] += 1
                total -= 1
        return dict(want)


def tightened_aim(aim: float, goal: float, measured: float, predicted: float) -> float:
    """The next round's aim after a measurement that missed `goal`: the miss taken as a ratio and as an offset from
    the prediction (a size prediction misses by the bytes of the quantizers), whichever aims lower."""
    return min(aim * goal / measured, predicted - (measured - goal) * 1.05)


class _ChannelCount:
    """The cost model of a ratio of channels: every channel costs 1 (`pick_chunks`)."""

    def __init__(self):
        self.dropped: Counter = Counter()

    def saved(self, fam: tuple, d: int) -> float:
        return float(d)


def _merge_stats(a: dict, b: dict) -> dict:
    """The counts of two rounds of the schedule added; the compensation layers of both listed."""
    out = dict(a)
    for key in ("groups_removed", "pairs_merged", "steps"):
        out[key] = a.get(key, 0) + b.get(key, 0)
    if "compensation" in a and "compensation" in b:
        out["compensation"] = {**a["compensation"], "layers": a["compensation"]["layers"] + b["compensation"]["layers"]}
    return out


def _input_bounds(graph: gs.Graph, ctx: Context) -> dict | None:
    """Interval bounds of the dense activations from the model's valid input box."""
    x = graph.inputs[0]
    if x.shape is None or len(x.shape) != 2:
        return None
    lo, hi = ctx.sample_range()  # notes the assumed box when the normalisation is unknown
    if not isinstance(x.shape[1], (int, np.integer)) or np.size(lo) not in (1, x.shape[1]):
        return None
    return activation_bounds(graph, np.broadcast_to(lo, (x.shape[1],)), np.broadcast_to(hi, (x.shape[1],)))


def _blocked_kernel_note(layers: list[dict], ctx: Context) -> None:
    """A note when pruning left Conv layers with channel counts ORT's blocked kernels do not take: on such a layer
    ORT falls back to slower kernels (or pads to the block), so latency need not follow the MACs."""
    block = nchwc_block()
    odd = [r for r in layers if r["op"] == "Conv" and r["channels_after"] and r["channels_after"] != r["channels_before"]
           and r["channels_before"] % block == 0 and r["channels_after"] % block] if block else []
    if odd:
        ctx.note(f"prune: {len(odd)} pruned Conv layer(s) have channel counts that are not multiples of {block} "
                 f"(e.g. {odd[0]['name']!r}: {odd[0]['channels_before']} -> {odd[0]['channels_after']}); ONNX Runtime's "
                 f"blocked conv kernels on this CPU work in blocks of {block}, so latency may not fall with the MACs")


def _blocked_summary(groups: list[Group]) -> list[dict]:
    counts: Counter = Counter()
    for g in groups:
        if g.blocked:
            counts[g.blocked[0]] += 1
    return [{"reason": r, "groups": n} for r, n in counts.most_common()]


def _layer_shapes(graph: gs.Graph) -> dict[str, dict]:
    """Per weighted layer: output channels, params (weight + bias) and MACs per sample (`dfc.graph.stats`)."""
    from dfc.graph.stats import layer_stats

    return {r.name: {"op": r.op, "channels": int(r.output_shape[1]) if len(r.output_shape) > 1 else None,
                     "params": r.params, "macs": r.macs}
            for r in layer_stats(ir.export_model(graph))}


def _layer_report(before: dict, after: dict) -> list[dict]:
    rows = []
    for name, b in before.items():
        a = after.get(name, {"channels": 0, "params": 0, "macs": 0})
        rows.append({"name": name, "op": b["op"], "channels_before": b["channels"], "channels_after": a["channels"],
                     "params_before": b["params"], "params_after": a["params"], "macs_before": b["macs"], "macs_after": a["macs"]})
    return rows
