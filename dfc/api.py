"""`dfc.optimize`: the data-free compression pipeline as a Python call (the CLI is a thin layer on it).

Pipeline: cleanup -> fold-bn -> prune (+ UDFC merges) -> [udfc-requant] -> [quantize], then validation (fidelity on
a synthetic probe batch, ORT latency ratio, size/params/MACs) into a report dict.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx


from dfc.quant import activation_ranges
from dfc.synth import sample_sources
from dfc.quant import quant_math as qm
from dfc.errors import DfcError
from dfc.graph.modelio import as_model, check_model
from dfc.compensate.compensation import LOSSES as UDFC_LOSSES, METHODS as COMPENSATIONS, PARTNERS as UDFC_PARTNERS
from dfc.passes.prune import CRITERIA, SCOPES as PRUNE_SCOPES
from dfc.finetune.train import METHODS as FINETUNE_METHODS
from dfc.finetune.train import FinetuneConfig
from dfc.pipeline import Context, PassManager, context_from_model, get_pass

DEFAULTS: dict[str, Any] = {
    "prune": 0.0,
    "prune_scope": "inner",
    "criterion": "udfc",
    "prune_step": 0.05,
    "prune_rank": "auto",  # uniform | global | auto (both, the one closer to the model on the probe inputs kept)
    "prune_global": False,  # the same as prune_rank="global"
    "channel_multiple": None,  # None: the block of ORT's NCHWc conv kernels on this CPU (dfc.measure.runtime.nchwc_block); 1: off
    "target_latency": None,  # ratios against the original: prune until the measured target is met (passes/prune.py)
    "target_size": None,
    "target_macs": None,
    "prune_depth": "on",  # on | off: toward a target, remove whole residual branches before channels
    "compensate": "udfc",
    "udfc_requant": True,
    "udfc_check": True,  # keep the pruning compensation only where it lowers the error on synthetic probe inputs
    "udfc_partners": "nnls",
    "udfc_loss": "bn",
    "alpha_p": 0.0,
    "alpha_q": 1000.0,
    "wbits": 8,
    "abits": 8,
    "first_last_bits": 8,
    "no_quant": False,
    "calib": None,  # None = best available data-free calibration
    "calib_samples": None,  # None: 256 Gaussian samples, or as many as the inverter's work budget allows
    "calib_data": None,
    "calibrator": "mse",
    "bias_correction": True,  # correct each quantized layer's mean output shift (on the calibration samples)
    "save_calib": None,  # path: keep the calibration samples (.npz, key `x`)
    "inverter_steps": None,  # None: from the inverter's work budget (dfc.synth.inverter.Inverter.plan), at most 200
    "inverter_batch": None,  # None: all samples in one batch
    "inverter_size": None,  # side of the first synthesis phase; None: from the model's cost
    "inverter_refine_steps": 0,  # steps at full size after a smaller synthesis size
    "inverter_lr": 0.1,
    "inverter_copies": 1,
    "device": None,  # inverter device; None: cuda when available
    "seed": 0,
    "input_mean": None,
    "input_std": None,
    "input_shape": None,  # N,C,H,W: the shape to work at where the model's input dims are symbolic (dfc.graph.signature)
    "finetune": None,  # kd | blocks: train the compressed graph against the float one on the samples (dfc.finetune.train)
    "finetune_steps": None,  # None: from the fine-tuning time budget (kd: total steps; blocks: per block)
    "finetune_time": None,  # seconds the default steps fill, predicted for 2 CPU cores (None: FinetuneConfig's 300 s)
    "finetune_batch": 32,
    "finetune_lr": None,  # None: the method's default
    "finetune_step_lr": None,  # kd: quantized weights' lr in quantization steps (None: dfc.finetune.train.DEFAULT_STEP_LR)
    "debug": False,
    "measure": True,  # fidelity probe + latency in the report
    "probe_samples": 64,
    "latency_rounds": 10,
    "threads": 2,
}


GAUSSIAN_SAMPLES = 256  # samples of a noise source (gaussian, pink)
PRUNE_RANKS = ("auto", "uniform", "global")
PRUNE_DEPTHS = ("on", "off")
TARGETS = ("target_latency", "target_size", "target_macs")


def prune_target(o: dict) -> tuple[str, float] | None:
    """(kind, ratio) of the run's --target-* option, or None."""
    for key in TARGETS:
        if o[key] is not None:
            return key[len("target_"):], float(o[key])
    return None


def prune_depth(o: dict) -> bool:
    """Whether a target search removes whole residual branches before channels (`--prune-depth on`, the default):
    at one latency a model without some of its blocks keeps more accuracy than one with thinner layers, fine-tuned
    or not (README: pruning that makes models faster)."""
    return o["prune_depth"] == "on"


def uses_samples(o: dict) -> bool:
    """Whether the run needs calibration samples (synthesized, or --calib-data): to quantize, to fine-tune, or as
    the probe that ranks residual branches for depth pruning (Gaussian noise would rank them by noise)."""
    return not o["no_quant"] or o["finetune"] is not None or (prune_depth(o) and prune_target(o) is not None)


def resolve_options(options: dict) -> dict:
    """Defaults filled in and every option checked, before any work starts."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise DfcError(f"unknown option(s): {', '.join(sorted(unknown))}")
    o = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    if not isinstance(o["prune"], (int, float)) or not 0.0 <= float(o["prune"]) < 1.0:
        raise DfcError(f"--prune must be a ratio in [0, 1), got {o['prune']!r}")
    targets = [k for k in TARGETS if o[k] is not None]
    if len(targets) > 1:
        raise DfcError(f"give one target, not {' and '.join('--' + k.replace('_', '-') for k in targets)}")
    for key in targets:
        if not isinstance(o[key], (int, float)) or not 0.0 < float(o[key]) <= 1.0:
            raise DfcError(f"--{key.replace('_', '-')} must be a ratio in (0, 1], got {o[key]!r}")
        if float(o["prune"]) > 0:
            raise DfcError(f"--prune and --{key.replace('_', '-')} are exclusive: the target decides how much is pruned")
    if o["channel_multiple"] is None:
        from dfc.measure.runtime import nchwc_block

        o["channel_multiple"] = nchwc_block() or 1
    if not isinstance(o["channel_multiple"], (int, np.integer)) or int(o["channel_multiple"]) < 1:
        raise DfcError(f"--channel-multiple must be an integer >= 1, got {o['channel_multiple']!r}")
    if o["prune_depth"] not in PRUNE_DEPTHS:
        raise DfcError(f"--prune-depth must be one of {', '.join(PRUNE_DEPTHS)}, got {o['prune_depth']!r}")
    if o["prune_rank"] not in PRUNE_RANKS:
        raise DfcError(f"--prune-rank must be one of {', '.join(PRUNE_RANKS)}, got {o['prune_rank']!r}")
    if o["prune_global"]:
        o["prune_rank"] = "global"
    if o["prune_scope"] not in PRUNE_SCOPES:
        raise DfcError(f"--prune-scope must be one of {', '.join(PRUNE_SCOPES)}, got {o['prune_scope']!r}")
    if o["criterion"] not in CRITERIA:
        raise DfcError(f"--criterion must be one of {', '.join(CRITERIA)}, got {o['criterion']!r}")
    for key, allowed in (("compensate", COMPENSATIONS), ("udfc_partners", UDFC_PARTNERS), ("udfc_loss", UDFC_LOSSES)):
        if o[key] not in allowed:
            raise DfcError(f"--{key.replace('_', '-')} must be one of {', '.join(allowed)}, got {o[key]!r}")
    for key in ("wbits", "abits", "first_last_bits"):
        qm.check_bits(o[key], f"--{key.replace('_', '-')}")
    if o["first_last_bits"] < max(o["wbits"], o["abits"]):
        raise DfcError(
            f"--first-last-bits {o['first_last_bits']} is below the body's width (W{o['wbits']}A{o['abits']}); "
            "the first and last layers are the most sensitive"
        )
    if o["finetune"] is not None and o["finetune"] not in FINETUNE_METHODS:
        raise DfcError(f"--finetune must be one of {', '.join(FINETUNE_METHODS)}, got {o['finetune']!r}")
    for key in ("finetune_batch",):
        if not isinstance(o[key], (int, np.integer)) or int(o[key]) < 1:
            raise DfcError(f"--{key.replace('_', '-')} must be an integer >= 1, got {o[key]!r}")
    if o["finetune_steps"] is not None and (not isinstance(o["finetune_steps"], (int, np.integer)) or int(o["finetune_steps"]) < 0):
        raise DfcError(f"--finetune-steps must be an integer >= 0, got {o['finetune_steps']!r}")
    if o["finetune_time"] is not None and (not isinstance(o["finetune_time"], (int, float)) or not 0 < float(o["finetune_time"]) < float("inf")):
        raise DfcError(f"--finetune-time must be a positive number of seconds, got {o['finetune_time']!r}")
    given = [k for k in ("finetune_steps", "finetune_time", "finetune_lr", "finetune_step_lr") if o[k] is not None]
    if o["finetune"] is None and given:
        raise DfcError(f"--{given[0].replace('_', '-')} is a fine-tuning option: give --finetune kd|blocks too")
    if o["finetune"] == "blocks" and o["finetune_step_lr"] is not None:
        raise DfcError("--finetune-step-lr is a kd option (blocks learns roundings at --finetune-lr)")
    if o["finetune_time"] is not None and o["finetune_steps"] is not None:
        raise DfcError("--finetune-time sets the default steps; it cannot be combined with --finetune-steps")
    for key in ("finetune_lr", "finetune_step_lr"):
        if o[key] is not None and (not isinstance(o[key], (int, float)) or not 0 < float(o[key]) < float("inf")):
            raise DfcError(f"--{key.replace('_', '-')} must be a positive number, got {o[key]!r}")
    if o["input_shape"] is not None and (not isinstance(o["input_shape"], (tuple, list)) or
                                         not all(isinstance(v, (int, np.integer)) and v >= 1 for v in o["input_shape"])):
        raise DfcError(f"--input-shape must be integers >= 1 (N,C,H,W), got {o['input_shape']!r}")
    if o["calib"] is not None:
        sample_sources.check_method(o["calib"])
    if o["calibrator"] not in activation_ranges.CALIBRATORS:
        raise DfcError(f"--calibrator must be one of {', '.join(activation_ranges.CALIBRATORS)}, got {o['calibrator']!r}")
    if not isinstance(o["prune_step"], (int, float)) or not 0.0 < float(o["prune_step"]) <= 1.0:
        raise DfcError(f"--prune-step must be in (0, 1], got {o['prune_step']!r}")
    for key in ("inverter_steps", "inverter_batch", "inverter_copies", "calib_samples", "inverter_size"):
        if o[key] is not None and (not isinstance(o[key], (int, np.integer)) or int(o[key]) < 1):
            raise DfcError(f"--{key.replace('_', '-')} must be an integer >= 1, got {o[key]!r}")
    if not isinstance(o["inverter_refine_steps"], (int, np.integer)) or int(o["inverter_refine_steps"]) < 0:
        raise DfcError(f"--inverter-refine-steps must be an integer >= 0, got {o['inverter_refine_steps']!r}")
    if not isinstance(o["inverter_lr"], (int, float)) or not 0 < float(o["inverter_lr"]) < float("inf"):
        raise DfcError(f"--inverter-lr must be a positive number, got {o['inverter_lr']!r}")
    if o["device"] is not None:
        from dfc.synth.inverter import pick_device

        try:
            pick_device(str(o["device"]))
        except RuntimeError as e:  # torch's own parse error for a device string it does not know
            raise DfcError(f"--device {o['device']}: {e}") from e
    for key in ("alpha_p", "alpha_q"):
        if not isinstance(o[key], (int, float)) or not 0.0 <= float(o[key]) < float("inf"):
            raise DfcError(f"--{key.replace('_', '-')} must be a finite number >= 0, got {o[key]!r}")
    return o


def _synthesize_pass(o: dict, method: str, fallback: bool = False):
    return get_pass("synthesize", method=method, samples=o["calib_samples"], steps=o["inverter_steps"],
                    batch=o["inverter_batch"], size=o["inverter_size"], refine_steps=int(o["inverter_refine_steps"]),
                    lr=float(o["inverter_lr"]), copies=int(o["inverter_copies"]),
                    seed=int(o["seed"]), device=o["device"], fallback=fallback)


def calibration_method(o: dict, ctx: Context, model: onnx.ModelProto) -> str:
    """--calib, else the best source the model allows (`sample_sources.best_available_method`)."""
    return o["calib"] or sample_sources.best_available_method(ctx.bn_stats_found, sample_sources.is_classifier(model))


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
        calib = calibration_method(o, ctx, model)
        if calib not in sample_sources.NOISE_METHODS:
            passes.append(_synthesize_pass(o, calib, fallback=o["calib"] is None))
    if pruning and not ctx.bn_stats_found:
        passes.append(get_pass("estimate-moments"))
    passes += [
        get_pass("prune", ratio=float(o["prune"]), scope=o["prune_scope"], criterion=o["criterion"],
                 step=float(o["prune_step"]), global_rank={"auto": "auto", "uniform": False, "global": True}[o["prune_rank"]], compensate=o["compensate"],
                 alpha_p=float(o["alpha_p"]), alpha_q=float(o["alpha_q"]), partners=o["udfc_partners"],
                 loss=o["udfc_loss"], check=bool(o["udfc_check"]), weight_bits=(o["wbits"], o["first_last_bits"]) if quantizing and compensating else None,
                 multiple=int(o["channel_multiple"]), target=prune_target(o), threads=int(o["threads"]),
                 latency_batch=int(o["probe_samples"]), depth=prune_depth(o),
                 quant={k: o[k] for k in ("wbits", "abits", "first_last_bits")} if quantizing else None),
    ]
    if quantizing and o["finetune"] == "kd" and all(o[k] == 8 for k in ("wbits", "abits", "first_last_bits")):
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
                bias_correction=bool(o["bias_correction"]),
            )
        )
    if tuning:
        passes.append(_finetune_pass(o))
    return passes


def _finetune_pass(o: dict, stage: str | None = None):
    return get_pass("finetune", method=o["finetune"], steps=o["finetune_steps"], batch=int(o["finetune_batch"]),
                    lr=o["finetune_lr"], step_lr=o["finetune_step_lr"], seed=int(o["seed"]), device=o["device"],
                    samples=o["calib_data"], time_budget_s=float(o["finetune_time"] or FinetuneConfig.time_budget_s),
                    gaussian_samples=int(o["calib_samples"] or GAUSSIAN_SAMPLES), stage=stage)


def optimize_with_report(model_or_path, **options) -> tuple[onnx.ModelProto, dict]:
    """Run the pipeline; returns (optimized model, report dict). The input is never modified."""
    from dfc.graph.stats import model_summary

    o = resolve_options(options)
    original = as_model(model_or_path)
    ctx = _context(original, o)
    ctx.original_bytes = original.ByteSize()
    if o["calib_data"] is not None:  # the probe of the pruning checks too, as synthesized samples would be
        ctx.calibration, ctx.calibration_source = np.asarray(o["calib_data"], np.float32), "user data"
    _check_save_calib(o, ctx, original)
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
    if kind == "latency":
        value = report.get("latency", {}).get("ratio")
    else:
        key = "macs" if kind == "macs" else "size_bytes"
        value = report["after"][key] / report["before"][key] if report["before"][key] else None
    out = {"kind": kind, "ratio": goal, "final": value, "searched": searched.get("measured"),
           "met": None if value is None else value <= goal}
    if value is not None and value <= goal:  # the output meets it: a miss the search measured on its stand-in is moot
        ctx.notes[:] = [n for n in ctx.notes if not n.startswith(f"prune: target {kind} ")]
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

    o = resolve_options(options)
    original = as_model(model_or_path)
    ctx = _context(original, o)
    _, original = _work_model(original, {**o, "no_quant": False}, ctx)
    method = calibration_method(o, ctx, original)
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


def _check_save_calib(o: dict, ctx: Context, model: onnx.ModelProto) -> None:
    """--save-calib refused before any work when this run will synthesize nothing, or cannot write there."""
    import os

    path = o["save_calib"]
    if not path:
        return
    method = calibration_method(o, ctx, model)
    if not uses_samples(o) or o["calib_data"] is not None or method in sample_sources.NOISE_METHODS:
        why = "--no-quant" if not uses_samples(o) else "--calib-data" if o["calib_data"] is not None else (
            f"--calib {method}" if o["calib"] else f"the model has no BatchNorm statistics nor a classifier output, so "
                                                   f"calibration uses {method} noise")
        raise DfcError(f"--save-calib {path}: this run synthesizes no calibration samples ({why})")
    folder = os.path.dirname(os.path.abspath(str(path)))
    if not os.path.isdir(folder):
        raise DfcError(f"--save-calib {path}: folder {folder} does not exist")


def save_calibration(path, ctx: Context) -> None:
    """The calibration samples of this run as .npz (key `x`, float32 model inputs), written atomically."""
    from dfc.graph.modelio import atomic_target

    if ctx.calibration is None:
        raise DfcError(f"--save-calib {path}: this run synthesized no calibration samples (a noise source, --calib-data or "
                       "--no-quant)")
    with atomic_target(path, suffix=".npz") as tmp:
        np.savez(tmp, x=ctx.calibration, source=np.array(ctx.calibration_source))


def load_calibration(path, mean=None, std=None) -> np.ndarray:
    """Calibration inputs from .npz: key `x` (float32 model inputs, as --save-calib writes), or
    `images` (uint8 NHWC, normalised with mean/std)."""
    from dfc.measure.validation import preprocess

    try:
        with np.load(path) as d:
            if "x" in d:
                return np.asarray(d["x"], np.float32)
            if "images" in d:
                if mean is None or std is None:
                    raise DfcError(f"--calib-data {path}: uint8 `images` need --input-mean/--input-std")
                return preprocess(d["images"], mean, std)
            raise DfcError(f"--calib-data {path}: no `x` (float inputs) or `images` array; found {', '.join(d.files)}")
    except (OSError, ValueError) as e:
        raise DfcError(f"--calib-data {path}: cannot read ({e})") from e


def optimize(model_or_path, **options) -> onnx.ModelProto:
    """Compress a model data-free. Options (defaults): prune=0, prune_scope='inner', criterion='udfc',
    prune_step=0.05, prune_rank='auto' (prune_global=True: 'global'), channel_multiple=None (the CPU's NCHWc block; 1: off),
    target_latency / target_size / target_macs=None (a ratio instead of `prune`),
    compensate='udfc', udfc_partners='nnls', udfc_loss='bn', udfc_check=True, alpha_p=0.0, alpha_q=1000.0, wbits=8, abits=8,
    first_last_bits=8, no_quant=False, calib=None (best
    available), calib_samples=None (256 Gaussian; BNS: the inverter's work budget), calibrator='mse', seed=0, input_mean/input_std=None,
    input_shape=None (N,C,H,W to work at where the model's input dims are symbolic; the output keeps them)."""
    return optimize_with_report(model_or_path, **{"measure": False, **options})[0]


def _input_channels(model: onnx.ModelProto) -> int | None:
    dims = model.graph.input[0].type.tensor_type.shape.dim if model.graph.input else []
    return dims[1].dim_value if len(dims) > 1 and dims[1].HasField("dim_value") else None


def measure(original: onnx.ModelProto, optimized: onnx.ModelProto, ctx: Context, o: dict) -> dict:
    """Fidelity on a Gaussian probe batch and the ORT latency ratio, both against the original."""
    from dfc.graph import ir
    from dfc.measure.latency import median_latencies
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
        med, batch = median_latencies({"original": original, "optimized": optimized}, x, threads=o["threads"],
                               rounds=o["latency_rounds"], progress="latency")
        out["latency"] = {
            "original_ms": 1e3 * med["original"], "optimized_ms": 1e3 * med["optimized"],
            "ratio": med["optimized"] / med["original"], "batch": batch, "threads": o["threads"], "rounds": o["latency_rounds"],
        }
    return out
