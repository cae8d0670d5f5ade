"""Structured pruning benchmark: top-1, weight parameters and ORT latency ratio per configuration.

    python tools/bench_prune.py ../shared/models/resnet56_cifar10.onnx \
        --data ../shared/data/cifar10_test_exact_1017.npz --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225

Each configuration `RATIO:SCOPE[:global]` is pruned with every `--criteria` (no compensation, no
quantization; the data is read only to measure top-1). Latency: all pruned models and the original
timed in one process, alternating runs, median of `--rounds` per model, batch `--batch`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np


def main() -> None:
    from dfc.api import optimize_with_report
    from dfc.synth.sample_sources import gaussian_samples
    from dfc.measure.latency import add_timing_arguments, median_latencies
    from dfc.graph.modelio import load_model
    from dfc.graph.stats import model_summary
    from dfc.measure.validation import load_eval_data, logits_of, parse_floats, preprocess

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--configs", default="0.3:inner,0.5:all", help="comma-separated RATIO:SCOPE[:global]")
    ap.add_argument("--criteria", default="l1,l2,paoding,l1-prebn")
    ap.add_argument("--data", help="labelled .npz for top-1 (validation only)")
    ap.add_argument("--mean")
    ap.add_argument("--std")
    add_timing_arguments(ap)
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)

    original = load_model(args.model)
    data = None
    if args.data:
        images, labels = load_eval_data(args.data)
        data = preprocess(images, parse_floats(args.mean, "--mean"), parse_floats(args.std, "--std")), labels
    base_params = model_summary(original)["weight_params"]
    models, rows = {"original": original}, []
    for cfg in args.configs.split(","):
        ratio, scope, *glob = cfg.split(":")
        for crit in args.criteria.split(","):
            m, rep = optimize_with_report(original, prune=float(ratio), prune_scope=scope, criterion=crit,
                                          prune_global=glob == ["global"], compensate="none", no_quant=True, measure=False)
            name = f"{ratio} {scope}{' global' if glob else ''} {crit}"
            models[name] = m
            row = {"config": name, "params": rep["after"]["weight_params"], "params_ratio": rep["after"]["weight_params"] / base_params,
                   "macs_ratio": rep["after"]["macs"] / rep["before"]["macs"]}
            if data is not None:
                row["top1"] = float((logits_of(m, data[0]).argmax(1) == data[1]).mean())
            rows.append(row)
            print(f"pruned {name}: params {row['params_ratio']:.3f}x" + (f", top-1 {100 * row['top1']:.2f}" if data else ""), flush=True)
    shape = tuple(d.dim_value for d in original.graph.input[0].type.tensor_type.shape.dim[1:])
    x = gaussian_samples(shape, args.batch, np.random.default_rng(2))
    med, batch = median_latencies(models, x, threads=args.threads, rounds=args.rounds, progress="timing")
    ref_top1 = float((logits_of(original, data[0]).argmax(1) == data[1]).mean()) if data is not None else None
    print(f"\n{args.model}: batch {batch}, {args.threads} threads, median of {args.rounds} alternating runs; "
          f"original {1e3 * med['original']:.2f} ms" + (f", top-1 {100 * ref_top1:.2f}" if data else ""))
    print(f"{'config':28s} {'top-1':>7s} {'params':>8s} {'MACs':>7s} {'latency':>8s}")
    for row in rows:
        row["latency_ratio"] = med[row["config"]] / med["original"]
        top1 = f"{100 * row['top1']:.2f}" if "top1" in row else "-"
        print(f"{row['config']:28s} {top1:>7s} {row['params_ratio']:7.3f}x {row['macs_ratio']:6.3f}x {row['latency_ratio']:7.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "batch": batch, "threads": args.threads, "rounds": args.rounds,
                                               "original_ms": 1e3 * med["original"], "original_top1": ref_top1, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
