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


def build_parser(show_advanced: bool = False) -> argparse.ArgumentParser:
    p = _Parser(prog="dfc", description="Data-free compression compiler for ONNX models.")
    p.add_argument("--version", action="version", version=f"dfc {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    o = sub.add_parser("optimize", help="compress a model: prune, compensate, quantize (no data needed)")
    o.add_argument("input", help="input .onnx model (never modified)")
    o.add_argument("-o", "--output", required=True, help="output .onnx path (written atomically)")
    o.add_argument("--force", action="store_true", help="allow the output to overwrite the input file")
    add_optimize_options(o, show_advanced)
    o.add_argument("--report", help="write the JSON report here")

    z = sub.add_parser("batch", help="compress many models with one set of options, serially or on Ray")
    z.add_argument("inputs", nargs="+", metavar="input", help="input .onnx models (never modified)")
    z.add_argument("-o", "--output-dir", required=True,
                   help="directory for <stem>.onnx, <stem>.report.json per model and summary.json/.md")
    z.add_argument("--ray", metavar="ADDRESS",
                   help="one Ray task per model: auto (the Ray running on this machine, else a new local one) or a "
                        "cluster's address (HOST:6379, ray://HOST:10001); needs the extra dfc[distributed]")
    add_optimize_options(z, show_advanced)

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


def add_optimize_options(parser: argparse.ArgumentParser, show_advanced: bool = False) -> None:
    """The options of `dfc optimize` that `dfc batch` shares (everything but the files), from `dfc.options`."""
    from dfc.options.command_line import add_arguments

    add_arguments(parser, show_advanced)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summary")

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
    show_all = "--help-all" in argv  # the advanced options too: the same parser with their help shown
    try:
        args = build_parser(show_all).parse_args(["--help" if a == "--help-all" else a for a in argv] if show_all else argv)
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
    """The keyword arguments of `dfc.api.optimize_with_report` from the parsed flags, checked (`dfc.options.resolve`)."""
    from dfc.options import resolve
    from dfc.options.command_line import from_args

    options = from_args(args)
    resolved = resolve(options)  # every check before any work; the pipeline resolves again (same result)
    options["calib_data"] = resolved["calib_data"]  # the .npz read once, not again by each later resolve
    return options

def cmd_batch(args) -> int:
    from dfc import batch, progress

    if args.save_calib:
        raise DfcError("--save-calib does not apply to dfc batch (one file for many models); run dfc optimize on the "
                       "model whose samples you want")
    if args.ray:
        from dfc.distributed import require_ray

        require_ray()  # before any work
    options = optimize_options(args)  # a bad option fails once, before any model is read
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
    from dfc.synth.sample_files import load_calibration
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
