"""Human-readable tables (summary after `optimize`, layer table of `inspect`) and the JSON report."""

from __future__ import annotations

import json
import os

import numpy as np


def human(n: float, unit: str = "") -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def table(header: list[str], rows: list[list], align: str | None = None) -> str:
    """A plain monospace table; `align` is one char per column, 'l' or 'r'."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    align = align or "l" + "r" * (len(header) - 1)

    def fmt(r):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align))

    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]]
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured markdown table (`|` in cells escaped)."""

    def fmt(r):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |"

    return "\n".join([fmt(header), "|" + "---|" * len(header)] + [fmt(r) for r in rows])


def summary_table(report: dict) -> str:
    b, a = report["before"], report["after"]

    def ratio(x, y):
        return f"{y / x:.2f}x" if x else "-"

    rows = [
        ["weight params", human(b["weight_params"]), human(a["weight_params"]), ratio(b["weight_params"], a["weight_params"])],
        ["size on disk", human(b["size_bytes"], "B"), human(a["size_bytes"], "B"), ratio(b["size_bytes"], a["size_bytes"])],
        ["MACs / sample", human(b["macs"]), human(a["macs"]), ratio(b["macs"], a["macs"])],
    ]
    lat = report.get("latency")
    if lat:
        rows.append(["ORT latency", f"{lat['original_ms']:.2f} ms", f"{lat['optimized_ms']:.2f} ms", f"{lat['ratio']:.2f}x"])
    out = [table(["", "original", "optimized", "ratio"], rows)]
    if lat:
        out.append(f"latency: batch {lat['batch']}, {lat['threads']} intra-op threads, median of {lat['rounds']} alternating runs")
    fid = report.get("fidelity")
    if fid:
        head = f"fidelity on a synthetic probe ({fid['samples']} {fid['probe']} samples, no real data)"
        per = fid.get("outputs", {})
        if len(per) <= 1 and "agreement" in fid:
            out.append(f"{head}: top-1 agreement {100 * fid['agreement']:.1f} %, mean KL {fid['mean_kl']:.4f}, "
                       f"max |dlogit| {fid['max_abs_diff']:.4f}")
        else:
            from dfc.measure.validation import fidelity_lines

            out += [f"{head}:"] + ["  " + line for line in fidelity_lines(per)]
    out += _target_lines(report)
    out += _compensation_lines(report.get("passes", {}))
    out += _rounding_lines(report.get("passes", {}))
    out += _bias_lines(report.get("passes", {}))
    out += _inverter_lines(report.get("passes", {}))
    for note in report.get("notes", []):
        out.append(f"note: {note}")
    return "\n".join(out)


def _round_verdict(r: dict) -> str:
    """A search round's verdict, whether a centring round followed it and whether its graph is the one written."""
    return ", ".join([r.get("verdict", "")] + (["then centring"] if r.get("then") else [])
                     + ([f"timed while other processes held {r['busy_cores']:g} cores"] if r.get("busy_cores") else [])
                     + (["kept"] if r.get("kept") else []))


def _target_lines(report: dict) -> list[str]:
    """The --target-* search: the target, the output's value, and each round (aim, predicted, measured)."""
    t, searched = report.get("target"), report.get("passes", {}).get("prune", {}).get("target")
    if not t:
        return []
    verdict = "MISSED" if not t["met"] else "landed" if t.get("landed", True) else "met, below the band"
    final = "not measured" if t["final"] is None else f"{t['final']:.3f}x ({verdict})"
    if t.get("final_median") is not None:
        final += f" by {t.get('final_by') or 'fastest runs'} of fresh sessions, {t['final_median']:.3f}x by medians"
    band = t.get("band") or [t["ratio"], t["ratio"]]
    line = f"target {t['kind']} <= {t['ratio']:g}x (band {band[0]:.3g}-{band[1]:g}x): output {final}"
    if searched:
        rounds = "; ".join(f"aim {r['aim']:.3g}, predicted {r['predicted']:.3g}, measured {r['measured']:.3g} "
                           f"({_round_verdict(r)}), {r.get('groups_removed', 0)} channels" for r in searched["search"]) \
            or "landed by the residual branches removed (depth rounds below), no channel pruned"
        err = searched.get("prediction_error")
        line += (f"; search ({searched['cost_model']}, channel multiple {report['passes']['prune'].get('multiple')}"
                 + (f", prediction error on the kept graph {100 * err:+.1f} %" if err is not None else "") + f"): {rounds}")
    depth = report.get("passes", {}).get("prune", {}).get("depth")
    if depth is None:
        return [line]
    rounds = "; ".join(f"aim {r['aim']:.3g}, predicted {r['predicted']:.3g}, measured {r['measured']:.3g} "
                       f"({_round_verdict(r)}), {r.get('branches_removed', 0)} branches from {r.get('from', 'start')}"
                       for r in depth["rounds"])
    if depth.get("skipped"):
        return [line, f"depth: skipped ({depth['skipped']})"]
    if not depth["candidates"]:
        return [line, "depth: no removable residual branch (identity shortcut, BN statistics at the branch output)"]
    return [line, f"depth: {len(depth['removed'])} of {depth['candidates']} residual branches removed "
                  f"(least {depth['probe']} probe error per cost saved first): {rounds}"]


def _compensation_lines(passes: dict) -> list[str]:
    """One line each for UDFC's pruning merges and quantization rescaling, when they ran."""
    out = []
    prune = passes.get("prune", {})
    comp = prune.get("compensation")
    check = (comp or {}).get("check")
    if check and not comp["used"]:
        out.append(f"udfc: pruning compensation not used: it did not lower the output error on {check['samples']} "
                   f"{check['probe']} probe inputs ({check['metric']} {check['error_compensated']:.4g} with, {check['error_plain']:.4g} without)")
    elif comp and comp["layers"]:
        rebuilt = [r for r in comp["layers"] if r["loss"] != "bn-mean"]
        by_mean = [r for r in comp["layers"] if r["loss"] == "bn-mean"]
        dropped = sum(r["dropped"] for r in comp["layers"])
        merged = sum(r["merged"] for r in rebuilt)
        errs = [s["predicted_error"] for r in comp["layers"] for s in r["steps"]]
        means = (f"; {sum(r['merged'] for r in by_mean)} behind a Clip or depthwise conv replaced by their BN mean in "
                 f"{len(by_mean)} layers" if by_mean else "")
        out.append(f"udfc: {merged} of {dropped} pruned channels rebuilt from kept ones ({comp['partners']}, "
                   f"{comp['loss']} loss) in {len(rebuilt)} layers{means}; predicted error left "
                   f"{100 * sum(errs) / len(errs):.0f} % of plain pruning's (mean over steps, see --report)"
                   + (f"; output {check['metric']} on {check['samples']} {check['probe']} probe inputs "
                      f"{check['error_compensated']:.4g} (plain removal {check['error_plain']:.4g})" if check else ""))
    rq = passes.get("udfc-requant")
    if rq and rq["layers"]:
        before = sum(r["predicted_error_before"] for r in rq["layers"])
        after = sum(r["predicted_error_after"] for r in rq["layers"])
        out.append(f"udfc: quantized channels rescaled in {rq['layers_compensated']} layers (alpha_q {rq['alpha_q']}); "
                   f"weights-loss error {before:.4g} -> {after:.4g} "
                   f"({100 * (after - before) / before if before else 0.0:+.2g} %)")
    return out


def _bias_lines(passes: dict) -> list[str]:
    """Where bias correction read its input means from the BN statistics (`bias_correction.bn_input_means`)."""
    q = passes.get("quantize", {})
    if not q.get("bias_means_from_bn"):
        return []
    return [f"bias correction: input means of {q['bias_means_from_bn']} tensors from the BN statistics, the others "
            "from the calibration samples"]


def _rounding_lines(passes: dict) -> list[str]:
    """`dfc.quant.weight_rounding` where it ran: the layers it rounded, the median relative output error on the
    calibration samples at nearest rounding and with it, and the whole-model check that kept it or not."""
    q = passes.get("quantize", {})
    check = q.get("rounding_check")
    if not check:
        return []
    rows = [r for r in q.get("layers", []) if r.get("rounding") == "gptq"]
    kept = check["kept"] == "gptq"
    line = (f"weight rounding: gptq {'kept' if kept else 'not kept'} (output {check['metric']} on {check['samples']} "
            f"calibration samples {check['error_gptq']:.4g}, nearest rounding {check['error_nearest']:.4g})")
    if rows:
        med = lambda k: float(np.median([r[k] for r in rows]))  # noqa: E731
        line += (f"; {len(rows)} layers, relative layer output error {med('output_rel_error_nearest'):.3g} -> "
                 f"{med('output_rel_error'):.3g} (median)")
    return [line]


def _inverter_lines(passes: dict) -> list[str]:
    """What the BNS inverter did (phases: size, steps run of the maximum, J_KL, seconds) and each pass's time."""
    out = []
    syn = passes.get("synthesize")
    if syn and syn.get("phases"):
        parts = [f"{p['steps']} steps at {'x'.join(map(str, p['shape']))} "
                 f"({p['seconds']:.0f} s, J_KL {p['j_kl']})" for p in syn["phases"]]
        budget = f" (work budget {syn['budget']:.2g} samples x steps x activations)" if syn.get("budget") else ""
        out.append(f"inverter: {syn['method']}, {syn['samples']} samples in batches of {syn['batch']} on {syn['device']}"
                   f"{budget}: " + ", then ".join(parts))
    ft = passes.get("finetune")
    if ft and "kl_before" in ft:
        stage = " of the pruned float graph, before quantization," if ft.get("stage") else ""
        out.append(f"finetune: {ft['method']}, {ft['steps']} steps{' per block' if ft['method'] == 'blocks' else ''} "
                   f"({ft['blocks']} blocks{_blocks_kept(ft)}){stage} on {ft['samples']} "
                   f"{ft.get('samples_source', '')} samples{_copies_text(ft)}, batch {ft['batch']}, lr {_lr_text(ft)}"
                   + (f", {ft['disagreement']:g} of each batch from the disagreement pool"
                      if ft.get("disagreement") else "")
                   + f", {ft['device']}: output {ft.get('loss', 'KL')} to the float model on the samples "
                   f"{ft['kl_before']:.4f} -> {ft['kl_after']:.4f}"
                   + (f"; default steps for ~{ft['predicted_seconds']:.0f} s predicted{_speed_text(ft)}"
                      f"{_replanned_text(ft)}, took {ft['seconds']:.0f} s" if ft.get("predicted_seconds") else "")
                   + ("; not kept (it rose): the model before fine-tuning is written" if ft.get("kept") == "input" else ""))
        phases = ft.get("phases") or []
        if phases and (len(phases) > 1 or ft.get("input_shape") not in (None, phases[0]["shape"])):
            out.append("finetune phases: " + "; ".join(
                f"{p['steps']} steps at {'x'.join(map(str, p['shape']))} ({p['seconds']:.0f} s): {ft.get('loss', 'KL')} at the input size "
                f"{p['kl_after']:.4f}" for p in phases))
    timed = [(name, r["seconds"]) for name, r in passes.items() if isinstance(r, dict) and "seconds" in r]
    if timed:
        out.append("time per pass: " + ", ".join(f"{name} {sec:.1f} s" for name, sec in timed))
    return out


def _copies_text(ft: dict) -> str:
    """' and N augmented copies of each' where block reconstruction topped the samples up (`train.block_copies`)."""
    extra = int(ft.get("copies") or 1) - 1
    return f" and {extra} augmented {'copy' if extra == 1 else 'copies'} of each" if extra > 0 else ""


def _blocks_kept(ft: dict) -> str:
    """', N kept as they started' for block reconstruction where some blocks ended worse than they began."""
    back = sum(1 for b in ft.get("block_trace") or [] if b.get("kept") == "input")
    return f", {back} kept as they started" if back else ""


def layer_table(rows: list[dict]) -> str:
    body = [
        [r["name"], r["op"], "x".join(map(str, r["input_shape"])), "x".join(map(str, r["output_shape"])),
         human(r["params"]), human(r["macs"]), "yes" if r["bn"] else "no",
         f"int{r['wbits']}" if r["quantized"] else "float"]
        for r in rows
    ]
    return table(["layer", "op", "input", "output", "params", "MACs", "BN", "weights"], body, "llllrrll")


def write_json_atomic(obj: dict, path: str | os.PathLike) -> None:
    from dfc.graph.modelio import write_bytes_atomic

    write_bytes_atomic((json.dumps(obj, indent=2, default=_jsonable) + "\n").encode(), path)


def _jsonable(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _replanned_text(ft: dict) -> str:
    """', re-planned from N steps by the measured step time' where `dfc.finetune.step_clock` moved the plan."""
    planned = ft.get("planned_steps")
    return f", re-planned from {planned} steps by the measured step time" if planned not in (None, ft["steps"]) else ""


def _speed_text(ft: dict) -> str:
    """The step-time model's machine factor (`dfc.finetune.train_cost.measured_speed`)."""
    speed = ft.get("speed")
    if not speed or abs(speed - 1.0) < 0.05:
        return " (2-core reference speed)" if speed else " on 2 CPU cores"
    return f" (this machine measured {speed:.2g}x the 2-core reference's step time)"


def _lr_text(ft: dict) -> str:
    """kd on a quantized student: the coded weights' lr in quantization steps, then the float parameters' lr."""
    if ft.get("step_lr") is None:
        return f"{ft['lr']:g}"
    return f"{ft['step_lr']:g} quantization steps (float parameters {ft['lr']:g})"
