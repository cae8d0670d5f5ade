"""`synthesize`: calibration samples from the model's BN statistics (the BNS inverter, `dfc.synth.inverter`).

Runs on the BN-folded float graph (before pruning, so the statistics describe the graph exactly),
leaves the graph unchanged and puts the samples in `ctx.calibration` for `quantize`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, fields

import onnx_graphsurgeon as gs

from dfc.graph import ir
from dfc.errors import DfcError
from dfc.synth.inverter import Inverter, InverterConfig, pick_device
from dfc.pipeline import Context, Pass, register


@register
class Synthesize(Pass):
    name = "synthesize"

    @classmethod
    def default_options(cls):
        # fallback: when the torch executor cannot run the model, leave calibration to Gaussian noise (with a note)
        # instead of failing; `dfc optimize` sets it when the calibration was not asked for explicitly
        return {**asdict(InverterConfig()), "fallback": False}

    def run(self, graph: gs.Graph, ctx: Context) -> gs.Graph:
        cfg = InverterConfig(**{f.name: self.options[f.name] for f in fields(InverterConfig)})
        t0 = time.perf_counter()
        try:  # an op the torch executor lacks shows at construction or in the first forward pass
            inv = Inverter(ir.export_model(graph), ctx.bn_stats, ctx.sample_range(), cfg)
            trace: dict = {}
            x = inv.generate(trace=trace)
        except DfcError as e:
            if not self.options["fallback"]:
                raise DfcError(f"--calib {cfg.method}: the BNS inverter cannot run this model: {e}") from e
            ctx.calibration, ctx.calibration_fallback = None, True
            ctx.note(f"the BNS inverter cannot run this model ({e}): calibrating on Gaussian noise instead")
            ctx.results["synthesize"] = {"method": cfg.method, "fallback": "gaussian", "reason": str(e)}
            return graph
        dt = time.perf_counter() - t0
        ctx.calibration, ctx.calibration_source = x, cfg.method
        ctx.results["synthesize"] = {
            "method": cfg.method, "lr": cfg.lr, "copies": cfg.copies, "device": str(pick_device(cfg.device)),
            "budget": cfg.budget,
            "final_j_kl": inv.last_jkl, "samples_per_second": round(len(x) / dt, 3), **trace,
        }
        return graph
