"""ORT latency of dfc W8A8 against the fp32 model and ORT's own quantize_static, in one run.

    python tools/bench_latency.py ../shared/models/resnet56_cifar10.onnx --batch 64 --threads 2

Models, all timed in one process with alternating runs (median per model):
- fp32: the input model as given;
- dfc W8A8: `dfc.optimize` defaults (data-free Gaussian calibration);
- ORT quantize_static, QDQ, per-channel int8 weights, uint8 activations (QUInt8);
- ORT quantize_static with its default activation type (QInt8).
ORT's quantizer gets dfc's cleaned, BN-folded float graph (the same graph dfc quantizes) and the
same Gaussian calibration batch; calibration does not change latency.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx


def ort_quantize_static(float_model: onnx.ModelProto, calib: np.ndarray, activation_type) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            name = float_model.graph.input[0].name
            self.it = iter([{name: calib[i : i + 32]} for i in range(0, len(calib), 32)])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "f.onnx", Path(d) / "q.onnx"
        onnx.save(float_model, src)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=activation_type)
        return onnx.load(str(dst))


def main() -> None:
    import logging

    from onnxruntime.quantization import QuantType

    from dfc.api import optimize
    from dfc.calibration import gaussian_samples
    from dfc.latency import add_timing_arguments, median_latencies
    from dfc.modelio import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    add_timing_arguments(ap)
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)

    original = load_model(args.model)
    shape = tuple(d.dim_value for d in original.graph.input[0].type.tensor_type.shape.dim[1:])
    calib = gaussian_samples(shape, 256, np.random.default_rng(1))
    models = {
        "fp32": original,
        "dfc W8A8": optimize(original),
    }
    folded = optimize(original, no_quant=True)
    models["ORT quantize_static (uint8 act)"] = ort_quantize_static(folded, calib, QuantType.QUInt8)
    models["ORT quantize_static (default, int8 act)"] = ort_quantize_static(folded, calib, QuantType.QInt8)
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
