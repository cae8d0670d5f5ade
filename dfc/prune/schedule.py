"""The progressive pruning schedule (PAODING §4): remove the lowest-ranked channel groups of every layer (uniform)
or of all layers ranked together (global) in steps, re-analysing and re-ranking after each; UDFC compensation
of every removed group from the kept ones (`dfc.compensate.compensation`); pair-wise dense pruning with
`paoding`. A mixin of the `prune` pass (passes/prune.py), which holds the options."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import onnx_graphsurgeon as gs

from dfc.graph import ir
from dfc.prune import pairwise
from dfc.prune.channel_budget import aligned_keep, pick_chunks
from dfc.prune.channels import ChannelAnalysis, Group
from dfc.prune.criteria import group_scores, in_scope, relative
from dfc.compensate.compensation import FamilyModel, WeightEditor, compensate_pruned
from dfc.compensate.compensation import consumer_norms, family_name, path_problem, removal_errors, round_sig, skipped_notes
from dfc.compensate.sink_moments import group_moments
from dfc.prune.intervals import activation_bounds
from dfc.pipeline import Context
from dfc.progress import manual_bar
from dfc.prune.surgery import remove_groups



class PruneSchedule:
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
        comp, skipped = {}, Counter()  # per-layer compensation reports, skipped removals by reason
        bits = None
        if o["weight_bits"] is not None and o["compensate"] != "none":
            from dfc.quant.layers import weight_bit_plan

            bits = weight_bit_plan(graph, *o["weight_bits"])
        bar = manual_bar(desc, total=total, unit="step")
        k = 0
        while True:
            k += 1
            if k > 1:
                analysis = ChannelAnalysis(graph)
            families = _families(analysis, scope, n0)
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


def _families(analysis: ChannelAnalysis, scope: str, n0: Counter) -> dict[tuple, list[Group]]:
    """The in-scope groups of the families being pruned, by family."""
    families: dict[tuple, list[Group]] = defaultdict(list)
    for g in analysis.groups:
        if in_scope(g, scope) and g.family in n0:
            families[g.family].append(g)
    return families


class _ChannelCount:
    """The cost model of a ratio of channels: every channel costs 1 (`pick_chunks`)."""

    def __init__(self):
        self.dropped: Counter = Counter()

    def saved(self, fam: tuple, d: int) -> float:
        return float(d)


def merge_stats(a: dict, b: dict) -> dict:
    """The counts of two rounds of the schedule added (a round that continues from an earlier one's result); the
    compensation layers and the residual branches removed by both listed."""
    out = dict(a)
    for key in ("groups_removed", "pairs_merged", "steps"):
        out[key] = a.get(key, 0) + b.get(key, 0)
    if "removed" in a or "removed" in b:  # the depth stage's rounds
        out["branches_removed"] = a.get("branches_removed", 0) + b.get("branches_removed", 0)
        out["removed"] = list(a.get("removed", [])) + list(b.get("removed", []))
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
