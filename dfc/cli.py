"""`dfc` command line: optimize, batch, eval, bns-score, inspect, bench.

Exit codes: 0 success; 2 bad input or usage (the message names the file, node or option);
1 internal error (one-line hint; `--debug` prints the traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from dfc import __version__
from dfc.errors import DfcError

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors: exit 2 with our prefix
        self.print_usage(sys.stderr)
        raise SystemExit(_fail(f"{self.prog}: {message}", EXIT_USAGE))


def _fail(msg: str, code: int) -> int:
    print(f"dfc: error: {msg}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dfc", description="Data-free compression compiler for ONNX models.")
    p.add_argument("--version", action="version", version=f"dfc {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    o = sub.add_parser("optimize", help="compress a model: prune, compensate, quantize (no data needed)")
    o.add_argument("input", help="input .onnx model (never modified)")
    o.add_argument("-o", "--output", required=True, help="output .onnx path (written atomically)")
    o.add_argument("--force", action="store_true", help="allow the output to overwrite the input file")
    add_optimize_options(o)
    o.add_argument("--report", help="write the JSON report here")

    z = sub.add_parser("batch", help="compress many models with one set of options, serially or on Ray")
    z.add_argument("inputs", nargs="+", metavar="input", help="input .onnx models (never modified)")
    z.add_argument("-o", "--output-dir", required=True,
                   help="directory for <stem>.onnx, <stem>.report.json per model and summary.json/.md")
    z.add_argument("--ray", metavar="ADDRESS",
                   help="one Ray task per model: auto (the Ray running on this machine, else a new local one) or a "
                        "cluster's address (HOST:6379, ray://HOST:10001); needs the extra dfc[distributed]")
    add_optimize_options(z)

    e = sub.add_parser("eval", help="top-1 on labelled images; fidelity to a reference model, per output")
    e.add_argument("model")
    e.add_argument("--data", required=True, help=".npz with `images` uint8 [N,H,W,C] and `labels` (labels optional "
                                                 "with --reference: fidelity only)")
    e.add_argument("--mean", help="per-channel mean (default: the model's dfc metadata)")
    e.add_argument("--std", help="per-channel std (default: the model's dfc metadata)")
    e.add_argument("--reference", help="reference model (e.g. the fp32 original): per output relative L2 error and "
                                       "SQNR, top-1 agreement and KL for [N, classes] outputs")
    e.add_argument("--fgsm", help="also top-1 under FGSM at these ε in pixel units, e.g. 1/255,2/255,8/255 (with "
                                  "--reference: the reference's own, the transfer case and the robust-accuracy ratio)")
    e.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    e.add_argument("--debug", action="store_true")

    b = sub.add_parser("bns-score", help="J_KL of a data set against the model's BatchNorm statistics")
    b.add_argument("model")
    b.add_argument("--data", required=True, help=".npz with `x` (float model inputs) or `images` (uint8 NHWC)")
    b.add_argument("--mean", help="per-channel mean for `images` (default: the model's dfc metadata)")
    b.add_argument("--std", help="per-channel std for `images`")
    b.add_argument("--batch", type=int, default=256, help="J_KL is the mean over batches of this size (default 256)")
    b.add_argument("--fgsm", help="score the FGSM-perturbed set at these ε in pixel units, e.g. 8/255 (labels from the "
                                  "data's `labels`, else the model's own predictions; needs the normalisation)")
    b.add_argument("--json", action="store_true")
    b.add_argument("--debug", action="store_true")

    sub.add_parser("bench", help="benchmark models x configurations against ORT quantize_static (dfc bench --help)",
                   add_help=False)

    i = sub.add_parser("inspect", help="per-layer table: op, shapes, params, MACs, BN, quantized")
    i.add_argument("model")
    i.add_argument("--json", action="store_true")
    i.add_argument("--debug", action="store_true")
    return p


def add_optimize_options(o: argparse.ArgumentParser) -> None:
    """The options of `dfc optimize` that `dfc batch` shares (everything but the input/output files)."""
    from dfc.synth.sample_sources import CALIB_METHODS
    from dfc.compensate.compensation import LOSSES as UDFC_LOSSES, METHODS as COMPENSATIONS, PARTNERS as UDFC_PARTNERS
    from dfc.passes.prune import CRITERIA, SCOPES as PRUNE_SCOPES

    o.add_argument("--prune", type=float, help="fraction of the scope's channels to remove, in [0, 1) (default 0)")
    o.add_argument("--prune-scope", choices=PRUNE_SCOPES, help="inner: block-private channels; all: residual streams too")
    o.add_argument("--criterion", choices=CRITERIA,
                   help="channel ranking: udfc (predicted consumer error after compensation, default), norms of the "
                        "BN-folded filters (l1, l2), PAODING scale and pair-wise dense pruning (paoding), l1 of the "
                        "filters before BN folding (l1-prebn)")
    o.add_argument("--prune-step", type=float, help="progressive pruning step, re-ranking after each (default 0.05)")
    o.add_argument("--prune-rank", choices=["auto", "uniform", "global"],
                   help="uniform: the same ratio in every layer; global: channels ranked across layers by the share of "
                        "their layer's signal they carry; auto (default): both, the one closer to the model on the "
                        "synthetic probe inputs kept")
    o.add_argument("--prune-global", action="store_true", help="the same as --prune-rank global")
    o.add_argument("--channel-multiple", type=int,
                   help="pruned Conv layers keep a multiple of K channels or stay whole (default: the channel block of "
                        "ONNX Runtime's NCHWc conv kernels on this CPU, 16 with AVX-512, 8 with AVX2; 1: off)")
    o.add_argument("--target-latency", type=float,
                   help="prune until the ORT latency ratio against the original (measured here, batch 64) is at most R; "
                        "counts quantization when it is on")
    o.add_argument("--target-size", type=float, help="prune until the file is at most R times the original's")
    o.add_argument("--target-macs", type=float, help="prune until the MACs are at most R times the original's")
    o.add_argument("--prune-depth", choices=("on", "off"),
                   help="toward a target, remove whole residual branches (least error on the synthetic probe per cost "
                        "saved) before channels (default on; needs calibration samples, synthesized also with --no-quant)")
    o.add_argument("--compensate", choices=COMPENSATIONS,
                   help="data-free compensation of pruned and quantized channels (default udfc)")
    o.add_argument("--udfc-partners", choices=UDFC_PARTNERS,
                   help="rebuild a pruned channel from one kept channel (single) or a non-negative combination (nnls, default)")
    o.add_argument("--udfc-loss", choices=UDFC_LOSSES,
                   help="reconstruction error on the BN-moment model of the activations (bn, default) or on the "
                        "folded weights and biases (weights)")
    o.add_argument("--no-udfc-check", action="store_true",
                   help="keep the pruning compensation even where it does not lower the output error on synthetic "
                        "probe inputs (by default the pruned model with and without it are compared and the closer kept)")
    o.add_argument("--no-requant", action="store_true",
                   help="no UDFC rescaling for quantized channels (pruned channels are still compensated)")
    o.add_argument("--alpha-p", type=float, help="bias weight of the UDFC weights loss for pruned channels (default 0, from a sweep)")
    o.add_argument("--alpha-q", type=float, help="bias weight of the UDFC loss for quantized channels (default 1000, from a sweep)")
    o.add_argument("--wbits", type=int, help="weight bit width 2-8 (default 8)")
    o.add_argument("--abits", type=int, help="activation bit width 2-8 (default 8)")
    o.add_argument("--first-last-bits", type=int, help="bit width of the first and last layers (default 8)")
    o.add_argument("--no-quant", action="store_true", help="no quantization (float output)")
    o.add_argument("--calib", choices=CALIB_METHODS,
                   help="synthetic calibration data (default: bns with BatchNorm statistics; without them inception "
                        "for classifiers, else pink noise)")
    o.add_argument("--calib-samples", type=int, help="number of calibration samples (default: 256 Gaussian; BNS: as many "
                                                      "as the inverter's work budget allows, 256 at most)")
    o.add_argument("--no-bias-correction", action="store_true",
                   help="no bias correction (by default each quantized layer's bias cancels the mean output shift its "
                        "weight and input quantization cause, measured on the calibration samples)")
    o.add_argument("--calibrator", choices=["minmax", "percentile", "mse"], help="activation range rule (default mse: the range that minimises the quantization error)")
    o.add_argument("--calib-data", help="calibrate on these inputs instead: .npz with `x` (float, as --save-calib "
                                        "writes) or `images` (uint8 NHWC, with --input-mean/--input-std)")
    o.add_argument("--save-calib", help="save the synthesized calibration samples to this .npz (key `x`)")
    o.add_argument("--inverter-steps", type=int, help="BNS inverter: Adam steps per batch (default: from the work "
                                                       "budget, 100-200)")
    o.add_argument("--inverter-batch", type=int, help="BNS inverter: samples optimised together (default: all)")
    o.add_argument("--inverter-size", type=int, help="BNS inverter: synthesize at this image side, then upsample "
                                                      "(default: smaller only for inputs costing > 130 M MACs)")
    o.add_argument("--inverter-refine-steps", type=int,
                   help="BNS inverter: steps at full size after a smaller synthesis size (default 0)")
    o.add_argument("--inverter-lr", type=float, help="BNS inverter: Adam learning rate (default 0.1)")
    o.add_argument("--inverter-copies", type=int, help="BNS inverter: augmented copies per sample and step (default 1)")
    o.add_argument("--finetune", choices=["kd", "blocks"],
                   help="train the compressed model against the float one on the synthetic samples: kd (knowledge "
                        "distillation, The Knowledge Within Alg. 2) or blocks (block-wise reconstruction, BRECQ/AdaRound)")
    o.add_argument("--finetune-steps", type=int, help="fine-tuning steps (kd: in all; blocks: per block; default: "
                                                      "from a 300 s time budget on 2 CPU cores, predicted from the graph)")
    o.add_argument("--finetune-time", type=float, help="seconds of fine-tuning the default steps fill, predicted from "
                                                       "the graph for 2 CPU cores (default 300; not with --finetune-steps)")
    o.add_argument("--finetune-batch", type=int, help="fine-tuning batch size (default 32)")
    o.add_argument("--finetune-lr", type=float, help="fine-tuning Adam learning rate (default: kd 3e-4 for float "
                                                     "parameters, blocks 1e-2 for the roundings)")
    o.add_argument("--finetune-step-lr", type=float, help="kd: Adam's step on quantized weights, in units of each "
                                                          "channel's quantization step (default 0.01)")
    o.add_argument("--device", help="BNS inverter and fine-tuning device, e.g. cpu or cuda (default: cuda when available)")
    o.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    o.add_argument("--input-mean", help="per-channel mean of the input normalisation, e.g. 0.485,0.456,0.406")
    o.add_argument("--input-std", help="per-channel std of the input normalisation")
    o.add_argument("--input-shape", help="N,C,H,W to synthesize, calibrate and time at when the model's input dims "
                                         "are symbolic (default: the shape of --calib-data); the written model keeps them")
    o.add_argument("--no-measure", action="store_true", help="skip the fidelity probe and latency measurement")
    o.add_argument("--debug", action="store_true", help="check validity after every pass; tracebacks on errors")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summary")



def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.ERROR, format="dfc: %(message)s")
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # ORT's optimizer warnings (sessions graphsurgeon makes too) are not ours
    if argv[:1] == ["bench"]:  # the benchmark has its own parser (dfc.bench)
        from dfc import bench

        try:
            return _guarded(lambda: bench.main(argv[1:]), debug="--debug" in argv)
        except SystemExit as e:  # its parser's usage errors and --help
            return int(e.code or 0)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # usage errors (exit 2, message printed), --help and --version (0)
        return int(e.code or 0)
    args.argv = argv
    command = {"optimize": cmd_optimize, "batch": cmd_batch, "eval": cmd_eval, "inspect": cmd_inspect, "bns-score": cmd_bns_score}[args.command]
    return _guarded(lambda: command(args), debug=getattr(args, "debug", False))


def _guarded(run, debug: bool) -> int:
    """Exit codes: DfcError -> 2 with its message, Ctrl-C -> 130, anything else -> 1 with a one-line hint."""
    try:
        return run()
    except DfcError as err:
        return _fail(str(err), EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail("interrupted; no output was written", EXIT_INTERRUPTED)
    except Exception as err:  # internal error: one line, traceback with --debug
        if debug:
            raise
        return _fail(f"internal error: {type(err).__name__}: {err} (run with --debug for the traceback)", EXIT_INTERNAL)


def cmd_optimize(args) -> int:
    from dfc import progress
    from dfc.api import optimize_with_report
    from dfc.graph.modelio import load_model, save_model_atomic
    from dfc.report import summary_table, write_json_atomic

    src, dst = Path(args.input), Path(args.output)
    if dst.exists() and src.exists() and dst.resolve() == src.resolve() and not args.force:
        raise DfcError(f"-o {dst} is the input file; refusing to overwrite it (use --force)")
    options = optimize_options(args)
    progress.set_enabled(not args.quiet)
    optimized, report = optimize_with_report(load_model(src), **options)
    report["input"], report["output"] = str(src), str(dst)
    report["after"]["size_bytes"] = save_model_atomic(optimized, dst)
    if args.report:
        write_json_atomic(report, args.report)
    if not args.quiet:
        print(f"wrote {dst}")
        print(summary_table(report))
    return EXIT_OK


def optimize_options(args) -> dict:
    """The keyword arguments of `dfc.optimize_with_report` from the shared optimize options (checked together)."""
    from dfc.api import DEFAULTS, load_calibration, uses_samples
    from dfc.measure.validation import parse_floats, parse_ints

    if args.no_quant and any(v is not None for v in (args.wbits, args.abits, args.first_last_bits)):
        raise DfcError("--no-quant conflicts with --wbits/--abits/--first-last-bits")
    sampling = uses_samples({"no_quant": args.no_quant, "finetune": args.finetune,
                             "prune_depth": args.prune_depth or DEFAULTS["prune_depth"], "target_latency": args.target_latency,
                             "target_size": args.target_size, "target_macs": args.target_macs})
    if not sampling and any(v is not None for v in (args.calib, args.calib_data, args.save_calib)):
        raise DfcError("--no-quant without --finetune (or --prune-depth on with a target) uses no samples: "
                       "--calib/--calib-data/--save-calib do not apply")
    if args.calib_data and args.calib:
        raise DfcError("--calib-data and --calib are exclusive (the data replaces the generator)")
    mean, std = parse_floats(args.input_mean, "--input-mean"), parse_floats(args.input_std, "--input-std")
    calib_data = load_calibration(args.calib_data, mean, std) if args.calib_data else None
    return dict(
        prune=args.prune, prune_scope=args.prune_scope, criterion=args.criterion, compensate=args.compensate,
        alpha_p=args.alpha_p, alpha_q=args.alpha_q, udfc_partners=args.udfc_partners, udfc_loss=args.udfc_loss,
        udfc_requant=False if args.no_requant else None, udfc_check=False if args.no_udfc_check else None,
        prune_step=args.prune_step, prune_global=args.prune_global or None, prune_rank=args.prune_rank,
        channel_multiple=args.channel_multiple, target_latency=args.target_latency, target_size=args.target_size,
        target_macs=args.target_macs, prune_depth=args.prune_depth,
        wbits=args.wbits, abits=args.abits, first_last_bits=args.first_last_bits, no_quant=args.no_quant,
        calib=args.calib, calib_samples=args.calib_samples, calibrator=args.calibrator,
        bias_correction=False if args.no_bias_correction else None, seed=args.seed,
        calib_data=calib_data, save_calib=args.save_calib, inverter_steps=args.inverter_steps,
        inverter_batch=args.inverter_batch, inverter_lr=args.inverter_lr, inverter_copies=args.inverter_copies,
        inverter_size=args.inverter_size, inverter_refine_steps=args.inverter_refine_steps,
        finetune=args.finetune, finetune_steps=args.finetune_steps, finetune_time=args.finetune_time,
        finetune_batch=args.finetune_batch, finetune_lr=args.finetune_lr, finetune_step_lr=args.finetune_step_lr,
        device=args.device, input_mean=mean, input_std=std, input_shape=parse_ints(args.input_shape, "--input-shape"),
        debug=args.debug, measure=not args.no_measure,
    )


def cmd_batch(args) -> int:
    from dfc import batch, progress
    from dfc.api import resolve_options

    if args.save_calib:
        raise DfcError("--save-calib does not apply to dfc batch (one file for many models); run dfc optimize on the "
                       "model whose samples you want")
    if args.ray:
        from dfc.distributed import require_ray

        require_ray()  # before any work
    options = optimize_options(args)
    resolve_options(options)  # a bad option fails once, before any model is read
    progress.set_enabled(not args.quiet and not args.ray)
    echo = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    summary = batch.run(args.inputs, args.output_dir, options, ray_address=args.ray, echo=echo,
                        command="dfc " + " ".join(args.argv))
    if not args.quiet:
        print(batch.summary_text(summary))
        print(f"wrote {args.output_dir}/summary.json and summary.md")
    failed = [r for r in summary["models"] if "error" in r]
    if not failed:
        return EXIT_OK
    _fail(f"{len(failed)} of {len(summary['models'])} model(s) failed: "
          + "; ".join(batch.failure_line(r) for r in failed), EXIT_USAGE)
    return EXIT_INTERNAL if any(r["internal"] for r in failed) else EXIT_USAGE


def cmd_eval(args) -> int:
    from dfc.graph.modelio import load_model
    from dfc.pipeline import context_from_model
    from dfc.measure.validation import (check_input_shape, check_normalisation, fidelity_lines, is_classifier_output,
                                load_eval_data, output_fidelity, outputs_of, parse_floats, preprocess, top1)

    if args.fgsm:
        from dfc.measure.adversarial import parse_eps

        parse_eps(args.fgsm)  # a bad ε fails before any work
    model = load_model(args.model)
    images, labels = load_eval_data(args.data, need_labels=not args.reference)
    if labels is None and args.fgsm:
        raise DfcError(f"--fgsm needs labels: {args.data} has none")
    mean, std = parse_floats(args.mean, "--mean"), parse_floats(args.std, "--std")
    if mean is None and std is None:
        ctx = context_from_model(model)
        mean, std = ctx.input_mean, ctx.input_std
        if mean is None:
            raise DfcError(f"{args.model}: no input normalisation in the model's metadata; give --mean and --std")
    check_normalisation(mean, std, images.shape[-1])
    x = preprocess(images, mean, std)
    check_input_shape(model, x, f"--data {args.data}")
    outputs = outputs_of(model, x, progress=None if args.json else "eval")
    logits = next(iter(outputs.values()))
    result = {"model": args.model, "data": args.data, "n": int(len(x))}
    lines = []
    if labels is not None and is_classifier_output(logits):
        result["top1"] = top1(logits, labels)
        lines.append(f"top-1: {100 * result['top1']:.2f} % on {result['n']} images")
    if args.reference:
        ref = load_model(args.reference)
        check_input_shape(ref, x, f"--data {args.data}")
        ref_outputs = outputs_of(ref, x)
        missing = [k for k in ref_outputs if k not in outputs]
        if missing:
            raise DfcError(f"{args.model} has no output {missing[0]!r} of the reference {args.reference}")
        result["outputs"] = output_fidelity(ref_outputs, outputs)
        first = result["outputs"][next(iter(ref_outputs))]
        result.update({k: first[k] for k in ("agreement", "mean_kl", "max_abs_diff") if k in first})
        if "top1" in result:
            result["reference_top1"] = top1(next(iter(ref_outputs.values())), labels)
            lines.append(f"reference top-1: {100 * result['reference_top1']:.2f} %")
        lines.append(f"fidelity to {args.reference} on {result['n']} images:")
        lines += ["  " + line for line in fidelity_lines(result["outputs"])]
    if args.fgsm:
        from dfc.measure.adversarial import fgsm_eval, parse_eps

        result.update(fgsm_eval(model, x, labels, parse_eps(args.fgsm), mean, std, ref if args.reference else None))
        for r in result["fgsm"]:
            line = f"FGSM eps {r['eps_255']:g}/255: top-1 {100 * r['top1']:.2f} %"
            if args.reference:
                ratio = "n/a" if r["robust_ratio"] is None else f"{r['robust_ratio']:.3f}"
                line += (f"  (reference {100 * r['reference_top1']:.2f} %, ratio {ratio}; "
                         f"reference's adversarial inputs: {100 * r['transfer_top1']:.2f} %)")
            lines.append(line)
    print("\n".join(lines))
    if args.json:
        print(json.dumps(result))
    return EXIT_OK


def cmd_bns_score(args) -> int:
    from dfc.api import load_calibration
    from dfc.synth.inverter import score
    from dfc.graph.modelio import load_model
    from dfc.pipeline import PassManager, context_from_model
    from dfc.measure.validation import check_input_shape, parse_floats
    from dfc.measure.adversarial import parse_eps

    eps_list = parse_eps(args.fgsm) if args.fgsm else None
    model = load_model(args.model)
    ctx = context_from_model(model)
    mean, std = parse_floats(args.mean, "--mean"), parse_floats(args.std, "--std")
    if mean is None and std is None:
        mean, std = ctx.input_mean, ctx.input_std
    x = load_calibration(args.data, mean, std)
    folded = PassManager(["cleanup", "fold-bn"]).run(model, ctx)
    check_input_shape(folded, x[:2], f"--data {args.data}")
    if not ctx.bn_stats:
        raise DfcError(f"{args.model}: no BatchNorm statistics (no BN nodes, no dfc metadata) to score against")
    value = score(folded, ctx.bn_stats, x, batch=args.batch)
    result = {"model": args.model, "data": args.data, "n": int(len(x)), "batch": args.batch, "j_kl": value,
              "bn_layers": len(ctx.bn_stats)}
    print(f"J_KL {value:.5f} ({len(x)} samples, batches of {args.batch}, {len(ctx.bn_stats)} BN layers + the input)")
    if eps_list:
        from dfc.measure.adversarial import fgsm, input_gradients
        from dfc.measure.validation import logits_of

        if mean is None or std is None:
            raise DfcError("--fgsm needs the input normalisation (--mean/--std or the model's dfc metadata)")
        labels = _labels_of(args.data)
        labels = logits_of(folded, x).argmax(1) if labels is None or len(labels) != len(x) else labels
        grad = input_gradients(folded, x, labels)
        result["fgsm"] = []
        for eps in eps_list:
            v = score(folded, ctx.bn_stats, fgsm(x, grad, eps, mean, std), batch=args.batch)
            result["fgsm"].append({"eps": eps, "eps_255": round(eps * 255, 3), "j_kl": v})
            print(f"J_KL under FGSM eps {eps * 255:g}/255: {v:.5f}")
    if args.json:
        print(json.dumps(result))
    return EXIT_OK


def _labels_of(path) -> np.ndarray | None:
    with np.load(path) as d:
        return np.asarray(d["labels"]) if "labels" in d else None


def cmd_inspect(args) -> int:
    from dfc.graph.modelio import load_model
    from dfc.report import human, layer_table
    from dfc.graph.stats import layer_stats, model_summary, rows_as_dicts

    model = load_model(args.model)
    rows = rows_as_dicts(layer_stats(model))
    totals = model_summary(model)
    if args.json:
        print(json.dumps({"layers": rows, "totals": totals}))
        return EXIT_OK
    print(layer_table(rows))
    print(
        f"total: {totals['layers']} weighted layers ({totals['quantized_layers']} quantized), "
        f"{human(totals['weight_params'])} weight params, {human(totals['macs'])} MACs/sample, "
        f"{human(totals['size_bytes'], 'B')}, {totals['bn_nodes']} BatchNormalization nodes"
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
