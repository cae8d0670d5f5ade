"""FGSM robustness of compressed ResNets (issue 18's table): clean and FGSM top-1 on the exact CIFAR-10 set.

    python tools/fgsm_table.py --models resnet20,resnet56 --out docs/fgsm.md [--shared ../shared]

Rows per model: fp32, W8A8 (defaults), W4A4 (BNS), --prune 0.3 --prune-scope inner (UDFC, float); columns: clean
top-1, FGSM top-1 at ε = 1/255, 2/255, 8/255 (white-box, each model's own gradients; quantized graphs through the
STE) and the ratio of robust accuracies against fp32. One BNS synthesis per model serves both quantized rows
(the samples `dfc optimize` synthesizes with the same seed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
EPS = [1 / 255, 2 / 255, 8 / 255]
CONFIGS = {
    "fp32": None,
    "W8A8 (defaults)": dict(),
    "W4A4 (BNS)": dict(wbits=4, abits=4),
    "prune 0.3 inner (UDFC, float)": dict(prune=0.3, prune_scope="inner", no_quant=True),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,resnet56")
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--out", default="docs/fgsm.md")
    ap.add_argument("--calib-dir", help="reuse NAME_bns.npz (key x) saved from `dfc optimize --save-calib` with the "
                                        "same options instead of synthesizing again")
    args = ap.parse_args(argv)

    import dfc.api as api
    from dfc import progress
    from dfc.measure.adversarial import fgsm_eval
    from dfc.graph.modelio import load_model
    from dfc.measure.validation import load_eval_data, logits_of, preprocess, top1

    progress.set_enabled(False)
    shared = Path(args.shared)
    images, labels = load_eval_data(shared / "data/cifar10_test_exact_1017.npz")
    x = preprocess(images, MEAN, STD)
    norm = dict(input_mean=MEAN, input_std=STD, measure=False)
    results = []
    for name in args.models.split(","):
        path = shared / f"models/{name}_cifar10.onnx"
        fp32 = load_model(path)
        t0 = time.time()
        saved = Path(args.calib_dir or "-") / f"{name}_bns.npz"
        calib = np.load(saved)["x"] if args.calib_dir and saved.exists() else api.calibration_set(fp32, **norm)[0]
        ref_rows = None
        for label, opts in CONFIGS.items():
            model = fp32 if opts is None else api.optimize(fp32, **norm, **opts, **({} if opts.get("no_quant") else {"calib_data": calib}))
            rows = fgsm_eval(model, x, labels, EPS, MEAN, STD)["fgsm"]
            ref_rows = rows if opts is None else ref_rows
            clean = top1(logits_of(model, x), labels)
            results.append({"model": name, "config": label, "clean": clean,
                            "fgsm": [{**r, "ratio_to_fp32": r["top1"] / f["top1"] if f["top1"] else None} for r, f in zip(rows, ref_rows)]})
            print(json.dumps(results[-1]), flush=True)
        print(f"{name}: {time.time() - t0:.0f} s", file=sys.stderr)
    head = "| model | configuration | clean | FGSM 1/255 | FGSM 2/255 | FGSM 8/255 | robust ratio vs fp32 (1/255, 2/255, 8/255) |"
    lines = [head, "|" + "---|" * 7]
    for r in results:
        f = r["fgsm"]
        ratios = ", ".join("n/a" if v["ratio_to_fp32"] is None else f"{v['ratio_to_fp32']:.2f}" for v in f)
        lines.append(f"| {r['model']} | {r['config']} | {100 * r['clean']:.2f} | " + " | ".join(f"{100 * v['top1']:.2f}" for v in f) + f" | {ratios} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text("# FGSM robustness (exact CIFAR-10 set, 1017 images)\n\nWritten by `python tools/fgsm_table.py`.\n\n" + text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
