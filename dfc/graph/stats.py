"""Per-layer statistics of a model: op, shapes, parameters, MACs, BN present, quantized.

MACs per sample: Conv = H_out·W_out·C_out·(C_in/groups)·k_h·k_w; Gemm/MatMul = (rows per sample)·K·N.
A weight behind a DequantizeLinear counts as quantized; its bit width is read off its codes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from dfc.graph import ir
from dfc.graph.ops import WEIGHTED, layer_macs


@dataclass
class LayerStats:
    name: str
    op: str
    input_shape: list
    output_shape: list
    params: int
    macs: int
    bn: bool
    quantized: bool
    wbits: int | None


def _weight(n: gs.Node) -> tuple[np.ndarray | None, bool]:
    """(weight array, is_quantized) of a Conv/Gemm/MatMul, looking through a DequantizeLinear."""
    t = ir.input_at(n, 1)
    v = ir.const_value(t)
    if v is not None:
        return v, False
    p = ir.producer(t) if t is not None else None
    if p is not None and p.op == "DequantizeLinear":
        return ir.const_value(p.inputs[0]), True
    return None, False


def _bias_size(n: gs.Node) -> int:
    t = ir.input_at(n, 2)
    if t is None:
        return 0
    v = ir.const_value(t)
    if v is None and ir.producer(t) is not None and ir.producer(t).op == "DequantizeLinear":
        v = ir.const_value(ir.producer(t).inputs[0])
    return 0 if v is None else int(v.size)


def _bits(q: np.ndarray) -> int:
    amax = int(np.abs(q.astype(np.int64)).max()) if q.size else 0
    return max(2, int(np.ceil(np.log2(amax + 1))) + 1)


def _shape(t: gs.Tensor) -> list:
    return [d if isinstance(d, (int, np.integer)) else "N" for d in (t.shape or [])]


def _macs(n: gs.Node, w: np.ndarray) -> int:
    out = n.outputs[0].shape
    if out is None or any(not isinstance(d, (int, np.integer)) for d in out[1:]):
        return 0
    return layer_macs(n.op, int(np.prod(out[1:])), w.shape, n.op == "Gemm" and bool(int(n.attrs.get("transB", 0))))


def layer_stats(model: onnx.ModelProto) -> list[LayerStats]:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # importing and folding touch the proto's value_info: `model` stays as it is
    graph = ir.import_graph(copy)
    # exporter shape arithmetic (e.g. the Pad sizes of TF "same" padding) folded so that shape inference gets
    # through it; quantized weights stay behind their DequantizeLinear
    graph.fold_constants(fold_shapes=True, error_ok=True, should_exclude_node=lambda n: n.op == "DequantizeLinear")
    graph = ir.infer_shapes(ir.tidy(graph))
    rows = []
    for n in graph.nodes:
        if n.op not in WEIGHTED:
            continue
        w, quant = _weight(n)
        if w is None:
            continue
        y = n.outputs[0]
        bn = any(c.op == "BatchNormalization" for c in ir.consumers(y))
        rows.append(
            LayerStats(
                name=n.name, op=n.op, input_shape=_shape(n.inputs[0]), output_shape=_shape(y),
                params=int(w.size) + _bias_size(n), macs=_macs(n, w), bn=bn, quantized=quant,
                wbits=_bits(w) if quant else None,
            )
        )
    return rows


def model_summary(model: onnx.ModelProto, input_shape: tuple[int, ...] | None = None) -> dict:
    """Totals: weight params (Conv/Gemm/MatMul), all initializer params, MACs, bytes, node count; MACs at the
    per-sample `input_shape` where the model's input dims are symbolic."""
    from dfc.graph.signature import at_shape

    rows = layer_stats(at_shape(model, input_shape))
    graph = ir.import_graph(model)
    return {
        "weight_params": sum(r.params for r in rows),
        "all_params": ir.count_params(graph),
        "macs": sum(r.macs for r in rows),
        "size_bytes": model.ByteSize(),
        "nodes": len(model.graph.node),
        "bn_nodes": sum(1 for n in model.graph.node if n.op_type == "BatchNormalization"),
        "quantized_layers": sum(1 for r in rows if r.quantized),
        "layers": len(rows),
    }


def rows_as_dicts(rows: list[LayerStats]) -> list[dict]:
    return [asdict(r) for r in rows]
