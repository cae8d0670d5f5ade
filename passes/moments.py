"""`estimate-moments`: the per-channel moments BatchNorm statistics would give, measured on the synthetic samples of a
graph that has none (BN folded at export).

Data-free pruning reads each layer's output distribution from BN statistics, y ~ N(β, γ²) per channel: UDFC's
BN-moment loss, the moments where a pruned group's consumers read it (`dfc.compensate.sink_moments`), the mean a removed residual
branch leaves behind (`dfc.prune.branches`). Without BN in the graph the same two numbers are measured: the mean and
standard deviation of every Conv/Gemm output channel over the run's synthetic samples (`ctx.calibration`; Gaussian
noise when there are none), stored as `BNStats` with β = mean, γ = std and ε = 0, so that `output_mean_std` returns
them as measured. They are marked `ESTIMATED` and never written into the output's metadata: they are not statistics a
later run could synthesize from.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfc.measure import channel_stats, probe
from dfc.graph import ir
from dfc.graph.bn_stats import ESTIMATED, BNStats
from dfc.pipeline import Context, Pass, register

SAMPLES = 256


@register
class EstimateMoments(Pass):
    name = "estimate-moments"
    exact = True  # the graph is not changed

    def run(self, graph: gs.Graph, ctx: Context) -> gs.Graph:
        if ctx.bn_stats_found:
            return graph
        x = probe.inputs(graph, ctx, SAMPLES, salt=5, purpose="estimating channel moments")
        names = [n.outputs[0].name for n in graph.nodes if n.op in ("Conv", "Gemm") and n.outputs[0].name not in ctx.bn_stats]
        if x is None or not names:
            return graph
        moments = channel_stats.channel_moments(ir.export_model(graph), names, x, progress="channel moments")
        for name, (mean, std) in moments.items():
            c = len(mean)
            ctx.bn_stats[name] = BNStats(np.zeros(c, np.float32), np.ones(c, np.float32), std.astype(np.float32),
                                         mean.astype(np.float32), 0.0, ESTIMATED)
        ctx.results[self.name] = {"layers": len(moments), "samples": int(len(x)), "source": probe.source(ctx)}
        return graph
