"""`dfc bench` / `tools/bench.py`: models × configurations, with ONNX Runtime's own quantizer beside dfc.

    python tools/bench.py --quick --out bench-quick          # ResNet-20, a representative subset
    python tools/bench.py --out bench-full                   # ResNet-20 and ResNet-56, the whole matrix
    python tools/bench.py --models resnet56 --configs 'w4a4-*,ort-*' --out DIR

    python tools/bench.py --models efficientnet_lite0 --configs 'w8a8-*-p0-udfc,ort-u8-*' --out DIR

Each row: top-1 on the model's labelled set (the exact CIFAR-10 set; EfficientNet-Lite0: the 500 ImageNet images),
agreement with the fp32 model on the fidelity set (the JPEG CIFAR-10 set; Lite0: the same 500 images), weight
params, nominal weight size (params × bit width), file size, MACs, ORT latency as a ratio to the fp32
model (both sessions in this process, alternating runs, median), and the time the compression took.
BNS samples are synthesized once per model and method and shared by every row that calibrates on
them (the same samples `dfc optimize` would synthesize with the same seed); that one-off time is the
row's `calib_seconds`. Writes results.json (after every row), results.md and PNG plots into --out.
Labelled data is read for validation only; the compression paths never see it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from dfc.bench.matrix import Config, select
from dfc.errors import DfcError

CIFAR_MEAN, CIFAR_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EXACT_SET, JPEG_SET = "data/cifar10_test_exact_1017.npz", "data/cifar10_test_jpeg_5000.npz"
IMAGENET_SET = "data/imagenet_sample_500_224.npz"
# name -> (model, labelled set for top-1 (None: fidelity only), set for fidelity, input mean, input std, real
# calibration images for ORT, the input shape to work at where the model's dims are symbolic)
SHARED_MODELS = {
    "resnet20": ("models/resnet20_cifar10.onnx", EXACT_SET, JPEG_SET, CIFAR_MEAN, CIFAR_STD, 256, None),
    "resnet56": ("models/resnet56_cifar10.onnx", EXACT_SET, JPEG_SET, CIFAR_MEAN, CIFAR_STD, 256, None),
    # the 500 ImageNet images are both sets; ORT's real calibration takes 128 of them (no other real images are at
    # hand, so that baseline is slightly favoured: it has seen a quarter of the images it is scored on)
    "efficientnet_lite0": ("models/efficientnet_lite0_imagenet.onnx", IMAGENET_SET, IMAGENET_SET, (0.498,) * 3,
                           (0.502,) * 3, 128, None),
    # exported by other toolchains, no labels for their classes: fidelity per output only (the same favouring of
    # ORT's real calibration as above)
    "ppocr_cls": ("models/ppocr_mobile_cls.onnx", None, "data/imagenet_sample_500_48x192.npz", (0.5,) * 3, (0.5,) * 3,
                  128, (1, 3, 48, 192)),
    "ultraface": ("models/ultraface_slim320.onnx", None, "data/imagenet_sample_200_240x320.npz", (0.498,) * 3,
                  (0.502,) * 3, 64, None),
}
# BN-folded versions of the shared models, built into --out/derived (dfc.bench.derived): the same data
SHARED_MODELS.update({
    "resnet20_folded": ("derived:resnet20_folded", *SHARED_MODELS["resnet20"][1:]),
    "resnet56_folded": ("derived:resnet56_folded", *SHARED_MODELS["resnet56"][1:]),
    "efficientnet_lite0_folded": ("derived:efficientnet_lite0_folded", *SHARED_MODELS["efficientnet_lite0"][1:]),
})
DEFAULT_MODELS = ("resnet20", "resnet56")


@dataclass
class ModelSpec:
    """A model to benchmark and its validation data (labelled set for top-1, a fidelity set for agreement)."""

    name: str
    path: str
    accuracy_data: str | None  # None: no labels (fidelity only)
    fidelity_data: str
    mean: tuple
    std: tuple
    real_calib_samples: int = 256
    input_shape: tuple | None = None  # where the model's input dims are symbolic


@dataclass
class Settings:
    out: Path
    latency_batch: int = 64
    latency_rounds: int = 20
    threads: int = 2
    fidelity_samples: int | None = None  # None: the whole fidelity set
    seed: int = 0
    calib_samples: int | None = None  # None: dfc's default
    inverter_steps: int | None = None  # None: dfc's default
    plots: bool = True


def shared_specs(shared: Path, names: list[str], derived: Path | None = None) -> list[ModelSpec]:
    """Specs of the named shared models; derived ones (BN-folded) are built into `derived` first."""
    from dfc.bench import derived as derivations

    specs = []
    for name in names:
        if name not in SHARED_MODELS:
            raise DfcError(f"--models: unknown model {name!r}; choose from {', '.join(SHARED_MODELS)}")
        model, acc, fid, mean, std, real, shape = SHARED_MODELS[name]
        source = derivations.source_of(name) if model.startswith("derived:") else model
        paths = [shared / source, shared / acc if acc else None, shared / fid]
        missing = [str(p) for p in paths if p is not None and not p.exists()]
        if missing:
            raise DfcError(f"--shared {shared}: missing {', '.join(missing)} (see ../shared/README.md)")
        if model.startswith("derived:"):
            paths[0] = derivations.build(name, shared, derived or Path.home() / ".cache" / "dfc" / "derived")
        specs.append(ModelSpec(name, *(str(p) if p else None for p in paths), mean, std, real, shape))
    return specs


@dataclass
class ModelData:
    """A spec's files as read from disk (what a Ray run ships to its workers, which need not have them)."""

    original: onnx.ModelProto
    fid_images: np.ndarray
    acc_images: np.ndarray | None
    labels: np.ndarray | None


def load_data(spec: ModelSpec) -> ModelData:
    from dfc.graph.modelio import load_model
    from dfc.measure.validation import load_eval_data

    fid_images = load_eval_data(spec.fidelity_data, need_labels=False)[0]
    images, labels = load_eval_data(spec.accuracy_data) if spec.accuracy_data else (None, None)
    return ModelData(load_model(spec.path), fid_images, images, labels)


class ModelBench:
    """One model's reference outputs, calibration sets and row measurements."""

    def __init__(self, spec: ModelSpec, settings: Settings, data: ModelData | None = None):
        from dfc.measure.validation import preprocess

        t0 = time.perf_counter()
        self.spec, self.s = spec, settings
        self.mean, self.std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
        data = data or load_data(spec)
        self.original, self.fid_images, self.labels = data.original, data.fid_images, data.labels
        self.x_fid = preprocess(self.fid_images[: settings.fidelity_samples], self.mean, self.std)
        if data.acc_images is not None:
            self.x_acc = preprocess(data.acc_images, self.mean, self.std)
        else:  # fidelity only; the fidelity images are the latency batch too
            self.x_acc = self.x_fid
        # one set for both (EfficientNet-Lite0's 500 ImageNet images): run it once
        self.one_set = (spec.accuracy_data or spec.fidelity_data) == spec.fidelity_data and settings.fidelity_samples is None
        self.ref_acc, self.ref_fid = self.logits(self.original)
        self.ref_outputs = self.outputs(self.original) if self.labels is None else None
        self._calib: dict[str, tuple[np.ndarray, dict]] = {}
        self.setup_seconds = time.perf_counter() - t0

    @staticmethod
    def calibration_method(cfg: Config) -> str | None:
        """The calibration set a row compresses with (None: none)."""
        return cfg.calib if cfg.kind == "ort" or (cfg.kind == "dfc" and cfg.wbits is not None) else None

    def logits(self, model: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray]:
        """The model's logits on the accuracy set and on the fidelity set."""
        if self.one_set:
            acc = _logits(model, self.x_acc)[0]
            return acc, acc
        return tuple(_logits(model, self.x_acc, self.x_fid))

    def outputs(self, model: onnx.ModelProto) -> dict[str, np.ndarray]:
        """Every output of the model on the fidelity set (the per-output fidelity of unlabelled models)."""
        from dfc.measure.validation import outputs_of

        return outputs_of(model, self.x_fid)

    def calibration(self, method: str) -> tuple[np.ndarray, dict]:
        """Data-free sets from `dfc.api.calibration_set` (as `optimize` makes them); `real`: the first images of the
        fidelity set (`real_calib_samples` of them; the non-data-free reference for the ORT baseline)."""
        if method not in self._calib:
            if method == "real":
                from dfc.measure.validation import preprocess

                x = preprocess(self.fid_images[: self.spec.real_calib_samples], self.mean, self.std)
                self._calib[method] = x, {"method": "real", "seconds": 0.0}
            else:
                from dfc import progress
                from dfc.api import calibration_set

                progress.set_enabled(sys.stderr.isatty())
                print(f"  {self.spec.name}: calibration set {method} ...", flush=True)
                extra = {"inverter_steps": self.s.inverter_steps} if self.s.inverter_steps else {}
                try:
                    self._calib[method] = calibration_set(self.original, calib=method, calib_samples=self.s.calib_samples,
                                                          seed=self.s.seed, input_mean=self.mean, input_std=self.std,
                                                          input_shape=self.spec.input_shape, **extra)
                finally:
                    progress.set_enabled(False)
                print(f"  {self.spec.name}: calibration set {method}: {self._calib[method][1]['seconds']:.1f} s", flush=True)
        return self._calib[method]

    def compress(self, cfg: Config) -> tuple[onnx.ModelProto, float, float, list[str]]:
        """(model, seconds of the compression, seconds of the shared calibration set, notes)."""
        if cfg.kind == "reference":
            return self.original, 0.0, 0.0, []
        if cfg.kind == "ort":
            from dfc.bench.baselines import ort_quantize_static

            x, info = self.calibration(cfg.calib)
            t0 = time.perf_counter()
            try:
                model = ort_quantize_static(self.original, x, cfg.activations)  # run as ORT writes it (checked by running)
            except Exception as e:  # noqa: BLE001  (the peer failing on a model is a result, e.g. UltraFace)
                raise DfcError(f"ORT quantize_static: {_first_line(e)}") from e
            return model, time.perf_counter() - t0, info["seconds"], []
        from dfc.api import optimize_with_report

        method = self.calibration_method(cfg)
        x, info = self.calibration(method) if method else (None, {"seconds": 0.0})
        t0 = time.perf_counter()
        model, report = optimize_with_report(self.original, calib_data=x, seed=self.s.seed, input_mean=self.mean,
                                             input_std=self.std, input_shape=self.spec.input_shape, measure=False,
                                             **cfg.dfc_options())
        return model, time.perf_counter() - t0, info["seconds"], list(report["notes"])

    def measure(self, cfg: Config, model: onnx.ModelProto) -> dict:
        from dfc.measure.latency import median_latencies
        from dfc.graph.stats import layer_stats, model_summary
        from dfc.measure.validation import fidelity, output_fidelity, top1

        summary = model_summary(model)
        acc, fid_logits = (self.ref_acc, self.ref_fid) if cfg.kind == "reference" else self.logits(model)
        row = {
            "top1": top1(acc, self.labels) if self.labels is not None else None,
            "accuracy_samples": int(len(self.labels)) if self.labels is not None else 0,
            "weight_params": summary["weight_params"],
            "weight_bytes": int(sum(r.params * (r.wbits or 32) for r in layer_stats(model)) // 8),
            "size_bytes": summary["size_bytes"],
            "macs": summary["macs"],
        }
        if cfg.kind == "reference":
            row.update(agreement=1.0, mean_kl=0.0, latency_ratio=1.0, max_rel_l2=0.0 if self.labels is None else None)
            return row
        if self.ref_outputs is not None:  # per output: relative L2 error, SQNR; agreement of a [N, classes] output
            per = output_fidelity(self.ref_outputs, self.outputs(model))
            first = next(iter(per.values()))
            row.update(outputs=per, agreement=first.get("agreement"), mean_kl=first.get("mean_kl"),
                       max_rel_l2=max(r["rel_l2"] for r in per.values()), fidelity_samples=int(len(self.x_fid)))
        else:
            fid = fidelity(self.ref_fid, fid_logits)
            row.update(agreement=fid["agreement"], mean_kl=fid["mean_kl"], fidelity_samples=int(len(self.x_fid)))
        med, batch = median_latencies({"fp32": self.original, "row": model}, self.x_acc[: self.s.latency_batch],
                                      threads=self.s.threads, rounds=self.s.latency_rounds)
        row.update(latency_ratio=med["row"] / med["fp32"], latency_ms=1e3 * med["row"], fp32_latency_ms=1e3 * med["fp32"],
                   latency_batch=batch)
        return row

    def row(self, cfg: Config) -> dict:
        """The row of one configuration, with the time it took and where it ran."""
        from dfc.distributed import where

        t0 = time.perf_counter()
        row = self._row(cfg)
        return {**row, "wall_seconds": time.perf_counter() - t0, "ran_on": where()}

    def _row(self, cfg: Config) -> dict:
        base = base_row(self.spec.name, cfg)
        try:
            model, seconds, calib_seconds, notes = self.compress(cfg)
            try:
                measured = self.measure(cfg, model)
            except Exception as e:  # noqa: BLE001  (an invalid model written by the ORT peer: its result)
                if cfg.kind != "ort":
                    raise
                raise DfcError(f"ORT's quantized model does not run: {_first_line(e)}") from e
            return {**base, **measured, "seconds": seconds, "calib_seconds": calib_seconds, "notes": notes}
        except DfcError as e:  # a configuration the tool refuses is a result, not a crash of the benchmark
            return {**base, "top1": None, "error": str(e)}


def base_row(model: str, cfg: Config) -> dict:
    """What a row says of its configuration, measured or not."""
    return {"model": model, "config": cfg.name, "kind": cfg.kind, "precision": cfg.precision,
            "calib": cfg.calib, "prune": cfg.prune, "scope": cfg.scope if cfg.prune else None,
            "target": f"{cfg.target[0][len('target_'):]} {cfg.target[1]:g}" if cfg.target else None,
            "compensate": cfg.compensate if cfg.kind == "dfc" else None, "activations": cfg.activations}


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200] + f" ({type(e).__name__})"


def _logits(model: onnx.ModelProto, *xs: np.ndarray) -> list[np.ndarray]:
    """The model's logits on each input set, from one ORT session."""
    from dfc.measure.runtime import make_session, run_batched

    session = make_session(model)
    return [run_batched(session, x)[0] for x in xs]


def machine() -> dict:
    import onnxruntime
    import torch

    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "onnx": onnx.__version__, "torch": torch.__version__, "platform": platform.platform()}


def run(specs: list[ModelSpec], configs: list[Config], settings: Settings, command: str = "",
        ray_address: str | None = None) -> dict:
    """Benchmark every spec × config, in this process or as Ray tasks (`dfc.bench.on_ray`); results.json is rewritten
    after each row (rows in the matrix's order), results.md and plots at the end."""
    from dfc import progress
    from dfc.bench.report import write_outputs

    settings.out.mkdir(parents=True, exist_ok=True)
    results = {"command": command, "machine": machine(), "settings": {k: str(v) if isinstance(v, Path) else v
                                                                        for k, v in asdict(settings).items()},
               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "models": {}, "rows": [], "runner": "serial"}
    t_start, slots = time.perf_counter(), {}
    order = [(spec.name, cfg.name) for spec in specs for cfg in configs]
    progress.set_enabled(False)

    def model_ready(spec: ModelSpec, setup_seconds: float | None) -> None:
        results["models"][spec.name] = {"path": spec.path, "accuracy_data": spec.accuracy_data,
                                        "fidelity_data": spec.fidelity_data, "setup_seconds": setup_seconds}
        results["models"] = {s.name: results["models"][s.name] for s in specs if s.name in results["models"]}

    def record(row: dict) -> None:
        slots[row["model"], row["config"]] = row
        results["rows"] = [slots[k] for k in order if k in slots]
        results["elapsed_seconds"] = time.perf_counter() - t_start
        write_outputs(results, settings.out, plots=False)
        print(f"[{len(slots)}/{len(order)}] {_row_line(row)}  ({row['wall_seconds']:.0f} s, "
              f"{results['elapsed_seconds'] / 60:.1f} min in all)", flush=True)

    if ray_address:
        from dfc.bench.on_ray import run_rows

        results["runner"] = run_rows(specs, configs, settings, ray_address, model_ready, record)
    else:
        for spec in specs:
            bench = ModelBench(spec, settings)
            model_ready(spec, bench.setup_seconds)
            for cfg in configs:
                record(bench.row(cfg))
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    results["elapsed_seconds"] = time.perf_counter() - t_start
    write_outputs(results, settings.out, plots=settings.plots)
    return results


def _row_line(row: dict) -> str:
    if row.get("error"):
        return f"{row['model']} {row['config']}: failed: {row['error']}"
    acc = f"top-1 {100 * row['top1']:.2f}  " if row.get("top1") is not None else ""
    agree = f"agreement {100 * row['agreement']:.2f}  " if row.get("agreement") is not None else ""
    l2 = f"max rel. L2 {row['max_rel_l2']:.4f}  " if row.get("max_rel_l2") is not None else ""
    return f"{row['model']} {row['config']}: {acc}{agree}{l2}latency {row['latency_ratio']:.2f}x  weights {row['weight_bytes'] / 1024:.0f} KiB"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dfc bench", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--out", help="directory for results.json, results.md and the PNG plots (required for a run)")
    ap.add_argument("--quick", action="store_true", help="ResNet-20 and a representative subset (under 10 minutes on 2 cores)")
    ap.add_argument("--models", help="comma-separated: resnet20, resnet56, efficientnet_lite0, ppocr_cls, ultraface, "
                                     "and BN-folded exports resnet20_folded, resnet56_folded, "
                                     "efficientnet_lite0_folded (default: the two ResNets; "
                                     "--quick: resnet20)")
    ap.add_argument("--configs", help="comma-separated names or shell patterns, e.g. 'w4a4-*,ort-*' (default: the whole matrix; "
                                      "--quick: its subset); `--list` shows them")
    ap.add_argument("--list", action="store_true", help="print the configurations that would run and exit")
    ap.add_argument("--shared", default="../shared", help="the shared models and data (default ../shared)")
    ap.add_argument("--latency-batch", type=int, default=64)
    ap.add_argument("--latency-rounds", type=int, default=None, help="alternating rounds per row (default 20; --quick 10)")
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads for the latency runs (default 2)")
    ap.add_argument("--fidelity-samples", type=int, help="use only the first N images of the JPEG set for agreement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ray", metavar="ADDRESS",
                    help="rows as Ray tasks, each reserving --threads CPUs: auto (the Ray running on this machine, else "
                         "a new local one) or a cluster's address; needs the extra dfc[distributed]")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--summarize", metavar="RESULTS_JSON", help="print the README summary tables of a finished run and exit")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.summarize:
        import json

        from dfc.bench.report import summary

        print(summary(json.loads(Path(args.summarize).read_text())))
        return 0
    configs = select(args.configs, args.quick)
    if args.list:
        print("\n".join(c.name for c in configs))
        return 0
    if not args.out:
        raise DfcError("dfc bench: --out DIR is required")
    if args.ray:
        from dfc.distributed import require_ray

        require_ray()
    for opt in ("latency_batch", "threads"):
        if getattr(args, opt) < 1:
            raise DfcError(f"--{opt.replace('_', '-')} must be >= 1")
    names = args.models.split(",") if args.models else (["resnet20"] if args.quick else list(DEFAULT_MODELS))
    specs = shared_specs(Path(args.shared), [n.strip() for n in names], derived=Path(args.out) / "derived")
    if not args.no_plots:
        _require_matplotlib()
    settings = Settings(out=Path(args.out), latency_batch=args.latency_batch,
                        latency_rounds=args.latency_rounds or (10 if args.quick else 20), threads=args.threads,
                        fidelity_samples=args.fidelity_samples, seed=args.seed, plots=not args.no_plots)
    command = "dfc bench " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"dfc bench: {len(specs)} model(s) × {len(configs)} configurations -> {settings.out}", flush=True)
    results = run(specs, configs, settings, command, ray_address=args.ray)
    print(f"done in {results['elapsed_seconds'] / 60:.1f} min: {settings.out / 'results.md'}")
    return 0


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise DfcError("the plots need matplotlib: pip install -e '.[bench]' (or pass --no-plots)") from e
