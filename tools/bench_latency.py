"""ORT latency of dfc W8A8 against the fp32 model and ORT's own quantize_static, in one run.

    python tools/bench_latency.py ../shared/models/resnet56_cifar10.onnx --batch 64 --threads 2
    python tools/bench_latency.py ../shared/models/efficientnet_lite0_imagenet.onnx --dfc l0.onnx --batch 16

Models, all timed in one process with alternating runs (median per model):
- fp32: the input model as given;
- dfc W8A8: the model given with --dfc (e.g. the output of a default `dfc optimize`), else `dfc.optimize` with
  Gaussian calibration (calibration does not change the graph's form, so neither the latency);
- ORT `quant_pre_process` + `quantize_static` (`dfc.bench.baselines`), QDQ, per-channel int8 weights, uint8 activations;
- the same with ORT's default activation type (int8).
ORT's quantizer is calibrated on Gaussian noise; calibration does not change latency.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    import logging

    from dfc.api import optimize
    from dfc.bench.baselines import ort_quantize_static
    from dfc.synth.sample_sources import gaussian_samples
    from dfc.measure.latency import add_timing_arguments, median_latencies
    from dfc.graph.modelio import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--dfc", help="a dfc output of this model to time (default: dfc W8A8 with Gaussian calibration)")
    add_timing_arguments(ap)
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)

    original = load_model(args.model)
    shape = tuple(d.dim_value for d in original.graph.input[0].type.tensor_type.shape.dim[1:])
    calib = gaussian_samples(shape, 32, np.random.default_rng(1))
    models = {
        "fp32": original,
        "dfc W8A8": load_model(args.dfc) if args.dfc else optimize(original, calib="gaussian"),
        "ORT quantize_static (uint8 act)": ort_quantize_static(original, calib, "uint8"),
        "ORT quantize_static (default, int8 act)": ort_quantize_static(original, calib, "int8"),
    }
    x = gaussian_samples(shape, args.batch, np.random.default_rng(2))
    med, batch = median_latencies(models, x, threads=args.threads, rounds=args.rounds, progress="timing")
    print(f"{args.model}: batch {batch}, {args.threads} intra-op threads, median of {args.rounds} alternating runs")
    print(f"{'model':42s} {'median ms':>10s} {'vs fp32':>8s}")
    for k, v in med.items():
        print(f"{k:42s} {1e3 * v:10.2f} {v / med['fp32']:7.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"batch": batch, "threads": args.threads, "rounds": args.rounds,
                                               "median_s": med, "ratio": {k: v / med["fp32"] for k, v in med.items()}}, indent=2))


if __name__ == "__main__":
    main()
