"""Byte-identity check for refactors: runs `dfc optimize` (in-process, through the CLI) on the shared ResNet-20 and
EfficientNet-Lite0 with the default options, W4A4, `--prune 0.3` and `--target-latency 0.6 --no-quant`, and prints
the SHA-256 of every written model. Run it on two commits and diff the outputs.

Latency is the one non-deterministic input (the target search and the float-layer choice time ORT sessions); this
tool replaces every timer by a deterministic stand-in (MACs-proportional layer times, a node-count term per model),
so the check compares the code paths, not the machine's noise.

    python tools/check_identical.py --out /tmp/ident_before.txt [--models resnet20,lite0] [--only NAME]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import sys
import tempfile

SHARED = os.environ.get("DFC_SHARED") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared")
MODELS = {
    "resnet20": ("models/resnet20_cifar10.onnx", ["--input-mean", "0.485,0.456,0.406", "--input-std", "0.229,0.224,0.225"]),
    "lite0": ("models/efficientnet_lite0_imagenet.onnx", ["--input-mean", "0.498,0.498,0.498", "--input-std", "0.502,0.502,0.502"]),
}
COMMANDS = {
    "default": [],
    "w4a4": ["--wbits", "4", "--abits", "4"],
    "prune0.3": ["--prune", "0.3"],
    "tlat0.6-float": ["--target-latency", "0.6", "--no-quant"],
}


def _model_time(model) -> float:
    """Stand-in seconds of a whole model: Σ weight elements of its initializers + a per-node term."""
    import numpy as np
    import onnx

    if isinstance(model, str):
        model = onnx.load(model)
    weights = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    return 1e-6 * weights + 1e-5 * len(model.graph.node)


def fake_median_latencies(models, x, threads=2, rounds=20, warmup=2, progress=None, samples=None):
    med = {k: _model_time(m) for k, m in models.items()}
    if samples is not None:
        samples.update({k: [v] * rounds for k, v in med.items()})
    return med, int(len(x))


def fake_layer_time(self, spec, quantized):
    return 1e-9 * spec.macs * (0.5 if quantized else 1.0) + 1e-5


def _patch() -> None:
    for name in ("dfc.measure.latency", "dfc.measure.latency"):
        try:
            importlib.import_module(name).median_latencies = fake_median_latencies
        except ImportError:
            pass
    for name in ("dfc.prune.layer_cost", "dfc.prune.layer_cost"):
        try:
            importlib.import_module(name).LatencyCost._time = fake_layer_time
        except ImportError:
            pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", default="resnet20,lite0")
    ap.add_argument("--only", default=None, help="comma-separated command names")
    ap.add_argument("--dir", default=None, help="keep the written models here (to diff two commits' outputs)")
    args = ap.parse_args(argv)
    os.environ["DFC_CACHE_DIR"] = tempfile.mkdtemp(prefix="dfc_ident_cache_")  # no real timings from the cache
    from dfc import cli

    print("dfc from", os.path.dirname(cli.__file__), file=sys.stderr)
    _patch()
    only = args.only.split(",") if args.only else list(COMMANDS)
    tmp = args.dir or tempfile.mkdtemp(prefix="dfc_ident_")
    os.makedirs(tmp, exist_ok=True)
    with open(args.out, "w") as out:
        for m in args.models.split(","):
            path, norm = MODELS[m]
            for c in only:
                dst = os.path.join(tmp, f"{m}_{c}.onnx")
                rc = cli.main(["optimize", os.path.join(SHARED, path), "-o", dst, "-q", *norm, *COMMANDS[c]])
                digest = hashlib.sha256(open(dst, "rb").read()).hexdigest()[:16] if rc == 0 else f"exit {rc}"
                out.write(f"{m} {c} {digest}\n")
                out.flush()
                print(m, c, digest, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
