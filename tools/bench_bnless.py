"""Synthetic sources for BN-folded models (no BatchNorm statistics): which calibrates best (issue 29).

    python tools/bench_bnless.py --model resnet56_folded --sources gaussian,pink,inception,inception-pink-tv \
        --precisions w8a8,w4a4 --out /tmp/bnless.json

Each source gives the calibration samples of a W8A8 / W4A4 (first/last 8) `dfc.optimize` of the folded model (all
other options default); the rows are top-1 on the exact CIFAR-10 set (Lite0: the 500 ImageNet images) and top-1
agreement with the fp32 model on the JPEG set (Lite0: the same images). Sources:
  gaussian            N(0, 1) per input channel (dfc's fallback until issue 29)
  pink                1/f noise (dfc.synth.sample_sources.pink_samples)
  inception           the inverter's inception scheme from pink noise, smoothness prior (The Knowledge Within §3;
                      dfc's default for BN-less classifiers)
  inception-gaussian  the same from Gaussian noise (the scheme before issue 29)
  inception-pink      the same from pink noise
  inception-pink-tv   ... with DeepInversion's image priors (total variation, l2)
  inception-tv        Gaussian start with those priors
  inception-s4        inception from pink noise with the loss's scale 4 (e^(−logit/4): it saturates later)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PRIORS = {"w_tv": 1e-2, "w_l2": 1e-3}
SOURCES = {
    "inception": {},  # the inverter's default start for inception: pink noise
    "inception-gaussian": {"init": "gaussian"},
    "inception-pink": {"init": "pink"},
    "inception-pink-tv": {"init": "pink", **PRIORS},
    "inception-tv": PRIORS,
    "inception-s4": {"inception_scale": 4.0},
    "inception-s4-steps2x": {"inception_scale": 4.0, "steps": 200},
}
PRECISIONS = {"w8a8": {}, "w4a4": {"wbits": 4, "abits": 4, "first_last_bits": 8}}


def samples(model, source: str, mean, std, seed: int, steps: int | None, n: int | None):
    from dfc.synth import sample_sources
    from dfc.api import _context, _work_model
    from dfc.options import resolve as resolve_options
    from dfc.synth.inverter import Inverter, InverterConfig
    from dfc.pipeline import PassManager

    o = resolve_options({"input_mean": mean, "input_std": std, "seed": seed})
    ctx = _context(model, o)
    _, work = _work_model(model, o, ctx)
    shape = sample_sources.input_spec(__import__("dfc.graph.ir", fromlist=["ir"]).import_graph(work))[1]
    if source == "gaussian":
        return sample_sources.gaussian_samples(shape, n or 256, ctx.rng(salt=1), ctx.sample_range())
    if source == "pink":
        return sample_sources.pink_samples(shape, n or 256, ctx.rng(salt=1), ctx.sample_range())
    folded = PassManager(["cleanup", "fold-bn"]).run(work, ctx)
    cfg = InverterConfig(**{"method": "inception", "seed": seed, "steps": steps, "samples": n, **SOURCES[source]})
    return Inverter(folded, ctx.bn_stats, ctx.sample_range(), cfg).generate(progress=False)


def main(argv=None) -> int:
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    from dfc import progress
    from dfc.api import optimize
    from dfc.bench.suite import SHARED_MODELS, ModelBench, Settings, shared_specs
    from dfc.measure.validation import fidelity, top1

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet56_folded", choices=[k for k in SHARED_MODELS if k.endswith("_folded")])
    ap.add_argument("--sources", default="gaussian,pink,inception")
    ap.add_argument("--precisions", default="w8a8,w4a4")
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--derived", default="/tmp/dfc-derived")
    ap.add_argument("--steps", type=int, help="inverter steps (default: its work budget)")
    ap.add_argument("--samples", type=int, help="samples (default: the inverter's budget / 256)")
    ap.add_argument("--finetune", help="also fine-tune: kd|blocks")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="JSON results")
    args = ap.parse_args(argv)
    progress.set_enabled(False)
    spec = shared_specs(Path(args.shared), [args.model], derived=Path(args.derived))[0]
    bench = ModelBench(spec, Settings(out=Path(args.derived)))
    rows = []
    for source in args.sources.split(","):
        t0 = time.perf_counter()
        x = samples(bench.original, source, bench.mean, bench.std, args.seed, args.steps, args.samples)
        synth = time.perf_counter() - t0
        for prec in args.precisions.split(","):
            t1 = time.perf_counter()
            extra = {"finetune": args.finetune} if args.finetune else {}
            m = optimize(bench.original, calib_data=x, input_mean=bench.mean, input_std=bench.std, seed=args.seed,
                         measure=False, **PRECISIONS[prec], **extra)
            acc, fid = bench.logits(m)
            row = {"model": args.model, "source": source, "precision": prec, "finetune": args.finetune,
                   "top1": top1(acc, bench.labels), "agreement": fidelity(bench.ref_fid, fid)["agreement"],
                   "samples": int(len(x)), "synthesis_s": round(synth, 1), "compress_s": round(time.perf_counter() - t1, 1)}
            rows.append(row)
            print(f"{args.model} {source:20s} {prec} {args.finetune or '':6s} top-1 {100 * row['top1']:.2f}  "
                  f"agreement {100 * row['agreement']:.2f}  ({row['samples']} samples, synthesis {synth:.0f} s, "
                  f"compression {row['compress_s']:.0f} s)", flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
