"""`dfc.optimize`: the data-free compression pipeline as a Python call (the CLI is a thin layer on it).

Pipeline: cleanup -> fold-bn -> prune (+ UDFC merges) -> [udfc-requant] -> [quantize], then validation (fidelity on
a synthetic probe batch, ORT latency ratio, size/params/MACs) into a report dict.
"""

from __future__ import annotations

import numpy as np
import onnx

from dfc.errors import DfcError
from dfc.finetune.train import FinetuneConfig
from dfc.graph.modelio import as_model, check_model
from dfc.options.resolve import prune_depth, prune_target, resolve, uses_samples
from dfc.prune.landing import BAND
from dfc.pipeline import Context, PassManager, context_from_model, get_pass
from dfc.synth import sample_sources
from dfc.synth.sample_files import check_save_calib, save_calibration

GAUSSIAN_SAMPLES = 256  # samples of a noise source (gaussian, pink)
# Below 8 bits the samples synthesized at a reduced size are refined at the input size with this share of the first
# phase's work (`Inverter.refine_steps`): upsampling undoes part of the statistics matched at the smaller size, and
# 4-bit weights follow the samples' statistics where 8-bit ones do not (EfficientNet-Lite0 W4A8, docs/methods.md "BNS").
REFINE_WORK_BELOW_8_BITS = 0.45  # EfficientNet-Lite0: 100 steps at 128², then 10 at 224² (~95 s)


def refine_work(o: dict) -> float:
    """The full-size refinement's share of the inverter's work: `REFINE_WORK_BELOW_8_BITS` when any quantized width is
    below 8, else none (W8A8 calibrates to 98.6 % agreement on EfficientNet-Lite0's upsampled samples)."""
    low_bits = not o["no_quant"] and min(o["wbits"], o["abits"], o["first_last_bits"]) < 8
    return REFINE_WORK_BELOW_8_BITS if low_bits else 0.0


def _synthesize_pass(o: dict, method: str, fallback: bool = False):
    refine = o["inverter_refine_steps"]
    return get_pass("synthesize", method=method, samples=o["calib_samples"], steps=o["inverter_steps"],
                    batch=o["inverter_batch"], size=o["inverter_size"],
                    refine_steps=None if refine is None else int(refine), refine_work=refine_work(o),
                    lr=float(o["inverter_lr"]), copies=int(o["inverter_copies"]),
                    seed=int(o["seed"]), device=o["device"], fallback=fallback)


def build_passes(o: dict, ctx: Context, model: onnx.ModelProto) -> list:
    quantizing, compensating = not o["no_quant"], o["compensate"] != "none"
    tuning = o["finetune"] is not None
    passes = [get_pass("cleanup"), get_pass("fold-bn")]
    if tuning:
        passes.append(get_pass("snapshot", key="teacher"))
    calib = None
    pruning = float(o["prune"]) > 0 or prune_target(o) is not None
    # without BN statistics pruning's probe and moments come from synthetic samples too (passes/moments.py)
    if (uses_samples(o) or (pruning and not ctx.bn_stats_found)) and o["calib_data"] is None:
        calib = sample_sources.calibration_method(o, ctx, model)
        if calib not in sample_sources.NOISE_METHODS:
            passes.append(_synthesize_pass(o, calib, fallback=o["calib"] is None))
    if pruning and not ctx.bn_stats_found:
        passes.append(get_pass("estimate-moments"))
    passes += [
        get_pass("prune", ratio=float(o["prune"]), scope=o["prune_scope"], criterion=o["criterion"],
                 step=float(o["prune_step"]), rank=o["prune_rank"], compensate=o["compensate"],
                 alpha_p=float(o["alpha_p"]), alpha_q=float(o["alpha_q"]), partners=o["udfc_partners"],
                 loss=o["udfc_loss"], check=bool(o["udfc_check"]), weight_bits=(o["wbits"], o["first_last_bits"]) if quantizing and compensating else None,
                 multiple=int(o["channel_multiple"]), target=prune_target(o), threads=int(o["threads"]),
                 latency_batch=int(o["probe_samples"]), depth=prune_depth(o),
                 quant={k: o[k] for k in ("wbits", "abits", "first_last_bits")} if quantizing else None),
    ]
    float_stage = quantizing and o["finetune"] == "kd" and all(o[k] == 8 for k in ("wbits", "abits", "first_last_bits"))
    if float_stage:
        # a pruned student trains in float, before an 8-bit quantization that costs little after it; below 8 bits
        # rounding is a second gap only the QDQ student sees (ResNet-56 --prune 0.3 inner W4A4, kd 600 steps: in float
        # before quantization 86.92, the QDQ student 88.30; W8A8 --prune 0.5 inner: 89.77 and 88.99)
        passes.append(_finetune_pass(o, stage="pruned-float"))
    if quantizing and compensating and o["udfc_requant"]:
        passes.append(get_pass("udfc-requant", wbits=o["wbits"], first_last_bits=o["first_last_bits"],
                               alpha_q=float(o["alpha_q"])))
    if quantizing:
        if tuning:
            passes.append(get_pass("snapshot", key="float"))
        passes.append(
            get_pass(
                "quantize", wbits=o["wbits"], abits=o["abits"], first_last_bits=o["first_last_bits"],
                calib=calib, calib_samples=o["calib_samples"] or GAUSSIAN_SAMPLES, calib_data=o["calib_data"], calibrator=o["calibrator"],
                bias_correction=bool(o["bias_correction"]), weight_rounding=o["weight_rounding"],
                # the BN statistics describe the graph's tensors until pruning or training moves them
                bias_means="samples" if pruning or float_stage else "bn",
            )
        )
    if tuning:
        passes.append(_finetune_pass(o))
    return passes


def _finetune_pass(o: dict, stage: str | None = None):
    return get_pass("finetune", method=o["finetune"], steps=o["finetune_steps"], batch=int(o["finetune_batch"]),
                    lr=o["finetune_lr"], step_lr=o["finetune_step_lr"], seed=int(o["seed"]), device=o["device"],
                    samples=o["calib_data"], time_budget_s=float(o["finetune_time"] or FinetuneConfig.time_budget_s),
                    gaussian_samples=int(o["calib_samples"] or GAUSSIAN_SAMPLES), stage=stage, size=o["finetune_size"],
                    full_steps=int(o["finetune_full_steps"]),
                    hard_share=float(o["finetune_disagreement"] or 0.0))


def optimize_with_report(model_or_path, **options) -> tuple[onnx.ModelProto, dict]:
    """Run the pipeline; returns (optimized model, report dict). The input is never modified."""
    from dfc.graph.stats import model_summary

    o = resolve(options)
    original = as_model(model_or_path)
    ctx = _context(original, o)
    ctx.original_bytes, ctx.original = original.ByteSize(), original
    if o["calib_data"] is not None:  # the probe of the pruning checks too, as synthesized samples would be
        ctx.calibration, ctx.calibration_source = np.asarray(o["calib_data"], np.float32), "user data"
    check_save_calib(o, ctx, original)
    signature, work = _work_model(original, o, ctx)
    optimized = signature.restore(PassManager(build_passes(o, ctx, work), debug=o["debug"]).run(work, ctx))
    check_model(optimized, what="the optimized model")
    if signature.free_dims:
        signature.check_other_size(original, optimized, ctx)
    if o["save_calib"]:
        save_calibration(o["save_calib"], ctx)
    report = {
        "options": {k: v for k, v in o.items() if k != "calib_data"},
        "passes": ctx.results,
        "notes": list(ctx.notes),
        "before": model_summary(original, ctx.input_shape),
        "after": model_summary(optimized, ctx.input_shape),
    }
    if o["measure"]:
        report.update(measure(original, optimized, ctx, o))
    target = prune_target(o)
    if target is not None:
        report["target"] = final_target(target, report, ctx)
        report["notes"] = list(ctx.notes)
    return optimized, report


def final_target(target: tuple[str, float], report: dict, ctx: Context) -> dict:
    """The --target-* option checked on the output model: its MACs and size against the original's, its latency
    from the report's measurement (when measured); a miss is a note."""
    kind, goal = target
    searched = report["passes"].get("prune", {}).get("target", {})
    median = None
    if kind == "latency":  # judged as the search measures (`latency_ratio`; the median ratio is reported beside it)
        lat = report.get("latency", {})
        value, median = lat.get("ratio_checked", lat.get("ratio")), lat.get("ratio")
    else:
        key = "macs" if kind == "macs" else "size_bytes"
        value = report["after"][key] / report["before"][key] if report["before"][key] else None
    out = {"kind": kind, "ratio": goal, "final": value, "final_median": median, "searched": searched.get("measured"),
           **({"final_by": report.get("latency", {}).get("ratio_checked_by")} if kind == "latency" else {}),
           "met": None if value is None else value <= goal,
           "landed": None if value is None else BAND * goal <= value <= goal, "band": [BAND * goal, goal]}
    if value is not None and value <= goal:  # the output meets it: a miss the search measured on its stand-in is moot
        ctx.notes[:] = [n for n in ctx.notes if not n.startswith(f"prune: target {kind} {goal:g}x not met")]
    if value is not None and value > goal:
        ctx.note(f"--target-{kind} {goal:g}: the output model measures {value:.3g}x (the pruning search measured "
                 f"{searched.get('measured')}x before {'quantization' if searched.get('quantized') else 'export'})")
    return out


def _context(original: onnx.ModelProto, o: dict) -> Context:
    """The run's context: seed, debug, BN statistics from the model, checked input normalisation."""
    ctx = context_from_model(original, seed=int(o["seed"]), debug=bool(o["debug"]))
    if o["input_mean"] is not None or o["input_std"] is not None:
        from dfc.measure.validation import check_normalisation

        mean = np.asarray(o["input_mean"], np.float32).ravel() if o["input_mean"] is not None else None
        std = np.asarray(o["input_std"], np.float32).ravel() if o["input_std"] is not None else None
        check_normalisation(mean, std, _input_channels(original))
        ctx.input_mean, ctx.input_std = mean, std
    ctx.bn_stats_found = ctx.bn_stats_found or any(n.op_type == "BatchNormalization" for n in original.graph.node)
    return ctx


def _prepared(original: onnx.ModelProto, o: dict, ctx: Context) -> onnx.ModelProto:
    """The input checked before any work (dfc.graph.preflight) and, when quantizing, lifted to opset 13 if older."""
    from dfc.graph import preflight

    quantizing = not o["no_quant"]
    preflight.check_input(original, quantizing)
    if not quantizing:
        return original
    lifted, note = preflight.lift_opset_for_qdq(original)
    if note:
        ctx.note(note)
    return lifted


def _work_model(original: onnx.ModelProto, o: dict, ctx: Context):
    """(the original's `Signature`, the model the passes work on: checked, lifted for QDQ, batch-free, its free
    dims to be set by `cleanup` from `ctx.input_shape`)."""
    from dfc.graph.signature import Signature

    signature = Signature.of(original)
    ctx.input_shape = signature.work_shape(o["input_shape"], o["calib_data"]) if signature.reshaped else None
    ctx.fixed_batch = signature.fixed_batch
    return signature, signature.work_model(_prepared(original, o, ctx))


def calibration_set(model_or_path, **options) -> tuple[np.ndarray, dict]:
    """The data-free calibration samples that `optimize` with these options calibrates on, without pruning or
    quantizing: Gaussian noise (salt 1, as `quantize` draws it) or the `synthesize` pass on the BN-folded graph
    (same seed, same samples). Several runs can share one synthesis through `calib_data=`.
    Returns (samples, info with `method` and `seconds`)."""
    import time

    o = resolve(options)
    original = as_model(model_or_path)
    ctx = _context(original, o)
    _, original = _work_model(original, {**o, "no_quant": False}, ctx)
    method = sample_sources.calibration_method(o, ctx, original)
    t0 = time.perf_counter()
    if method in sample_sources.NOISE_METHODS:
        from dfc.graph import ir

        shape = ctx.input_shape or sample_sources.input_spec(ir.import_graph(original))[1]
        x, info = sample_sources.noise_samples(method, shape, int(o["calib_samples"] or GAUSSIAN_SAMPLES), ctx.rng(salt=1),
                                            ctx.sample_range()), {}
    else:
        PassManager([get_pass("cleanup"), get_pass("fold-bn"), _synthesize_pass(o, method)], debug=o["debug"]).run(original, ctx)
        x, info = ctx.calibration, dict(ctx.results["synthesize"])
    return x, {**info, "method": method, "seconds": time.perf_counter() - t0}


def optimize(model_or_path, **options) -> onnx.ModelProto:
    """Compress a model data-free and return it (the input is never modified); `optimize_with_report` also returns
    the report. The keyword options are those of `dfc optimize` (docs/options.md), listed below."""
    return optimize_with_report(model_or_path, **{"measure": False, **options})[0]


def with_option_keywords(fn):
    """`fn(model_or_path, **options)` documented with the schema's options: its signature lists them as keywords
    with their defaults (what `help()` and IDEs show), its docstring one line each."""
    import inspect

    from dfc.options import all_options

    params = [inspect.Parameter("model_or_path", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.default) for o in all_options()]
    fn.__signature__ = inspect.Signature(params)
    fn.__doc__ = (fn.__doc__ or "") + "\n\n    Options:\n" + "\n".join(
        f"      {o.name}={o.default!r}: {o.spec.help}" for o in all_options())
    return fn


for _fn in (optimize, optimize_with_report, calibration_set):
    with_option_keywords(_fn)

def _input_channels(model: onnx.ModelProto) -> int | None:
    dims = model.graph.input[0].type.tensor_type.shape.dim if model.graph.input else []
    return dims[1].dim_value if len(dims) > 1 and dims[1].HasField("dim_value") else None


def measure(original: onnx.ModelProto, optimized: onnx.ModelProto, ctx: Context, o: dict) -> dict:
    """Fidelity on a Gaussian probe batch and the ORT latency ratio, both against the original."""
    from dfc.graph import ir
    from dfc.measure.latency import BUSY_CORES, TIMING_SECONDS, latency_ratio, median_latencies, session_groups
    from dfc.measure.validation import output_fidelity, outputs_of

    try:
        shape = ctx.input_shape or sample_sources.input_spec(ir.import_graph(original))[1]
    except DfcError as e:
        ctx.note(f"no fidelity/latency measurement: {e}")
        return {"notes": list(ctx.notes)}
    n = int(o["probe_samples"])
    x = sample_sources.gaussian_samples(shape, n, ctx.rng(salt=2), ctx.sample_range())
    per = output_fidelity(outputs_of(original, x), outputs_of(optimized, x))
    first = next(iter(per.values()))
    fid = {k: first[k] for k in ("agreement", "mean_kl", "max_abs_diff") if k in first}
    out: dict = {"fidelity": {"probe": "gaussian", "samples": n, **fid, "outputs": per}}
    if o["latency_rounds"] > 0:
        rounds: dict = {}
        load: dict = {}
        med, batch = median_latencies({"original": original, "optimized": optimized}, x, threads=o["threads"],
                                      rounds=o["latency_rounds"], progress="latency", samples=rounds, load=load,
                                      sessions=session_groups(o["latency_rounds"]), seconds=TIMING_SECONDS)
        groups = session_groups(len(rounds["original"]))
        if (load.get("other_cores") or 0.0) > BUSY_CORES:
            ctx.note(f"latency: other processes held {load['other_cores']:.2g} cores while it was timed; the ratio "
                     "is uncertain: time it again on a quiet machine")
        checked, margin, how = latency_ratio(rounds["optimized"], rounds["original"], groups if groups > 1 else 4)
        out["latency"] = {
            "original_ms": 1e3 * med["original"], "optimized_ms": 1e3 * med["optimized"],
            "ratio": med["optimized"] / med["original"], "batch": batch, "threads": o["threads"],
            "rounds": len(rounds["original"]),
            # as the --target-latency search measures: `latency_ratio` over the fresh-session groups (robust to a
            # busy machine, to its speed drifting and to a session's own speed)
            "ratio_checked": checked, "ratio_checked_margin": margin, "ratio_checked_by": how, "sessions": groups,
            "other_cores": load.get("other_cores"),
        }
    return out
