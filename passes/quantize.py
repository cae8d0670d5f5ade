"""`quantize`: QDQ insertion with calibrated activation ranges. Lossy; reports its error.

Graph form (what ONNX Runtime fuses into QLinearConv / QGemm / QLinearAdd /
QLinearGlobalAveragePool on x86):
- Conv/Gemm/MatMul weights: int8 per output channel, zero point 0, MSE-clipped scale (`dfc.quant.quant_math`), a
  DequantizeLinear in front;
- biases: int32 with scale s_x·s_w and zero point 0, a DequantizeLinear in front;
- activations: uint8 asymmetric per tensor, one QuantizeLinear → DequantizeLinear pair per tensor,
  shared by all its consumers; on the inputs of Conv/Gemm/MatMul/Add/pooling and the outputs of
  those ops (graph outputs stay float);
- a Relu or a Clip(0, hi) (ReLU6) right after a Conv/Gemm/MatMul/Add is absorbed into the output quantizer:
  its range starts at 0 and ends at or below hi, so QuantizeLinear's saturation is the activation;
- reshaping ops (Flatten, Reshape, ...), MaxPool, Slice and zero Pad (the option-A shortcut of the CIFAR
  ResNets) reuse their input's parameters: no second rounding or clipping of values already on the grid,
  and ORT can drop the Q/DQ pair around them.
Bit widths 2-8: weights use the b-bit range [−2^(b−1), 2^(b−1) − 1] inside int8 ([−127, 127] at 8 bits); activations below 8 bits get
a Clip of their uint8 codes to [0, 2^b − 1] between the QuantizeLinear and the DequantizeLinear (`qdq.insert_qdq`).
Both are accuracy simulation: ORT runs them with its 8-bit kernels, fused as at 8 bits (no extra size or speed gain
over W8A8, one cheap uint8 Clip per narrow activation).
The first and last weighted layers (weights and input activations) and the weights of depthwise convs use
`first_last_bits`.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from dfc.errors import DfcError
from dfc.graph import ir
from dfc.graph.bn_stats import ESTIMATED
from dfc.graph.ops import WEIGHTED
from dfc.graph.preflight import QDQ_MIN_OPSET
from dfc.measure import channel_stats
from dfc.pipeline import Context, Pass, register
from dfc.quant import activation_ranges, bias_correction, weight_rounding
from dfc.quant import quant_math as qm
from dfc.quant.layers import (activation_plan, find_quantized_node, is_edge, quantizable_layers, weight_axis,
                              weight_bit_plan)
from dfc.quant.qdq import ensure_bias, insert_qdq, integer_pads, quantize_add_constant, quantize_weights
from dfc.synth import sample_sources



@register
class Quantize(Pass):
    name = "quantize"

    @classmethod
    def default_options(cls):
        return {
            "wbits": 8,
            "abits": 8,
            "first_last_bits": 8,
            "calib": "gaussian",
            "calib_samples": 256,
            "calib_data": None,  # an array of inputs, overrides `calib`
            "calibrator": "mse",
            "percentile": 99.99,
            "bias_correction": True,  # move each layer's mean output back to float's (on the calibration samples)
            # bias correction's input means: "bn" from the BN statistics where they describe the tensor
            # (`bias_correction.bn_input_means`), else the samples'; "samples": the samples' everywhere
            "bias_means": "bn",
            "weight_rounding": "gptq",  # below 8 bits: codes and clipping from each layer's inputs (dfc.quant.weight_rounding)
            "float_layers": "auto",  # Conv/Gemm/MatMul names left in float, or "auto": by measurement (dfc.quant.float_layers)
        }

    # ------------------------------------------------------------------ plan

    def run(self, graph: gs.Graph, ctx: Context) -> gs.Graph:
        """Quantize; with `float_layers="auto"` (the default) the layers that stay float are chosen by measuring ORT
        latency over the candidates of `dfc.quant.float_layers` (only where the graph gives more than one), at any
        width: narrower widths run on the same 8-bit kernels (`qdq.insert_qdq`)."""
        out = self._choose(graph, ctx)
        if ctx.results.get("quantize", {}).get("layers"):  # some layer quantized (not all left float by measurement)
            self._announce(ctx)
        return out

    def _choose(self, graph: gs.Graph, ctx: Context) -> gs.Graph:
        self._ranges_cache: dict = {}
        self._means_cache: dict = {}
        chosen = self.options["float_layers"]
        if chosen == "auto":
            from dfc.quant import float_layers

            cands = float_layers.candidates(graph, quantizable_layers(graph))
            if len(cands) < 2:
                return self._quantize(graph, ctx, cands[0][1] if cands else ())
            built, results = {}, {}
            for name, kept in cands:
                built[name] = self._quantize(graph.copy(), ctx, kept)
                results[name] = ctx.results["quantize"]
            name, measured = float_layers.choose(graph, built, dict(cands), ctx, self._calibration_batch(graph, ctx),
                                                 batch=ctx.fixed_batch or 64)  # timed as the written model runs
            if name is None:  # no candidate with int8 layers beats float: the graph stays float
                ctx.results["quantize"] = {"left_in_float": [n.name for n in quantizable_layers(graph)],
                                           "float_layers": measured}
                return graph
            ctx.results["quantize"] = {**results[name], "float_layers": measured}
            return built[name]
        return self._quantize(graph, ctx, tuple(chosen))

    def _announce(self, ctx: Context) -> None:
        """The written graph is quantized: its metadata, and the note that narrow widths are simulation."""
        o = self.options
        ctx.metadata["dfc.quantization"] = json.dumps(
            {k: o[k] for k in ("wbits", "abits", "first_last_bits", "calibrator")} | {"calib": self._calib_name(ctx)}
        )
        if ctx.results.get("quantize", {}).get("simulated_in_8bit"):
            ctx.note(
                f"W{o['wbits']}A{o['abits']} (first/last {o['first_last_bits']}-bit) is accuracy simulation: "
                "values use the narrower range inside 8-bit storage and ORT runs its 8-bit kernels (no size or "
                "speed gain over W8A8)"
            )

    def _quantize(self, graph: gs.Graph, ctx: Context, kept_float) -> gs.Graph:
        o = self.options
        for key in ("wbits", "abits", "first_last_bits"):
            qm.check_bits(o[key], f"--{key.replace('_', '-')}")
        q = find_quantized_node(graph)
        if q is not None:
            raise DfcError(f"the model is already quantized (node {q.name!r} is {q.op}); dfc quantizes float models only")
        if int(graph.opset) < QDQ_MIN_OPSET:
            raise DfcError(f"quantization needs opset >= {QDQ_MIN_OPSET} (per-channel DequantizeLinear); the model has "
                           f"opset {graph.opset} (`dfc optimize` converts it; a custom pipeline must run on opset 13+)")

        if not quantizable_layers(graph):
            ctx.note("quantize: no Conv/Gemm/MatMul with constant weights found; the model is left in float")
            return graph
        if o["weight_rounding"] not in weight_rounding.ROUNDINGS:
            raise DfcError(f"--weight-rounding must be one of {', '.join(weight_rounding.ROUNDINGS)}, "
                           f"got {o['weight_rounding']!r}")
        x = self._calibration_batch(graph, ctx)
        low_bits = min(o["wbits"], o["first_last_bits"]) < 8  # weight_rounding acts below 8 bits only
        plain = graph.copy() if o["weight_rounding"] != "nearest" and low_bits else None
        if o["bias_means"] not in ("bn", "samples"):
            raise DfcError(f"quantize: bias_means must be bn or samples, got {o['bias_means']!r}")
        bn = {k: v for k, v in ctx.bn_stats.items() if v.source != ESTIMATED} if o["bias_means"] == "bn" else {}
        built = self._build(graph, x, kept_float, o["weight_rounding"], bn)
        check = None
        if built["latents"] and plain is not None:  # kept only where the whole model ends closer to float on the samples
            other = self._build(plain, x, kept_float, "nearest", bn)
            check = rounding_check(built["model"], x, built["graph"], other["graph"])
            if check["kept"] == "nearest":
                built = other
        ctx.weight_latents = built["latents"]
        self._record(ctx, x, built, check)
        return built["graph"]

    def _build(self, graph: gs.Graph, x: np.ndarray, kept_float, rounding: str, bn_stats) -> dict:
        """The QDQ graph (edited in place) and what `_record` reports of it."""
        o = self.options
        weighted = quantizable_layers(graph)
        skipped = [n.name for n in graph.nodes if n.op in WEIGHTED and n not in weighted]
        plan = weight_bit_plan(graph, o["wbits"], o["first_last_bits"], weighted)
        layer_bits = {id(n): plan[n.name] for n in weighted}
        layer_abits = {id(n): (o["first_last_bits"] if is_edge(n, weighted) else o["abits"]) for n in weighted}
        kept_float = set(kept_float)
        skipped += [n.name for n in weighted if n.name in kept_float]
        weighted = [n for n in weighted if n.name not in kept_float]

        fused, act_bits, const_adds, shared = activation_plan(graph, weighted, layer_abits, o["abits"], kept_float)
        calibrated = [t for t in act_bits if t not in shared]
        model = gs.export_onnx(graph)
        params = self._activation_params(model, calibrated, x, act_bits, fused, shared)
        layers, means, latents, bn_used = self._rewrite(graph, model, x, weighted, layer_bits, params, act_bits,
                                                        fused, const_adds, rounding, bn_stats)
        return {"graph": graph, "model": model, "layers": layers, "means": means, "latents": latents,
                "bn_means": len(bn_used),
                "act_bits": act_bits, "fused": fused, "pads": integer_pads(graph), "skipped": skipped}

    def _activation_params(self, model, calibrated: list[str], x: np.ndarray, act_bits: dict, fused: dict,
                           shared: dict) -> dict[str, qm.ActQParams]:
        """Per activation tensor: its range on the calibration samples (capped by an absorbed Clip) as parameters."""
        ranges = self._collect_ranges(model, calibrated, x, act_bits)
        params: dict[str, qm.ActQParams] = {}
        upper = {r.outputs[0].name: hi for r, hi in fused.values()}
        for t in calibrated:
            lo, hi = ranges[t]
            params[t] = qm.act_qparams(lo, min(hi, upper.get(t, hi)), act_bits[t])
        for t, src in shared.items():
            params[t] = params[src]

        return params

    def _rewrite(self, graph, model, x, weighted, layer_bits, params, act_bits, fused, const_adds, rounding, bn_stats):
        """Q/DQ pairs on the activations, quantized Add constants, per-channel weights with bias-corrected int32
        biases; returns (per-layer report rows, the input means used by bias correction, layer name -> the float
        weights its codes round, where they are not the graph's own: `weight_rounding`, the input tensors whose
        means came from `bn_stats`)."""
        o = self.options
        aware = [n for n in weighted if rounding == "gptq" and layer_bits[id(n)] < 8
                 and weight_rounding.supports(n, weight_axis(n))]
        hessians = weight_rounding.input_hessians(model, aware, x, progress="weight rounding") if aware else {}
        input_of = {id(n): n.inputs[0].name for n in weighted}  # float names, before Q/DQ goes in
        means, bn_used = {}, []
        if o["bias_correction"]:
            for n in weighted:
                ensure_bias(n)
            x_names = {input_of[id(n)] for n in weighted if input_of[id(n)] in params}
            means = self._channel_means(model, {t: params[t] for t in x_names}, x)
            if bn_stats:  # before the fused activations leave the graph: the statistics reach the inputs through them
                means, bn_used = bias_correction.bn_input_means(means, graph.tensors(), bn_stats)
        for r, _ in fused.values():
            ir.bypass_node(graph, r)
        tensors = graph.tensors()
        for t in act_bits:
            if t in tensors:
                insert_qdq(graph, tensors[t], params[t])
        for n in graph.nodes:
            if n.name in const_adds:
                quantize_add_constant(graph, n, *const_adds[n.name])
        layers, latents = [], {}
        for n in weighted:
            x_params, codes, extra = params[input_of[id(n)]], None, {"rounding": "nearest"}
            if n.name in hessians:
                q, s, latents[n.name], extra = weight_rounding.round_weight(
                    ir.const_value(n.inputs[1]), layer_bits[id(n)], weight_axis(n), hessians.pop(n.name))
                codes = (q, s)
            row = quantize_weights(graph, n, layer_bits[id(n)], x_params, means.get(input_of[id(n)]), codes=codes)
            layers.append({**row, **extra})
        return layers, means, latents, bn_used

    def _record(self, ctx, x, built: dict, check: dict | None) -> None:
        o, act_bits, fused = self.options, built["act_bits"], built["fused"]
        simulated = any(b < 8 for b in (o["wbits"], o["abits"], o["first_last_bits"]))
        ctx.results["quantize"] = {
            "wbits": o["wbits"],
            "abits": o["abits"],
            "first_last_bits": o["first_last_bits"],
            "calibration": self._calib_name(ctx),
            "calibration_samples": int(len(x)),
            "calibrator": o["calibrator"],
            "simulated_in_8bit": simulated,  # narrower codes in int8/uint8 storage, run by ORT's 8-bit kernels
            "activation_tensors": len(act_bits),
            "activations_absorbed": dict(sorted(Counter(r.op for r, _ in fused.values()).items())),
            "integer_pads": built["pads"],
            "bias_correction": bool(built["means"]),
            "bias_means_from_bn": built["bn_means"],  # input tensors whose bias correction read BN statistics
            "layers": built["layers"],
            "left_in_float": built["skipped"],
            **({"rounding_check": check} if check else {}),
        }

    def _collect_ranges(self, model, names: list[str], x: np.ndarray, bits: dict[str, int]) -> dict:
        """`activation_ranges.collect_ranges` for the names not yet calibrated in this run (each tensor's range depends on
        its own values and bits alone, so the candidates of the float-layer search share them)."""
        o, cache = self.options, getattr(self, "_ranges_cache", {})
        todo = [t for t in names if (t, bits[t]) not in cache]
        if todo:
            got = activation_ranges.collect_ranges(model, todo, x, o["calibrator"], o["percentile"], bits=bits)
            cache.update({(t, bits[t]): got[t] for t in todo})
        return {t: cache[(t, bits[t])] for t in names}

    def _channel_means(self, model, params: dict, x: np.ndarray) -> dict:
        """`channel_stats.channel_means`, cached per (tensor, parameters) within this run."""
        cache = getattr(self, "_means_cache", {})
        todo = {t: p for t, p in params.items() if (t, p) not in cache}
        if todo:
            got = channel_stats.channel_means(model, todo, x, progress="bias correction")
            cache.update({(t, todo[t]): got[t] for t in todo})
        return {t: cache[(t, p)] for t, p in params.items()}

    def _calib_name(self, ctx: Context) -> str:
        return "user data" if self.options["calib_data"] is not None else self._calib(ctx)

    def _calib(self, ctx: Context) -> str:
        """The calibration in effect: the option, or Gaussian noise where `synthesize` fell back."""
        return "gaussian" if ctx.calibration_fallback and ctx.calibration is None else self.options["calib"]

    def _calibration_batch(self, graph: gs.Graph, ctx: Context) -> np.ndarray:
        o = self.options
        name, shape = sample_sources.input_spec(graph)
        if o["calib_data"] is not None:
            x = np.asarray(o["calib_data"], np.float32)
            if x.shape[1:] != shape:
                raise DfcError(f"calibration data has sample shape {x.shape[1:]}, input {name!r} expects {shape}")
            return x
        sample_sources.check_method(o["calib"])
        if self._calib(ctx) not in sample_sources.NOISE_METHODS:
            if ctx.calibration is None or ctx.calibration_source != o["calib"]:
                raise DfcError(f"--calib {o['calib']}: no synthesized samples; run the `synthesize` pass before `quantize`")
            return ctx.calibration
        n = int(o["calib_samples"])
        if n < 1:
            raise DfcError(f"--calib-samples must be >= 1, got {n}")
        return sample_sources.noise_samples(self._calib(ctx), shape, n, ctx.rng(salt=1), ctx.sample_range())


def rounding_check(float_model, x: np.ndarray, rounded: gs.Graph, nearest: gs.Graph) -> dict:
    """The graph with `weight_rounding`'s codes against the one rounded to nearest: the error of their outputs from
    the float model's on the calibration samples `x` (`probe.error`: KL for a classifier's output); the closer is kept. Each layer's rounding is
    optimal for float inputs; behind 4-bit activations the layers' errors do not add up that way (ResNet-56 W4A4,
    5 sample sets: KL to fp32 on the samples higher with GPTQ in all 5, top-1 88.08 against 88.56)."""
    from dfc.measure import probe

    ref = probe.outputs(float_model, x)
    err = {"gptq": probe.error(ref, probe.outputs(rounded, x)), "nearest": probe.error(ref, probe.outputs(nearest, x))}
    return {"samples": int(len(x)), "metric": probe.metric(ref), "error_gptq": err["gptq"], "error_nearest": err["nearest"],
            "kept": "gptq" if err["gptq"] <= err["nearest"] else "nearest"}
