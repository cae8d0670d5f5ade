"""`snapshot` and `finetune`: training the compressed graph against the float graph on the synthetic samples.

`snapshot` keeps a copy of the graph as it is at that point of the pipeline (`ctx.snapshots[key]`): `dfc optimize
--finetune` takes one after `fold-bn` (the teacher: the unpruned float graph) and one before `quantize` (the float
weights the codes are rounded from). `finetune` (dfc.finetune.train) trains the current graph, QDQ or float, towards the
teacher on `ctx.calibration` and writes the weights back into the same graph form. Lossy; reports the output KL
divergence to the teacher on the samples before and after.

With `stage="pruned-float"` (`dfc optimize --finetune kd` with 8-bit quantization puts one between `prune` and
`quantize`) it trains only a pruned graph, in float, and the `finetune` after `quantize` then has nothing left to do:
a pruned student has an architecture gap to close, which it closes better without the quantizers in the loop, and
the codes are rounded from the trained weights. ResNet-56 `--target-latency 0.3` W8A8 (the same 13 of 25 residual
branches removed, default steps for ~300 s): trained after quantization 86.73 top-1 (1853 steps), trained in float
before it 89.09 (2466).
"""

from __future__ import annotations

from dataclasses import asdict, fields

import onnx_graphsurgeon as gs

from dfc.graph import ir
from dfc.errors import DfcError
from dfc.finetune.train import FinetuneConfig, finetune, is_pruned
from dfc.pipeline import Context, Pass, register

PRUNED_FLOAT = "pruned-float"  # train a pruned graph in float, before quantization


@register
class Snapshot(Pass):
    name = "snapshot"

    @classmethod
    def default_options(cls):
        return {"key": "teacher"}

    def run(self, graph: gs.Graph, ctx: Context) -> gs.Graph:
        ctx.snapshots[self.options["key"]] = ir.export_model(graph)
        return graph


@register
class Finetune(Pass):
    name = "finetune"

    @classmethod
    def default_options(cls):
        # samples: the inputs to train on when the run synthesized none (user calibration data); else ctx.calibration,
        # and Gaussian noise (with a note) when there is neither
        return {**asdict(FinetuneConfig()), "teacher": "teacher", "float": "float", "samples": None,
                "gaussian_samples": 256, "stage": None}

    def run(self, graph: gs.Graph, ctx: Context) -> gs.Graph:
        o = self.options
        if o["stage"] not in (None, PRUNED_FLOAT):
            raise DfcError(f"finetune: stage must be None or {PRUNED_FLOAT!r}, got {o['stage']!r}")
        teacher = ctx.snapshots.get(o["teacher"])
        if teacher is None:
            raise DfcError(f"finetune: no teacher graph; run the `snapshot` pass (key {o['teacher']!r}) before pruning")
        self.skipped = True
        if ctx.results.get("finetune", {}).get("stage") == PRUNED_FLOAT:
            return graph  # trained before quantization
        model = ir.export_model(graph)
        if o["stage"] == PRUNED_FLOAT and not is_pruned(model, teacher):
            return graph  # nothing was pruned: the student trains after quantization
        self.skipped = False
        x, source = self._samples(graph, ctx)
        cfg = FinetuneConfig(**{f.name: o[f.name] for f in fields(FinetuneConfig)})
        tuned, info = finetune(model, teacher, x, cfg, float_model=ctx.snapshots.get(o["float"]),
                               latents=ctx.weight_latents)
        info["samples_source"] = source
        info["stage"] = o["stage"]
        ctx.results["finetune"] = info
        if cfg.step_lr is not None and info.get("step_lr") is None:
            ctx.note("finetune: --finetune-step-lr applies to a quantized student of the teacher's architecture; this "
                     "one (pruned or float) trained every parameter at --finetune-lr")
        if info["kept"] == "input":
            ctx.note(f"finetune: {cfg.method} raised the output {info['loss']} to the float model on the samples "
                     f"({info['kl_before']:.4g} -> {info['kl_after']:.4g}); the model before fine-tuning is kept "
                     f"(a lower {'--finetune-step-lr' if info.get('step_lr') else '--finetune-lr'} may help)")
        return ir.import_graph(tuned)

    def _samples(self, graph: gs.Graph, ctx: Context):
        from dfc.synth import sample_sources

        if self.options["samples"] is not None:
            return self.options["samples"], "user data"
        if ctx.calibration is not None:
            return ctx.calibration, ctx.calibration_source
        ctx.note("finetune: no synthesized samples (--calib gaussian or pink, or the inverter could not run the "
                 "model): training on Gaussian noise, which carries little of the data's structure")
        _, shape = sample_sources.input_spec(graph)
        return sample_sources.gaussian_samples(shape, int(self.options["gaussian_samples"]), ctx.rng(salt=1),
                                            ctx.sample_range()), "gaussian"
