"""The benchmark's outputs: results.json, results.md (one table per model) and PNG plots
(top-1 vs nominal weight size, top-1 vs ORT latency ratio)."""

from __future__ import annotations

from pathlib import Path

from dfc.report import markdown_table, write_json_atomic

COLUMNS = ["config", "precision", "calibration", "pruning", "compensation", "top-1 %", "Δ top-1", "agreement %",
           "max rel. L2", "weight params", "weights KiB", "file KiB", "MMACs", "latency ×", "time s"]


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _pruning(row: dict) -> str:
    if row.get("target"):
        return f"target {row['target']}"
    return f"{row['prune']:g} {row['scope']}" if row.get("prune") else "-"


def _cells(row: dict, fp32_top1: float | None) -> list[str]:
    calib = row.get("calib") or "-"
    if row["kind"] == "ort":
        calib = f"{calib} (ORT, {row['activations']} act.)"
    head = [f"`{row['config']}`", row["precision"], calib, _pruning(row), row.get("compensate") or "-"]
    if row.get("error"):
        return head + [f"failed: {row['error']}"] + [""] * (len(COLUMNS) - len(head) - 1)
    drop = "" if fp32_top1 is None or row.get("top1") is None else f"{100 * (row['top1'] - fp32_top1):+.2f}"
    seconds = row.get("seconds", 0.0) + row.get("calib_seconds", 0.0)
    l2 = "-" if row.get("max_rel_l2") is None else f"{row['max_rel_l2']:.4f}"
    return head + [
        _pct(row.get("top1")), drop, _pct(row.get("agreement")), l2, f"{row['weight_params']:,}",
        f"{row['weight_bytes'] / 1024:.0f}", f"{row['size_bytes'] / 1024:.0f}", f"{row['macs'] / 1e6:.1f}",
        f"{row['latency_ratio']:.2f}", f"{seconds:.0f}",
    ]


def fp32_top1(rows: list[dict], model: str) -> float | None:
    return next((r["top1"] for r in rows if r["model"] == model and r["kind"] == "reference" and not r.get("error")), None)


def model_table(rows: list[dict], model: str, configs: list[str] | None = None) -> str:
    picked = [r for r in rows if r["model"] == model and (configs is None or r["config"] in configs)]
    if configs is not None:
        picked.sort(key=lambda r: configs.index(r["config"]))
    ref = fp32_top1(rows, model)
    return markdown_table(COLUMNS, [_cells(r, ref) for r in picked])


SUMMARY_CONFIGS = [
    "fp32", "ort-u8-gaussian", "ort-s8-gaussian", "ort-u8-real", "ort-s8-real",
    "w8a8-gaussian-p0-udfc", "w8a8-bns-p0-udfc", "w6a6-bns-p0-udfc", "w4a8-bns-p0-udfc",
    "w4a4-gaussian-p0-udfc", "w4a4-bns-p0-none", "w4a4-bns-p0-udfc", "w4a4-bns+inception-p0-udfc",
    "float-p0.3inner-none", "float-p0.3inner-udfc", "w8a8-bns-p0.3inner-none", "w8a8-bns-p0.3inner-udfc",
    "w4a8-bns-p0.3inner-none", "w4a8-bns-p0.3inner-udfc",
    "float-p0.5all-none", "float-p0.5all-udfc", "w8a8-bns-p0.5all-none", "w8a8-bns-p0.5all-udfc",
]


def summary(results: dict) -> str:
    """The README's Results tables: per model, the SUMMARY_CONFIGS rows of a run (all rows are in results.md)."""
    out = []
    for model in results["models"]:
        out += [f"**{model}**", "", model_table(results["rows"], model, SUMMARY_CONFIGS), ""]
    return "\n".join(out)


def markdown(results: dict) -> str:
    m = results["machine"]
    s = results["settings"]
    lines = [
        "# dfc benchmark results", "",
        f"Command: `{results['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores; onnxruntime {m['onnxruntime']}, onnx {m['onnx']}, torch {m['torch']}, "
        f"Python {m['python']}  ",
        f"Started {results['started']}; {results.get('elapsed_seconds', 0) / 60:.1f} min"
        + ("" if results.get("finished") else " so far (unfinished)") + "  ",
        f"Rows ran: {where_rows_ran(results)}", "",
        "top-1: exact CIFAR-10 test subset; agreement: top-1 agreement with the fp32 model on the JPEG set; max rel. L2: "
        "for the unlabelled exported models, the largest relative L2 error to the fp32 model over their outputs; "
        "weights KiB: weight params × their bit width (nominal, what a packed format would store); file KiB: the ONNX "
        "file (sub-8-bit codes are stored in int8); latency ×: ORT time of one batch of "
        f"{s['latency_batch']} relative to the fp32 model, {s['threads']} threads, median of {s['latency_rounds']} "
        "alternating runs in one process (sessions without spin-waiting, `dfc/measure/latency.py`); time s: compression time including the one-off synthesis of the calibration "
        "set (shared by all rows with that calibration). Quantized dfc rows keep the first and last layers at 8 bits. "
        "`none` = plain L1 pruning (pre-BN filter L1, no compensation, no requantization); `udfc` = dfc's defaults. "
        "ORT rows: `quantize_static` after `quant_pre_process`, QDQ, per-channel int8 weights, MinMax ranges; "
        f"`real` calibrates on the first 256 images of the JPEG set (not data-free).", "",
    ]
    for model in results["models"]:
        lines += [f"## {model}", "", model_table(results["rows"], model), ""]
    return "\n".join(lines)


def where_rows_ran(results: dict) -> str:
    """The runner and, per host and process, how many rows ran there (each row's `ran_on`)."""
    from collections import Counter

    counts = Counter(r.get("ran_on") or "not run" for r in results["rows"])
    return f"{results.get('runner', 'serial')}; " + ", ".join(f"{k}: {n} row(s)" for k, n in sorted(counts.items()))


def write_outputs(results: dict, out: Path, plots: bool = True) -> list[Path]:
    """results.json and results.md (atomic), and with `plots` the PNGs; returns the paths written."""
    from dfc.graph.modelio import write_bytes_atomic

    out = Path(out)
    write_json_atomic(results, out / "results.json")
    write_bytes_atomic(markdown(results).encode(), out / "results.md")
    written = [out / "results.json", out / "results.md"]
    if plots:
        written += write_plots(results, out)
    return written


_STYLE = {"reference": ("k", "*"), "ort": ("tab:red", "s"), "dfc-float": ("tab:green", "^"), "dfc": ("tab:blue", "o")}


def _style_key(row: dict) -> str:
    return "dfc-float" if row["kind"] == "dfc" and row["precision"] == "float" else row["kind"]


def write_plots(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dfc.graph.modelio import atomic_target

    rows = [r for r in results["rows"] if not r.get("error") and r.get("top1") is not None]
    models = [m for m in results["models"] if any(r["model"] == m for r in rows)]  # labelled models only
    written = []
    if not models:
        return written
    for fname, key, xlabel, logx in (("top1_vs_weight_size.png", "weight_bytes", "weights (KiB, nominal bit width)", True),
                                     ("top1_vs_latency.png", "latency_ratio", "ORT latency vs fp32 (×, batch "
                                      f"{results['settings']['latency_batch']})", False)):
        fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False)
        for ax, model in zip(axes[0], models):
            for kind, (color, marker) in _STYLE.items():
                pts = [r for r in rows if r["model"] == model and _style_key(r) == kind]
                if pts:
                    xs = [r[key] / (1024 if key == "weight_bytes" else 1) for r in pts]
                    ax.scatter(xs, [100 * r["top1"] for r in pts], c=color, marker=marker, s=28, alpha=0.8,
                               label={"reference": "fp32", "ort": "ORT quantize_static", "dfc-float": "dfc pruning (float)",
                                      "dfc": "dfc quantized"}[kind])
            ax.set_xscale("log" if logx else "linear")
            ax.set_title(model)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("top-1 % (exact set)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        with atomic_target(out / fname, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110)
        plt.close(fig)
        written.append(out / fname)
    return written
