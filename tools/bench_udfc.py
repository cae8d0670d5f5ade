"""UDFC benchmark: top-1 (or agreement with fp32) of pruning ratio × compensation × precision.

    python tools/bench_udfc.py ../shared/models/resnet56_cifar10.onnx \
        --data ../shared/data/cifar10_test_exact_1017.npz --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225

Rows: every `--ratios` × `--compensations` (none = plain pruning by the same criterion, single, nnls)
× `--precisions` (float, or WxAy with first/last layers at 8 bits), scope `--scope`. Extra options
for every run: `--set key=value` (e.g. `--set udfc_loss=weights --set alpha_p=0.1`; a comma list
sweeps it). Compression never reads the data: it is read only to measure. Calibration: data-free
(the pipeline's default).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path

import numpy as np


def _value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def main() -> None:
    from dfc import progress
    from dfc.api import optimize
    from dfc.graph.modelio import load_model
    from dfc.measure.validation import load_eval_data, logits_of, parse_floats, preprocess

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--data", required=True, help="labelled .npz (validation only)")
    ap.add_argument("--mean", required=True)
    ap.add_argument("--std", required=True)
    ap.add_argument("--ratios", default="0.1,0.3,0.5")
    ap.add_argument("--scope", default="inner")
    ap.add_argument("--compensations", default="none,single,nnls")
    ap.add_argument("--precisions", default="float,w6a6,w4a8")
    ap.add_argument("--criterion", help="pruning criterion for every row (default: the pipeline's)")
    ap.add_argument("--set", action="append", default=[], help="key=value[,value...] passed to dfc.optimize")
    ap.add_argument("--agreement", action="store_true", help="also report top-1 agreement with the fp32 model")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    progress.set_enabled(False)

    mean, std = parse_floats(args.mean, "--mean"), parse_floats(args.std, "--std")
    images, labels = load_eval_data(args.data)
    x = preprocess(images, mean, std)
    original = load_model(args.model)
    ref = logits_of(original, x).argmax(1)
    print(f"{args.model}: fp32 top-1 {100 * (ref == labels).mean():.2f} on {len(labels)} images ({args.data})", flush=True)
    sweeps = [[(k, _value(v)) for v in vals.split(",")] for k, vals in (s.split("=", 1) for s in args.set)]
    rows = []
    header = f"{'ratio':>5s} {'comp':>6s} {'prec':>6s} {'extra':24s} {'top-1':>6s}" + (" agree" if args.agreement else "") + "   time"
    print(header)
    for extra in itertools.product(*sweeps) if sweeps else [()]:
        for ratio, comp, prec in itertools.product(args.ratios.split(","), args.compensations.split(","), args.precisions.split(",")):
            opts = dict(extra, prune=float(ratio), prune_scope=args.scope, input_mean=mean, input_std=std, seed=0)
            if args.criterion:
                opts["criterion"] = args.criterion
            opts.update({"compensate": "none"} if comp == "none" else {"compensate": "udfc", "udfc_partners": comp})
            if prec == "float":
                opts["no_quant"] = True
            else:
                w, a = prec.lower().lstrip("w").split("a")
                opts.update(wbits=int(w), abits=int(a), first_last_bits=8)
            t0 = time.perf_counter()
            m = optimize(original, **opts)
            dt = time.perf_counter() - t0
            pred = logits_of(m, x).argmax(1)
            row = {"ratio": float(ratio), "scope": args.scope, "compensation": comp, "precision": prec,
                   "extra": dict(extra), "top1": float((pred == labels).mean()), "agreement": float((pred == ref).mean()),
                   "seconds": dt}
            rows.append(row)
            tag = ",".join(f"{k}={v}" for k, v in extra)
            print(f"{ratio:>5s} {comp:>6s} {prec:>6s} {tag:24s} {100 * row['top1']:6.2f}"
                  + (f" {100 * row['agreement']:5.2f}" if args.agreement else "") + f" {dt:6.1f}s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "data": args.data, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
