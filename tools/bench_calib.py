"""Calibration benchmark: BNS vs Gaussian vs real images, same calibrator, several precisions.

    python tools/bench_calib.py ../shared/models/resnet20_cifar10.onnx \
        --data ../shared/data/cifar10_test_exact_1017.npz --real ../shared/data/cifar10_test_jpeg_5000.npz \
        --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225

Calibration sets (all `--samples` large): `bns` and `gaussian` from dfc's generators (data-free),
`real`: the first images of `--real` (the non-data-free control). Each set is scored by J_KL
against the model's BN statistics (`dfc bns-score`), then every `--precisions` model (first/last
layers 8-bit) is calibrated on it with `--calibrator` and scored by top-1 on `--data`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np


def main() -> None:
    from dfc.synth import sample_sources
    from dfc import progress
    from dfc.api import optimize
    from dfc.synth.inverter import Inverter, InverterConfig, score
    from dfc.graph.modelio import load_model
    from dfc.pipeline import PassManager, context_from_model
    from dfc.measure.validation import load_eval_data, logits_of, parse_floats, preprocess

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--data", required=True, help="labelled .npz for top-1 (validation only)")
    ap.add_argument("--real", required=True, help=".npz of real images for the non-data-free control")
    ap.add_argument("--mean", required=True)
    ap.add_argument("--std", required=True)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--sets", default="bns,gaussian,real")
    ap.add_argument("--precisions", default="w4a4,w4a8,w8a8")
    ap.add_argument("--calibrator", default="mse")
    ap.add_argument("--steps", type=int, default=None, help="inverter steps (default: dfc's)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--json")
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)

    mean, std = parse_floats(args.mean, "--mean"), parse_floats(args.std, "--std")
    images, labels = load_eval_data(args.data)
    x_eval = preprocess(images, mean, std)
    original = load_model(args.model)
    ctx = context_from_model(original)
    ctx.input_mean, ctx.input_std = mean, std
    folded = PassManager(["cleanup", "fold-bn"]).run(original, ctx)
    fp32 = float((logits_of(original, x_eval).argmax(1) == labels).mean())
    print(f"{args.model}: fp32 top-1 {100 * fp32:.2f} on {len(labels)} images", flush=True)

    sets, info = {}, {}
    for name in args.sets.split(","):
        t0 = time.perf_counter()
        if name == "real":
            sets[name] = preprocess(load_eval_data(args.real)[0][: args.samples], mean, std)
        elif name == "gaussian":
            sets[name] = sample_sources.gaussian_samples(x_eval.shape[1:], args.samples, np.random.default_rng([0, 1]),
                                                      ctx.input_range())
        else:
            cfg = InverterConfig(method=name, samples=args.samples, device=args.device)
            if args.steps:
                cfg.steps = args.steps
            sets[name] = Inverter(folded, ctx.bn_stats, ctx.input_range(), cfg).generate(progress=True)
        dt = time.perf_counter() - t0
        info[name] = {"j_kl": score(folded, ctx.bn_stats, sets[name]), "seconds": dt, "samples_per_second": len(sets[name]) / dt}
        print(f"set {name:14s} J_KL {info[name]['j_kl']:.4f}  ({dt:.1f} s, {info[name]['samples_per_second']:.2f} samples/s)", flush=True)
    progress.set_enabled(False)
    rows = []
    print(f"{'precision':10s} " + " ".join(f"{s:>14s}" for s in sets))
    for prec in args.precisions.split(","):
        w, a = prec.lower().lstrip("w").split("a")
        accs = {}
        for name, x in sets.items():
            m = optimize(original, wbits=int(w), abits=int(a), first_last_bits=8, calib_data=x, calibrator=args.calibrator,
                         input_mean=mean, input_std=std)
            accs[name] = float((logits_of(m, x_eval).argmax(1) == labels).mean())
            rows.append({"precision": prec, "set": name, "top1": accs[name]})
        print(f"{prec:10s} " + " ".join(f"{100 * accs[s]:14.2f}" for s in sets), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "fp32_top1": fp32, "sets": info, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
