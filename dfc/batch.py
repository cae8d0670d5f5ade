"""`dfc batch`: one set of `optimize` options over many models (a model zoo), one after the other or as Ray tasks.

OUTDIR gets each model's output and JSON report side by side (`<stem>.onnx`, `<stem>.report.json`) and one summary
(`summary.json`, `summary.md`) with a row per model: fidelity to its original, latency, size and MACs ratios, time,
where it ran, or its error. A model that fails is a row with its error; the others go on. Models are read and
written here: a Ray task receives the parsed model and returns the compressed one, so workers need dfc installed,
not the files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from dfc.errors import DfcError


@dataclass
class Job:
    input: str
    output: Path
    report: Path


def plan(inputs: list[str], outdir: Path) -> list[Job]:
    """OUTDIR/<stem>.onnx and OUTDIR/<stem>.report.json per input; two inputs with one stem, or an output that
    would overwrite its input, are refused before any work."""
    jobs, by_output = [], {}
    for path in inputs:
        stem = Path(path).name.removesuffix(".onnx")
        job = Job(path, outdir / f"{stem}.onnx", outdir / f"{stem}.report.json")
        if job.output in by_output:
            raise DfcError(f"{by_output[job.output]} and {path} would both be written to {job.output}; "
                           "rename one or run them in two batches")
        if Path(path).exists() and job.output.exists() and job.output.resolve() == Path(path).resolve():
            raise DfcError(f"-o {outdir}: {job.output} is the input {path}; choose another output directory")
        by_output[job.output] = path
        jobs.append(job)
    return jobs


def compress(model: onnx.ModelProto, options: dict) -> dict:
    """`optimize_with_report` on one model, its failure as data: {model, report} or {error, internal}, with the
    seconds it took and where it ran (the unit of work of a Ray task or of the serial loop)."""
    from dfc.api import optimize_with_report
    from dfc.distributed import where

    t0 = time.perf_counter()
    out: dict = {"ran_on": where()}
    try:
        optimized, report = optimize_with_report(model, **options)
        out.update(model=optimized, report=report)
    except DfcError as e:
        out.update(error=str(e), internal=False)
    except Exception as e:  # noqa: BLE001  (one model's internal error is its row; the batch goes on)
        out.update(error=f"internal error: {type(e).__name__}: {e}", internal=True)
    out["seconds"] = time.perf_counter() - t0
    return out


def finish(job: Job, result: dict) -> dict:
    """Write a compressed model and its report (atomically); return the model's summary row."""
    from dfc.graph.modelio import save_model_atomic
    from dfc.report import write_json_atomic

    row = {"input": job.input, "output": None, "ran_on": result.get("ran_on"), "seconds": result.get("seconds", 0.0)}
    if "error" in result:
        return {**row, "error": result["error"], "internal": bool(result.get("internal"))}
    report = result["report"]
    report["input"], report["output"], report["ran_on"] = job.input, str(job.output), result["ran_on"]
    report["after"]["size_bytes"] = save_model_atomic(result["model"], job.output)
    write_json_atomic(report, job.report)
    before, after = report["before"], report["after"]
    outputs = report.get("fidelity", {}).get("outputs", {})
    return {**row, "output": str(job.output), "report": str(job.report),
            "size_ratio": after["size_bytes"] / before["size_bytes"] if before["size_bytes"] else None,
            "macs_ratio": after["macs"] / before["macs"] if before["macs"] else None,
            "latency_ratio": report.get("latency", {}).get("ratio"),
            "agreement": report.get("fidelity", {}).get("agreement"),
            "max_rel_l2": max((o["rel_l2"] for o in outputs.values()), default=None),
            "notes": list(report["notes"])}


def run(inputs: list[str], outdir: str | Path, options: dict, ray_address: str | None = None,
        echo: Callable[[str], None] = print, command: str = "") -> dict:
    """Compress every input with `options` (keyword arguments of `dfc.api.optimize_with_report`); serial, or one Ray task
    per model reserving the CPUs its latency measurement times on. Returns the summary (also in OUTDIR)."""
    from dfc.options import DEFAULTS
    from dfc.distributed import where
    from dfc.graph.modelio import load_model

    outdir = Path(outdir)
    jobs = plan(inputs, outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    t0, rows = time.perf_counter(), [None] * len(jobs)

    def done(i: int, result: dict) -> None:
        rows[i] = finish(jobs[i], result)
        echo(f"[{sum(r is not None for r in rows)}/{len(jobs)}] {row_line(rows[i])}")

    models = {}
    for i, job in enumerate(jobs):  # an unreadable file is its row; the others still run
        try:
            models[i] = load_model(job.input)
        except DfcError as e:
            done(i, {"error": str(e), "internal": False, "ran_on": where()})
    runner = "serial"
    if ray_address:
        from dfc.distributed import Cluster

        cpus = int(options.get("threads") or DEFAULTS["threads"])
        with Cluster(ray_address) as cluster:
            runner = cluster.describe()
            echo(f"dfc batch: {len(models)} model(s) as tasks of {cpus} CPUs on {runner}")
            order = sorted(models)
            refs = [cluster.submit(compress, models.pop(i), options, cpus=cpus) for i in order]
            for k, value, error in cluster.completed(refs):
                done(order[k], value if error is None else {"error": f"Ray task failed: {error}", "internal": True})
    else:
        for i in sorted(models):
            echo(f"{jobs[i].input} -> {jobs[i].output}")
            done(i, compress(models.pop(i), options))
    summary = {"command": command, "runner": runner, "elapsed_seconds": time.perf_counter() - t0,
               "options": {k: v for k, v in options.items() if k != "calib_data" and v is not None},
               "failed": sum("error" in r for r in rows), "models": rows}
    write_summary(summary, outdir)
    return summary


def row_line(row: dict) -> str:
    if "error" in row:
        return f"failed: {failure_line(row)}"
    parts = [f"{row['input']} -> {row['output']}"]
    if row.get("agreement") is not None:
        parts.append(f"agreement {100 * row['agreement']:.1f} %")
    elif row.get("max_rel_l2") is not None:
        parts.append(f"max rel. L2 {row['max_rel_l2']:.4f}")
    if row.get("latency_ratio") is not None:
        parts.append(f"latency {row['latency_ratio']:.2f}x")
    parts.append(f"size {row['size_ratio']:.2f}x, {row['seconds']:.0f} s")
    return ": ".join(parts[:2]) + (", " + ", ".join(parts[2:]) if len(parts) > 2 else "")


def _short(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def failure_line(row: dict) -> str:
    """The model's error, naming its file once."""
    return row["error"] if row["error"].startswith(row["input"]) else f"{row['input']}: {row['error']}"


def _cells(row: dict) -> list[str]:
    def ratio(v):
        return "-" if v is None else f"{v:.2f}"

    if "error" in row:
        return [row["input"], "failed: " + _short(row["error"]), "-", "-", "-", "-",
                f"{row['seconds']:.0f}", row.get("ran_on") or "-"]
    fid = (f"{100 * row['agreement']:.1f} % agreement" if row.get("agreement") is not None
           else f"{row['max_rel_l2']:.4f} max rel. L2" if row.get("max_rel_l2") is not None else "-")
    return [row["input"], row["output"], fid, ratio(row["latency_ratio"]), ratio(row["size_ratio"]),
            ratio(row["macs_ratio"]), f"{row['seconds']:.0f}", row["ran_on"]]


HEADER = ["model", "output", "fidelity (synthetic probe)", "latency ×", "size ×", "MACs ×", "time s", "ran on"]


def summary_text(summary: dict, markdown: bool = False) -> str:
    from dfc.report import markdown_table, table

    rows = [_cells(r) for r in summary["models"]]
    return markdown_table(HEADER, rows) if markdown else table(HEADER, rows, align="lllrrrrl")


def write_summary(summary: dict, outdir: Path) -> None:
    from dfc.graph.modelio import write_bytes_atomic
    from dfc.report import write_json_atomic

    write_json_atomic(summary, outdir / "summary.json")
    n, failed = len(summary["models"]), summary["failed"]
    md = ["# dfc batch", "", f"Command: `{summary['command']}`  ", f"Ran on: {summary['runner']}; "
          f"{summary['elapsed_seconds'] / 60:.1f} min; {n - failed} of {n} model(s) compressed", "",
          "Fidelity: top-1 agreement with the original (classifier outputs) or the largest relative L2 error over the "
          "outputs, on the synthetic probe of each model's report; latency: ORT time relative to the original in the "
          "same process (see each report for batch, threads and rounds).", "", summary_text(summary, markdown=True), ""]
    write_bytes_atomic("\n".join(md).encode(), outdir / "summary.md")
