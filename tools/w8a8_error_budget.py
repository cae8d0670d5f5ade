"""Where W8A8 fidelity goes: an error budget of dfc's quantized model against its fp32 original.

    python tools/w8a8_error_budget.py ../shared/models/resnet20_cifar10.onnx --calib-data r20_bns.npz \
        --data ../shared/data/cifar10_test_jpeg_5000.npz --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225

Builds dfc's default W8A8 model on the calibration samples of --calib-data (`dfc optimize --save-calib`) and
measures top-1 agreement and mean KL against the fp32 model on the images of --data, for variants of it:
- `w8a8 (ORT)`: the model as dfc writes it, ORT-optimised (QLinear kernels). Rows marked (ORT) run optimised,
  the others with ORT's graph optimisations off, i.e. the QDQ reference semantics (with float weights between
  DQ and Q the optimised session changed ResNet-20's agreement by 0.7 points, more than the effects measured);
- `weights only` / `activations only`: the activation quantizers removed (a pair with zero point 0 keeps its
  clipping at 0, a Relu) / the float weights and biases put back;
- `per-channel activations`: every activation quantizer per channel (MSE range per channel): a bound for what
  channel equalisation could give; ORT's QLinear kernels take per-tensor activations only;
- `real-image calibration`: calibrated on the first --real-calib images of --data and evaluated on the others:
  what calibration on real data gives (not data-free; this is a study, not a product path);
- `only <tensor>`: quantized weights and a single activation quantizer (the --top most costly ones by the
  data-free ranking below);
- `float k`: the k activation tensors most sensitive on the calibration samples (data-free ranking) left in
  float, with ORT latency against fp32 (batch 64, 2 threads, median of alternating runs).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def activation_quantizers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The QuantizeLinear nodes of activations (not of constant weights), in graph order."""
    consts = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in consts]


def without_quantizers(model: onnx.ModelProto, tensors: set[str]) -> onnx.ModelProto:
    """A copy with the Q→DQ pairs of `tensors` removed: a pair with zero point 0 becomes a Relu (the clipping at
    0 that absorbed a Relu stays), any other an Identity."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    consts = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    q_of = {n.output[0]: n for n in out.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in tensors}
    nodes = []
    for n in out.graph.node:
        if n.op_type == "QuantizeLinear" and n.output[0] in q_of:
            continue
        if n.op_type == "DequantizeLinear" and n.input[0] in q_of:
            q = q_of[n.input[0]]
            op = "Relu" if int(consts[q.input[2]]) == 0 else "Identity"
            nodes.append(helper.make_node(op, [q.input[0]], [n.output[0]], name=q.name + "_float"))
            continue
        nodes.append(n)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def with_float_weights(model: onnx.ModelProto, fp32: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose Conv/Gemm/MatMul read the weights and biases of the same-named node of `fp32` (BN-folded)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    ref = {n.name: n for n in fp32.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}
    consts = {i.name: i for i in fp32.graph.initializer}
    for n in out.graph.node:
        for k in (1, 2):
            if n.name in ref and len(ref[n.name].input) > k and ref[n.name].input[k] in consts:
                t = onnx.TensorProto()
                t.CopyFrom(consts[ref[n.name].input[k]])
                t.name = f"{n.name}_float{k}"
                out.graph.initializer.append(t)
                n.input[k] = t.name
    return out


def with_per_channel_activations(model: onnx.ModelProto, fp32: onnx.ModelProto, x: np.ndarray) -> onnx.ModelProto:
    """A copy whose activation quantizers are per channel (axis 1), each channel's range the MSE range of its
    values in `fp32` on `x` (lower end 0 where the per-tensor zero point is 0)."""
    from dfc.measure.channel_stats import exposing_session
    from dfc.quant.activation_ranges import mse_range
    from dfc.quant.quant_math import act_qparams
    from dfc.measure.runtime import run_batched

    out = onnx.ModelProto()
    out.CopyFrom(model)
    qs = activation_quantizers(out)
    names = [q.input[0] for q in qs]
    values = run_batched(exposing_session(fp32, names), x, 64, outputs=names)
    consts = {i.name: i for i in out.graph.initializer}
    rng = np.random.default_rng(0)
    for q, v in zip(qs, values):
        relu = int(numpy_helper.to_array(consts[q.input[2]])) == 0
        scales, zps = [], []
        for c in range(v.shape[1]):
            vc = v[:, c].ravel()
            vc = vc if vc.size <= 50_000 else rng.choice(vc, 50_000, replace=False)
            vc = np.maximum(vc, 0) if relu else vc
            p = act_qparams(*mse_range(vc, float(vc.min()), float(vc.max()), 8), 8)
            scales.append(p.scale)
            zps.append(p.zero_point)
        consts[q.input[1]].CopyFrom(numpy_helper.from_array(np.array(scales, np.float32), q.input[1]))
        consts[q.input[2]].CopyFrom(numpy_helper.from_array(np.array(zps, np.uint8), q.input[2]))
        for n in out.graph.node:
            if n is q or (n.op_type == "DequantizeLinear" and n.input[1] == q.input[1]):
                n.attribute.append(helper.make_attribute("axis", 1))
    return out


def main() -> None:
    from dfc import progress
    from dfc.api import optimize
    from dfc.synth.sample_files import load_calibration
    from dfc.measure.latency import latency_ratios, median_latencies
    from dfc.measure.runtime import make_session, run_batched
    from dfc.measure.validation import fidelity, load_eval_data, parse_floats, preprocess

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--calib-data", required=True, help="calibration samples (.npz from `dfc optimize --save-calib`)")
    ap.add_argument("--data", required=True, help=".npz of images for agreement with the fp32 model")
    ap.add_argument("--mean", required=True)
    ap.add_argument("--std", required=True)
    ap.add_argument("--real-calib", type=int, default=256, help="images of --data for the real-image calibration row")
    ap.add_argument("--top", type=int, default=5, help="single-quantizer rows to print")
    ap.add_argument("--fallback", default="2,4,8", help="k values of the float-fallback rows")
    ap.add_argument("--rounds", type=int, default=20, help="latency rounds")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    logging.getLogger("dfc").setLevel(logging.ERROR)
    progress.set_enabled(False)

    mean, std = parse_floats(args.mean, "--mean"), parse_floats(args.std, "--std")
    x = preprocess(load_eval_data(args.data)[0], mean, std)
    calib = load_calibration(args.calib_data)
    fp32 = optimize(args.model, no_quant=True)  # BN folded, exact
    w8a8 = optimize(args.model, calib_data=calib, input_mean=mean, input_std=std, measure=False)

    def run(model, inputs, optimized=False):
        return run_batched(make_session(model, optimize=optimized), inputs)[0]

    ref = run(fp32, x)
    ref_calib = run(fp32, calib)
    rows = []

    def row(name, model, optimized=False, subset=slice(None)):
        f = fidelity(ref[subset], run(model, x[subset], optimized))
        rows.append({"variant": name, "agreement": f["agreement"], "mean_kl": f["mean_kl"], "images": len(ref[subset])})
        print(f"{name:58s} {100 * f['agreement']:7.2f} %  KL {f['mean_kl']:.5f}", flush=True)

    print(f"{args.model}: W8A8 on {len(calib)} calibration samples; agreement with fp32 on {len(x)} images of {args.data}")
    row("w8a8 (ORT)", w8a8, optimized=True)
    row("w8a8 (QDQ reference)", w8a8)
    acts = [q.input[0] for q in activation_quantizers(w8a8)]
    row("weights only", without_quantizers(w8a8, set(acts)))
    row("activations only", with_float_weights(w8a8, fp32))
    row("per-channel activations (not ORT-accelerated)", with_per_channel_activations(w8a8, fp32, calib))
    n = args.real_calib
    real = optimize(args.model, calib_data=x[:n], input_mean=mean, input_std=std, measure=False)
    row(f"real-image calibration ({n} images; others evaluated)", real, subset=slice(n, None))

    single = {}
    for t in acts:
        only = without_quantizers(w8a8, set(acts) - {t})
        single[t] = fidelity(ref_calib, run(only, calib))["mean_kl"]  # data-free: on the calibration samples
    ranked = sorted(acts, key=lambda t: -single[t])
    for t in ranked[: args.top]:
        row(f"only {t}", without_quantizers(w8a8, set(acts) - {t}))
    models = {"fp32": fp32, "w8a8": w8a8}
    for k in (int(v) for v in args.fallback.split(",") if v):
        models[f"float {k}"] = without_quantizers(w8a8, set(ranked[:k]))
        row(f"float {k} (ORT): {', '.join(ranked[:k])}"[:58], models[f"float {k}"], optimized=True)
    med, batch = median_latencies(models, x[:64], rounds=args.rounds)
    ratios = latency_ratios(med, "fp32")
    print("ORT latency vs fp32 (batch %d, 2 threads): %s" % (batch, ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "rows": rows, "latency_ratio": ratios,
                                               "calibration_kl_ranking": {t: single[t] for t in ranked}}, indent=2))


if __name__ == "__main__":
    main()
