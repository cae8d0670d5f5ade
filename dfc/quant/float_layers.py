"""Which weighted layers of a quantized model stay float, by measurement: a model dfc quantizes is never slower than
the float graph it came from.

ONNX Runtime runs a QDQ layer as one integer kernel (QLinearConv, QGemm) when its input and output are quantized.
Around an op that has no integer kernel in that form (hard-swish's HardSigmoid · x, a squeeze-excitation gate, a
Sigmoid, a Concat into a float graph output) every quantized tensor costs a DequantizeLinear, and ORT duplicates
that DequantizeLinear for each reader; on small layers (PP-OCR's MobileNetV3-small, 8-200 channels at 48×192) the
transitions cost more than the integer kernels save (measured: all int8 1.25× the float latency, float next to those
ops 0.76×). Where that is so follows from the graph, how much it costs from the machine, so:
- `candidates`: the float-layer sets to try, from the graph: none; the layers whose output is read by such an op
  (through value-preserving ops); those and the layers that read such an op's output; and, where those give a
  search at all, the first eighth and the first quarter of the layers in float (the high-resolution, few-channel
  layers where int8 kernels gain least and rounding costs most downstream: UltraFace, batch 1, all int8 0.32× the
  original, its first 6 of 42 layers float 0.31×, `boxes` relative L2 error 0.177 → 0.041 on BNS-calibrated runs);
- `choose`: every candidate built and timed against the float graph in one alternating ORT run (no spinning,
  medians) and compared with the float graph's outputs on the same samples (the largest relative L2 error over the
  outputs); of the candidates faster than float by more than the ratio's standard error (a busy machine widens it, and
  the graph then stays float rather than be written slower on a noisy win), those within `TIE` of the fastest count as equally fast and the most
  faithful of them wins (then the one with fewer float layers); none faster than float → the graph stays float. A
  graph with one candidate (a ReLU network: the ResNets, EfficientNet-Lite0) is not measured, so its output does not
  depend on timing.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfc.graph import ir

from dfc.graph.ops import POOLS, SHARED_PARAM_OPS, WEIGHTED

#: ops the QDQ graph runs on integers (a weighted layer, a residual Add, pooling) or that reuse their input's
#: quantization (value-preserving ops; Relu/Clip absorbed by the quantizer before them)
INTEGER_OPS = WEIGHTED + POOLS + ("Add", "Relu", "Clip", "Pad")
VALUE_PRESERVING = SHARED_PARAM_OPS + ("Identity",)
FIDELITY_SAMPLES = 64
TIE = 0.03  # latency within 3 % of the fastest counts as a tie (the medians' noise on a quiet 2-core machine)


def _readers(graph: gs.Graph, t: gs.Tensor) -> tuple[list[gs.Node], bool]:
    """(the nodes that read `t` through value-preserving ops, whether it reaches a graph output that way)."""
    readers, output, frontier = [], False, [t]
    while frontier:
        u = frontier.pop()
        output = output or ir.is_graph_output(graph, u)
        for c in ir.consumers(u):
            if c.op in VALUE_PRESERVING:
                frontier.extend(c.outputs)
            else:
                readers.append(c)
    return readers, output


def _writer(t: gs.Tensor) -> gs.Node | None:
    p = ir.producer(t)
    while p is not None and p.op in VALUE_PRESERVING:
        p = ir.producer(p.inputs[0])
    return p


def feeds_float(graph: gs.Graph, n: gs.Node) -> bool:
    """Whether the layer's output goes to an op without an integer kernel (a graph output read by nothing else is
    not one: it stays float, and ORT's integer kernels write float outputs)."""
    readers, _ = _readers(graph, n.outputs[0])
    return any(r.op not in INTEGER_OPS for r in readers)


def reads_float(n: gs.Node) -> bool:
    """Whether the layer's input comes from an op without an integer kernel (not the graph input)."""
    p = _writer(n.inputs[0])
    return p is not None and p.op not in INTEGER_OPS


def candidates(graph: gs.Graph, weighted: list[gs.Node]) -> list[tuple[str, tuple[str, ...]]]:
    """(name, float layer names) to try, distinct sets only, fewest float layers first."""
    out = tuple(n.name for n in weighted if feeds_float(graph, n))
    around = tuple(n.name for n in weighted if n.name in out or reads_float(n))
    sets = [("all int8", ()), ("float before float-only ops", out), ("float around float-only ops", around)]
    if out or around:
        n = len(weighted)
        sets += [(f"float first {k} layers", tuple(w.name for w in weighted[:k]))
                 for k in sorted({-(-n // 8), -(-n // 4)}) if 0 < k < n]
    found: list[tuple[str, tuple[str, ...]]] = []
    for name, kept in sets:
        if kept not in [k for _, k in found]:
            found.append((name, kept))
    return found


def choose(float_graph: gs.Graph, built: dict[str, gs.Graph], kept: dict[str, tuple], ctx, x: np.ndarray,
           rounds: int = 10, threads: int = 2, batch: int = 64) -> tuple[str | None, dict]:
    """(the candidate to write (see the module docstring) or None when none is faster than the float graph, the
    measurement: every candidate's latency ratio to float and the choice)."""
    from dfc.measure.latency import median_latencies, ratio_margin
    from dfc.measure.validation import output_fidelity, outputs_of

    models = {"float": gs.export_onnx(float_graph.copy())} | {k: gs.export_onnx(g) for k, g in built.items()}
    rounds_of: dict = {}
    med, used = median_latencies(models, x[:batch], threads=threads, rounds=rounds, progress="int8 or float",
                                 samples=rounds_of)
    ratio = {k: med[k] / med["float"] for k in built}
    margin = {k: ratio_margin(rounds_of.get(k, []), rounds_of.get("float", [])) for k in built}
    probe = x[:FIDELITY_SAMPLES]  # the error on more samples than a fixed batch of 1 times
    ref = outputs_of(models["float"], probe)
    error = {k: max(r["rel_l2"] for r in output_fidelity(ref, outputs_of(models[k], probe)).values()) for k in built}
    faster = [k for k in built if ratio[k] + margin[k] < 1.0]  # faster beyond the measurement's own noise
    pick = None
    if faster:
        best = min(ratio[k] for k in faster)
        pick = min((k for k in faster if ratio[k] <= best * (1 + TIE)), key=lambda k: (error[k], len(kept[k])))
    info = {"candidates": {k: {"float_layers": len(kept[k]), "latency_vs_float": round(ratio[k], 3),
                               "margin": round(margin[k], 3),
                               "rel_l2_on_samples": round(error[k], 5)} for k in built},
            "chosen": pick, "batch": used, "rounds": rounds}
    if pick is None:
        ctx.note("quantize: every int8 candidate measured slower than the float graph ("
                 + ", ".join(f"{k} {ratio[k]:.2f}x" for k in built) + "): the model is written in float")
    elif kept[pick]:
        ctx.note(f"quantize: {len(kept[pick])} layer(s) left float ({pick}), by measurement (latency vs the float "
                 f"graph, rel. L2 error on the samples: {', '.join(f'{k} {ratio[k]:.2f}x {error[k]:.3f}' for k in built)}): "
                 + ", ".join(kept[pick][:4]) + (" ..." if len(kept[pick]) > 4 else ""))
    return pick, info
