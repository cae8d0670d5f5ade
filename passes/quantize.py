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
a Clip to the b-bit range in front of the QuantizeLinear. Both are accuracy simulation: ORT runs
them with its 8-bit kernels (no extra size or speed gain; a Clip also stops the fusion).
The first and last weighted layers (weights and input activations) and the weights of depthwise convs use
`first_last_bits`.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from dfc.measure import channel_stats
from dfc.quant import activation_ranges
from dfc.synth import sample_sources
from dfc.graph import ir
from dfc.quant import quant_math as qm
from dfc.errors import DfcError
from dfc.graph.preflight import QDQ_MIN_OPSET, QUANTIZED_OPS
from dfc.pipeline import Context, Pass, register

WEIGHTED = ("Conv", "Gemm", "MatMul")
POOLS = ("GlobalAveragePool", "AveragePool")
SHARED_PARAM_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "MaxPool", "Slice")
FUSABLE_ACTIVATION_PRODUCERS = WEIGHTED + ("Add",)


def find_quantized_node(graph: gs.Graph) -> gs.Node | None:
    """The first node that shows the graph is already quantized, or None."""
    return next((n for n in graph.nodes if n.op in QUANTIZED_OPS), None)


def quantizable_layers(graph: gs.Graph) -> list[gs.Node]:
    """The Conv/Gemm/MatMul nodes whose constant float weights `quantize` quantizes, in graph order."""
    return [n for n in graph.nodes if n.op in WEIGHTED and Quantize._weight_axis(n) is not None]


def _int_bias_form(n: gs.Node) -> bool:
    """Whether the node's bias can be an int32 DequantizeLinear (scale s_x·s_w): not a Gemm with alpha or beta."""
    return n.op != "Gemm" or (float(n.attrs.get("alpha", 1.0)) == 1.0 and float(n.attrs.get("beta", 1.0)) == 1.0)


def _is_edge(n: gs.Node, weighted: list[gs.Node]) -> bool:
    return n is weighted[0] or n is weighted[-1]


def weight_bit_plan(graph: gs.Graph, wbits: int, first_last_bits: int, weighted: list[gs.Node] | None = None
                    ) -> dict[str, int]:
    """Layer name -> weight bits: `first_last_bits` for the first and last quantizable layers and for depthwise convs,
    else `wbits` (`weighted`: the graph's `quantizable_layers`, when the caller has them). A depthwise filter has
    k·k weights (9 for 3×3): at 4 bits each channel gets 15 levels for 9 weights. EfficientNet-Lite0 W4A8 (BNS): top-1
    65.6 with 4-bit depthwise filters, 76.8 with 8-bit ones, which are 4 % of its weights (README, mobile models)."""
    weighted = quantizable_layers(graph) if weighted is None else weighted
    return {n.name: (first_last_bits if _is_edge(n, weighted) or is_depthwise(n) else wbits) for n in weighted}


def is_depthwise(n: gs.Node) -> bool:
    """A Conv with one input channel per group and more than one group."""
    w = ir.const_value(ir.input_at(n, 1))
    return n.op == "Conv" and int(n.attrs.get("group", 1)) > 1 and w is not None and w.shape[1] == 1


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
            "float_layers": "auto",  # Conv/Gemm/MatMul names left in float, or "auto": by measurement (dfc.quant.float_layers)
        }

    # ------------------------------------------------------------------ plan

    def run(self, graph: gs.Graph, ctx: Context) -> gs.Graph:
        """Quantize; with `float_layers="auto"` (the default) and 8-bit widths (what ORT accelerates) the layers that
        stay float are chosen by measuring ORT latency over the candidates of `dfc.quant.float_layers` (only where the graph
        gives more than one)."""
        self._ranges_cache: dict = {}
        self._means_cache: dict = {}
        chosen = self.options["float_layers"]
        accelerated = all(self.options[k] == 8 for k in ("wbits", "abits", "first_last_bits"))
        if chosen == "auto" and not accelerated:  # below 8 bits a simulation of accuracy: latency does not decide
            chosen = ()
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

        weighted = quantizable_layers(graph)
        skipped = [n.name for n in graph.nodes if n.op in WEIGHTED and n not in weighted]
        if not weighted:
            ctx.note("quantize: no Conv/Gemm/MatMul with constant weights found; the model is left in float")
            return graph
        plan = weight_bit_plan(graph, o["wbits"], o["first_last_bits"], weighted)
        layer_bits = {id(n): plan[n.name] for n in weighted}
        layer_abits = {id(n): (o["first_last_bits"] if _is_edge(n, weighted) else o["abits"]) for n in weighted}
        kept_float = set(kept_float)
        skipped += [n.name for n in weighted if n.name in kept_float]
        weighted = [n for n in weighted if n.name not in kept_float]

        fused = self._fusable_activations(graph, weighted)
        act_bits: dict[str, int] = {}

        def want(t: gs.Tensor, bits: int) -> None:
            # a graph output stays float for the user; when nodes also read it, they read its quantized copy
            if isinstance(t, gs.Constant) or (ir.is_graph_output(graph, t) and not t.outputs):
                return
            act_bits[t.name] = max(act_bits.get(t.name, 0), bits)

        def out_of(n: gs.Node) -> gs.Tensor:
            t = n.outputs[0]
            r = fused.get(t.name)
            return r[0].outputs[0] if r is not None else t

        for n in weighted:
            want(n.inputs[0], layer_abits[id(n)])
            want(out_of(n), o["abits"])
        quantized_ids = {id(n) for n in weighted}
        for n in graph.nodes:
            if n.op in ("Add",) + POOLS and kept_float and not self._next_to_quantized(n, quantized_ids):
                continue
            if n.op == "Add" and all(isinstance(t, gs.Variable) for t in n.inputs):
                for t in n.inputs:
                    want(t, o["abits"])
                want(out_of(n), o["abits"])
            elif n.op in POOLS:
                want(n.inputs[0], o["abits"])
                want(n.outputs[0], o["abits"])
        # an activation already quantized plus a per-channel constant: the constant is quantized too, so that ORT
        # runs a QLinearAdd (left in float, each is a DequantizeLinear -> Add -> Relu -> QuantizeLinear detour; a
        # W8A8 ResNet-56 with 18 residual branches removed ran at 0.31x fp32 that way, 0.21x with QLinearAdds). In
        # graph order, so that a chain of them (consecutive removed branches) qualifies link by link.
        const_adds = {}
        shapes = None
        for n in graph.nodes:
            pair = self._constant_add(n)
            if pair is None or pair[0].name not in act_bits:
                continue
            shapes = ir.static_shapes(graph) if shapes is None else shapes
            full = shapes.get(pair[0].name)  # unknown: a QLinearAdd broadcasting [1, C, 1, 1] is slower than float
            if full is None or not self._per_channel(pair[1].values, full):
                continue
            r = ir.single_consumer(n.outputs[0], graph)
            hi = self._absorbable_upper(graph, r) if r is not None else None
            out = r.outputs[0] if hi is not None else n.outputs[0]
            if ir.is_graph_output(graph, out) and not out.outputs:
                continue  # a float output: no QLinearAdd to run, rounding the constant would only cost
            if hi is not None:
                fused[n.outputs[0].name] = (r, hi)
            want(out, act_bits[pair[0].name])
            const_adds[n.name] = (pair[1], [1] + full[1:])
        shared = self._shared_params(graph, act_bits)

        # ------------------------------------------------------------- calibrate
        calibrated = [t for t in act_bits if t not in shared]
        x = self._calibration_batch(graph, ctx)
        model = gs.export_onnx(graph)
        ranges = self._collect_ranges(model, calibrated, x, act_bits)
        params: dict[str, qm.ActQParams] = {}
        upper = {r.outputs[0].name: hi for r, hi in fused.values()}
        for t in calibrated:
            lo, hi = ranges[t]
            params[t] = qm.act_qparams(lo, min(hi, upper.get(t, hi)), act_bits[t])
        for t, src in shared.items():
            params[t] = params[src]

        # ------------------------------------------------------------- rewrite
        input_of = {id(n): n.inputs[0].name for n in weighted}  # float names, before Q/DQ goes in
        means = {}
        if o["bias_correction"]:
            for n in weighted:
                self._ensure_bias(n)
            x_names = {input_of[id(n)] for n in weighted if input_of[id(n)] in params}
            means = self._channel_means(model, {t: params[t] for t in x_names}, x)
        for r, _ in fused.values():
            ir.bypass_node(graph, r)
        tensors = graph.tensors()
        for t in act_bits:
            if t in tensors:
                self._insert_qdq(graph, tensors[t], params[t])
        for n in graph.nodes:
            if n.name in const_adds:
                self._quantize_add_constant(graph, n, *const_adds[n.name])
        layers = []
        for n in weighted:
            x_params = params[input_of[id(n)]]
            layers.append(self._quantize_weights(graph, n, layer_bits[id(n)], x_params, means.get(input_of[id(n)])))

        integer_pads = self._integer_pads(graph)
        accelerated = all(b == 8 for b in (o["wbits"], o["abits"], o["first_last_bits"]))
        ctx.metadata["dfc.quantization"] = json.dumps(
            {k: o[k] for k in ("wbits", "abits", "first_last_bits", "calibrator")} | {"calib": self._calib_name(ctx)}
        )
        if not accelerated:
            ctx.note(
                f"W{o['wbits']}A{o['abits']} (first/last {o['first_last_bits']}-bit) is accuracy simulation: "
                "values use the narrower range inside 8-bit storage and ORT runs 8-bit kernels "
                "(activations below 8 bits add a Clip that stops ORT's QLinear fusion)"
            )
        ctx.results["quantize"] = {
            "wbits": o["wbits"],
            "abits": o["abits"],
            "first_last_bits": o["first_last_bits"],
            "calibration": self._calib_name(ctx),
            "calibration_samples": int(len(x)),
            "calibrator": o["calibrator"],
            "ort_accelerated": accelerated,
            "activation_tensors": len(act_bits),
            "activations_absorbed": dict(sorted(Counter(r.op for r, _ in fused.values()).items())),
            "integer_pads": integer_pads,
            "bias_correction": bool(means),
            "layers": layers,
            "left_in_float": skipped,
        }
        return graph

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

    @staticmethod
    def _weight_axis(n: gs.Node) -> int | None:
        """Output-channel axis of the node's constant weight, or None if it cannot be quantized."""
        w = ir.const_value(ir.input_at(n, 1))
        if w is None or w.dtype != np.float32 or not isinstance(n.inputs[0], gs.Variable):
            return None
        if n.op == "Conv":
            return 0
        if n.op == "Gemm":
            if int(n.attrs.get("transA", 0)) or w.ndim != 2:
                return None
            return 0 if int(n.attrs.get("transB", 0)) else 1
        return 1 if w.ndim == 2 else None  # MatMul [in, out]

    @staticmethod
    def _next_to_quantized(n: gs.Node, quantized: set[int]) -> bool:
        """Whether an Add or pooling node reads from or feeds a quantized layer (through value-preserving ops): one
        between float layers would only add QuantizeLinear/DequantizeLinear transitions."""
        keeps = lambda m: m is not None and (m.op in SHARED_PARAM_OPS + ("Relu", "Clip") or ir.is_zero_pad(m))  # noqa: E731
        for t in n.inputs:
            p = ir.producer(t)
            while keeps(p):
                p = ir.producer(p.inputs[0])
            if p is not None and id(p) in quantized:
                return True
        frontier = list(n.outputs)
        while frontier:
            for c in ir.consumers(frontier.pop()):
                if id(c) in quantized:
                    return True
                if keeps(c):
                    frontier.extend(c.outputs)
        return False

    @staticmethod
    def _fusable_activations(graph: gs.Graph, weighted: list[gs.Node]) -> dict[str, tuple[gs.Node, float]]:
        """producer-output name -> (activation, upper bound) for the Relu and Clip(0, hi) nodes (ReLU6) that the
        producer's output quantizer can absorb: calibrated on the activation's output, its range starts at 0, so the
        zero point is 0 and QuantizeLinear's saturation at 0 is the lower clip; the upper end of the range is capped
        at hi (inf for Relu), so the saturation at the top is at or below the upper clip."""
        quantized = {id(n) for n in weighted}
        fused = {}
        for r in ir.nodes_by_op(graph, "Relu", "Clip"):
            p = ir.producer(r.inputs[0])
            if p is None or p.op not in FUSABLE_ACTIVATION_PRODUCERS:
                continue
            if p.op != "Add" and id(p) not in quantized:
                continue
            if p.op == "Add" and not all(isinstance(t, gs.Variable) for t in p.inputs):
                continue
            hi = Quantize._absorbable_upper(graph, r)
            if hi is not None:
                fused[r.inputs[0].name] = (r, hi)
        return fused

    @staticmethod
    def _absorbable_upper(graph: gs.Graph, r: gs.Node) -> float | None:
        """The upper clip of `r` when its input's quantizer can absorb it (a Relu, or a Clip(0, hi) with hi > 0, the
        only reader of its input, not a graph output), else None."""
        bounds = (0.0, float("inf")) if r.op == "Relu" else ir.clip_bounds(r) if r.op == "Clip" else None
        if bounds is None or bounds[0] != 0.0 or not bounds[1] > 0.0 or ir.is_graph_output(graph, r.outputs[0]):
            return None
        return bounds[1] if ir.single_consumer(r.inputs[0], graph) is r else None

    @staticmethod
    def _constant_add(n: gs.Node) -> tuple[gs.Variable, gs.Constant] | None:
        """(activation, constant) of an Add of an activation and a float constant, else None."""
        if n.op != "Add" or len(n.inputs) != 2:
            return None
        var = [t for t in n.inputs if isinstance(t, gs.Variable)]
        const = [t for t in n.inputs if isinstance(t, gs.Constant)]
        if len(var) != 1 or len(const) != 1 or const[0].values.dtype != np.float32:
            return None
        return var[0], const[0]

    @staticmethod
    def _per_channel(c: np.ndarray, shape: list) -> bool:
        """Whether constant `c` holds one value per channel (axis 1) of an activation of `shape`: what depth pruning
        leaves of a removed residual branch (y = S + E[f(S)], `dfc.prune.branches`). A scalar (x + 3 in a hard-swish)
        is not: its Add has no quantized consumer to fuse with."""
        if len(shape) < 2 or c.ndim > len(shape) or c.size < 2:
            return False
        padded = [1] * (len(shape) - c.ndim) + list(c.shape)  # numpy broadcasting aligns shapes on the right
        return padded[1] == shape[1] and all(d == 1 for i, d in enumerate(padded) if i != 1)

    @staticmethod
    def _shared_params(graph: gs.Graph, act_bits: dict[str, int]) -> dict[str, str]:
        """Output of a value-preserving op (reshapes, MaxPool, Slice, zero Pad; chains of them) -> the quantized
        tensor upstream whose parameters it reuses."""
        shared: dict[str, str] = {}
        keeps = lambda n: n is not None and (n.op in SHARED_PARAM_OPS or ir.is_zero_pad(n))  # noqa: E731
        for n in graph.nodes:
            if not keeps(n) or n.outputs[0].name not in act_bits:
                continue
            src = n.inputs[0]
            while src.name not in act_bits and keeps(ir.producer(src)):
                src = ir.producer(src).inputs[0]
            name = shared.get(src.name, src.name)
            if name in act_bits:
                shared[n.outputs[0].name] = name
                act_bits[name] = max(act_bits[name], act_bits[n.outputs[0].name])
        return shared

    @staticmethod
    def _integer_pads(graph: gs.Graph) -> int:
        """Zero Pads (with Slices before them: the option-A shortcut) moved into the integer domain: the pattern
        DQ → [Slice …] → Pad → Q, where Q has the DQ's parameters (`_shared_params`), becomes [Slice …] → Pad → DQ on
        the quantized tensor, the Pad filling with the zero point (the code of 0.0). Bit-exact; ORT has no fused Pad,
        so otherwise the Pad runs in float between a DequantizeLinear and a QuantizeLinear."""
        count = 0
        for pad in [n for n in graph.nodes if ir.is_zero_pad(n)]:
            q = ir.single_consumer(pad.outputs[0], graph)
            if q is None or q.op != "QuantizeLinear" or ir.input_at(pad, 3) is not None:
                continue
            chain, t = [pad], pad.inputs[0]
            while ir.producer(t) is not None and ir.producer(t).op == "Slice" and ir.single_consumer(t, graph) is not None:
                chain.insert(0, ir.producer(t))
                t = chain[0].inputs[0]
            dq = ir.producer(t)
            if dq is None or dq.op != "DequantizeLinear" or any(
                    not np.array_equal(ir.const_value(a), ir.const_value(b)) for a, b in zip(dq.inputs[1:3], q.inputs[1:3])):
                continue
            codes = dq.inputs[0]
            chain[0].inputs[0] = codes
            for n in chain:
                n.outputs[0].dtype = codes.dtype
            while len(pad.inputs) > 2:
                pad.inputs.pop()
            pad.inputs.append(ir.make_const(ir.unique_name(graph, pad.name + "_zp"), ir.const_value(q.inputs[2]).reshape(())))
            ir.replace_uses(graph, q.outputs[0], pad.outputs[0])
            q.inputs.clear()
            q.outputs.clear()
            graph.nodes.remove(q)
            count += 1
        return count

    # ------------------------------------------------------------------ bias correction

    @staticmethod
    def _ensure_bias(n: gs.Node) -> None:
        """A zero bias on a Conv / plain Gemm that has none, so that bias correction has one to move."""
        if n.op == "MatMul" or ir.input_at(n, 2) is not None or not _int_bias_form(n):
            return
        w = ir.const_value(n.inputs[1])
        n.inputs.append(ir.make_const(n.name + "_bias0", np.zeros(w.shape[Quantize._weight_axis(n)], np.float32)))

    @staticmethod
    def _bias_shift(n: gs.Node, w: np.ndarray, w_hat: np.ndarray, x_mean: np.ndarray, xq_mean: np.ndarray) -> np.ndarray | None:
        """Bias correction of one layer (Nagel et al. 2019, "Data-Free Quantization", §4.2, here with the input's
        quantization too): the layer's mean output per channel in float, W·E[x], minus the mean it has with
        quantized weights on quantized inputs, Ŵ·E[Q(x)], with E[·] per input channel over the calibration samples
        (the kernel sums the channel mean; zero padding at the borders is neglected). Adding it to the bias cancels
        the mean shift this layer adds; each layer is corrected for its own error only, given float inputs.
        None when the layer's form is not handled (no change then)."""
        w, w_hat = np.asarray(w, np.float64), np.asarray(w_hat, np.float64)
        if n.op == "Conv":
            groups = int(n.attrs.get("group", 1))
            o, cg = w.shape[0], w.shape[1]
            if x_mean.size != cg * groups or o % groups:
                return None
            ksum, ksum_hat = w.reshape(o, cg, -1).sum(2), w_hat.reshape(o, cg, -1).sum(2)
            xm, xq = x_mean.reshape(groups, cg), xq_mean.reshape(groups, cg)
            g_of = np.arange(o) // (o // groups)
            return (ksum * xm[g_of]).sum(1) - (ksum_hat * xq[g_of]).sum(1)
        rows, rows_hat = ir.weight_rows(n, w), ir.weight_rows(n, w_hat)
        if rows.shape[1] != x_mean.size:
            return None
        return rows @ x_mean - rows_hat @ xq_mean

    # ------------------------------------------------------------------ edits

    @staticmethod
    def _insert_qdq(graph: gs.Graph, t: gs.Tensor, p: qm.ActQParams) -> None:
        base = t.name
        scale = ir.make_const(ir.unique_name(graph, base + "_scale"), np.array(p.scale, np.float32))
        zp = ir.make_const(ir.unique_name(graph, base + "_zp"), np.array(p.zero_point, np.uint8))
        dq_out = gs.Variable(ir.unique_name(graph, base + "_dq"), dtype=np.float32, shape=t.shape)
        ir.replace_uses(graph, t, dq_out, nodes_only=True)  # a graph output keeps its name and float values
        src = t
        if p.bits < 8:
            lo, hi = p.representable_range()
            src = gs.Variable(ir.unique_name(graph, base + "_clip"), dtype=np.float32, shape=t.shape)
            graph.nodes.append(
                gs.Node("Clip", name=base + "_clip", inputs=[t, ir.make_const(base + "_clip_lo", np.array(lo, np.float32)),
                        ir.make_const(base + "_clip_hi", np.array(hi, np.float32))], outputs=[src])
            )
        q_out = gs.Variable(ir.unique_name(graph, base + "_q"), dtype=np.uint8, shape=t.shape)
        graph.nodes.append(gs.Node("QuantizeLinear", name=base + "_Q", inputs=[src, scale, zp], outputs=[q_out]))
        graph.nodes.append(gs.Node("DequantizeLinear", name=base + "_DQ", inputs=[q_out, scale, zp], outputs=[dq_out]))

    def _quantize_weights(self, graph: gs.Graph, n: gs.Node, bits: int, x_params: qm.ActQParams,
                          x_means: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
        """Per-channel weights and int32 bias of one layer; with `x_means` (E[x], E[Q(x)] per input channel) the
        bias is corrected first (`_bias_shift`)."""
        axis = self._weight_axis(n)
        w = ir.const_value(n.inputs[1])
        q, s = qm.quantize_weight(w, bits, axis)
        w_hat = qm.dequantize_weight(q, s, axis)
        err = qm.relative_error(w, w_hat)
        n.inputs[1] = self._dq_const(graph, n.name + "_w", q, s, np.zeros(s.shape, np.int8), axis, w.shape)
        bias_int = False
        b_in = ir.input_at(n, 2)
        b = ir.const_value(b_in) if b_in is not None else None
        shift = None
        if b is not None and b.size == s.size and _int_bias_form(n):
            shift = self._bias_shift(n, w, w_hat, *x_means) if x_means is not None else None
            if shift is not None:
                b = (b.astype(np.float64).ravel() + shift).astype(np.float32)
            qb, sb = qm.quantize_bias(b.ravel(), x_params.scale, s)
            n.inputs[2] = self._dq_const(graph, n.name + "_b", qb, sb, np.zeros(sb.shape, np.int32), 0, (b.size,))
            bias_int = True
        return {
            "node": n.name, "op": n.op, "wbits": bits, "input_bits": x_params.bits,
            "weight_rel_error": round(err, 6), "int32_bias": bias_int,
            "bias_shift": None if shift is None else round(float(np.abs(shift).mean()), 6),
        }

    def _quantize_add_constant(self, graph: gs.Graph, n: gs.Node, c: gs.Constant, shape: list[int]) -> None:
        """The constant operand of an Add as uint8 codes, per tensor (QLinearAdd reads one scale per input), 8 bits
        over [min(c, 0), max(c, 0)] (an error of at most half a step per channel), expanded to `shape` ([1, C, H, W])
        in front of its DequantizeLinear. ORT folds the Expand when it loads the model: its QLinearAdd then adds two
        tensors broadcast over the batch only, about 2x faster per Add than with a [1, C, 1, 1] operand (ResNet-56,
        18 branches removed, W8A8: 0.21x fp32 against 0.43x), and the file keeps C codes, not C·H·W."""
        p = qm.act_qparams(float(c.values.min()), float(c.values.max()), 8)
        q = np.clip(np.round(c.values / p.scale) + p.zero_point, 0, 255).astype(np.uint8)
        base = n.name + "_c"
        codes = gs.Variable(ir.unique_name(graph, base + "_expanded"), dtype=np.uint8, shape=shape)
        graph.nodes.append(gs.Node("Expand", name=base + "_expand", outputs=[codes], inputs=[
            ir.make_const(ir.unique_name(graph, base + "_quant"), q),
            ir.make_const(ir.unique_name(graph, base + "_shape"), np.array(shape, np.int64))]))
        out = gs.Variable(ir.unique_name(graph, base + "_dq"), dtype=np.float32, shape=shape)
        graph.nodes.append(gs.Node("DequantizeLinear", name=base + "_DQ", outputs=[out], inputs=[
            codes, ir.make_const(ir.unique_name(graph, base + "_scale"), np.array(p.scale, np.float32)),
            ir.make_const(ir.unique_name(graph, base + "_zp"), np.array(p.zero_point, np.uint8))]))
        n.inputs[n.inputs.index(c)] = out

    @staticmethod
    def _dq_const(graph, base, q, scale, zp, axis, shape) -> gs.Variable:
        out = gs.Variable(ir.unique_name(graph, base + "_dq"), dtype=np.float32, shape=list(shape))
        attrs = {"axis": int(axis)} if scale.size > 1 else {}
        graph.nodes.append(
            gs.Node(
                "DequantizeLinear", name=base + "_DQ", attrs=attrs,
                inputs=[ir.make_const(ir.unique_name(graph, base + "_quant"), q.reshape(shape)),
                        ir.make_const(ir.unique_name(graph, base + "_scale"), scale if scale.size > 1 else scale.reshape(())),
                        ir.make_const(ir.unique_name(graph, base + "_zp"), zp if zp.size > 1 else zp.reshape(()))],
                outputs=[out],
            )
        )
        return out
