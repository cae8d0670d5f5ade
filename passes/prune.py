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

from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from dfc.graph import ir
from dfc.prune import pairwise
from dfc.measure import probe
from dfc.prune.channels import ChannelAnalysis, Group
from dfc.compensate.compensation import compensate_pruned
from dfc.compensate.compensation import removal_errors, round_sig
from dfc.errors import DfcError
from dfc.options.schema import by_name, check_value
from dfc.pipeline import Context, Pass, register
from dfc.prune.schedule import PruneSchedule
from dfc.prune.target_search import TargetSearch
from dfc.prune.target_meter import KINDS as TARGET_KINDS, TargetMeter
from dfc.measure.runtime import nchwc_block
from dfc.prune.surgery import is_dead, remove_groups

PROBE_SAMPLES, PROBE_SALT = 256, 3


@register
class Prune(TargetSearch, PruneSchedule, Pass):
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
        if (res.get("depth") or {}).get("target"):  # the branches removed landed the target: no channel goes
            res["target"] = res["depth"].pop("target")
        elif o["ratio"] > 0 or o["target"] is not None:
            if o["check"] and (o["compensate"] != "none" or o["rank"] == "auto"):
                graph, stats = self._checked_schedule(graph, ctx)
            else:
                runner = self if o["rank"] != "auto" else Prune(**{**o, "rank": "uniform"})
                runner._meter = self._meter
                graph, stats = runner._schedule(graph, ctx, None if dead else analysis)
            res.update(stats)
            if o["target"] is not None and res.get("depth") is not None:
                graph = self._meet_below_band(graph, ctx, res, stats)
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
                trials[(comp, rank)] = (g, stats, tctx, probe.error(ref, probe.outputs(g, x)))
        best = {comp: ranks[min((trials[(comp, r)][3], i) for i, r in enumerate(ranks))[1]] for comp in comps}  # per comp, its best rank (ties: the first)
        err = {comp: trials[(comp, best[comp])][3] for comp in comps}
        pick = comps[0] if err[comps[0]] <= err[comps[-1]] else comps[-1]
        g, stats, tctx, _ = trials[(pick, best[pick])]
        probe.adopt(ctx, tctx)
        stats["global"] = best[pick] == "global"
        stats["ranking_check"] = {"probe": probe.source(ctx), "samples": int(len(x)), "kept": best[pick],
                                  "metric": probe.metric(ref),
                                  "error": {f"{c}, {r}": round_sig(t[3]) for (c, r), t in trials.items()}}
        if o["compensate"] == "none":
            return g, stats
        err_c, err_n = err[comps[0]], err["none"]
        check = {"probe": probe.source(ctx), "samples": int(len(x)), "metric": probe.metric(ref),
                 "error_compensated": round_sig(err_c), "error_plain": round_sig(err_n), "kept": pick}
        if pick == "none":
            ctx.note(f"prune: UDFC compensation did not reduce the output error on {len(x)} {check['probe']} probe inputs "
                     f"({check['metric']} {err_c:.4g} with, {err_n:.4g} without); kept plain removal")
        stats["compensation"] = {**trials[(comps[0], best[comps[0]])][1].get("compensation", {}), "used": pick != "none",
                                 "check": check}
        return g, stats

    _meter: TargetMeter | None = None


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
