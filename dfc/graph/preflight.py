"""Checks on the input model before any work starts (so a refusal never costs a BNS inversion), and the one
repair dfc makes on its own: lifting opset 11/12 models to 13 for per-channel QDQ.

Refused, with the tensor or node named: an empty graph, a graph without inputs, non-finite initializers,
an already-quantized model (QDQ or QLinear/integer ops), a model ONNX Runtime cannot load (custom-domain
ops without a kernel), several inputs when quantizing (calibration feeds one input).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from dfc.errors import DfcError

QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul",
                 "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat", "ConvInteger", "MatMulInteger",
                 "DynamicQuantizeLinear", "QGemm", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax")
QDQ_MIN_OPSET = 13  # per-channel (axis) QuantizeLinear/DequantizeLinear
_STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


def default_opset(model: onnx.ModelProto) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def non_finite_initializers(model: onnx.ModelProto) -> list[tuple[str, int]]:
    """(name, count of NaN/Inf values) of every float initializer or Constant that holds any."""
    tensors = [(t.name, t) for t in model.graph.initializer]
    tensors += [(n.output[0], a.t) for n in model.graph.node if n.op_type == "Constant"
                for a in n.attribute if a.name == "value"]
    bad = []
    for name, t in tensors:
        if t.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            continue
        count = int(np.size(v) - np.isfinite(v).sum()) if (v := numpy_helper.to_array(t)).size else 0
        if count:
            bad.append((name, count))
    return bad


def check_input(model: onnx.ModelProto, quantizing: bool) -> None:
    """Raise DfcError for a model dfc must not compress (see the module docstring)."""
    g = model.graph
    if not g.node:
        raise DfcError("the model's graph is empty (no nodes): nothing to compress")
    inits = {t.name for t in g.initializer}
    inputs = [i.name for i in g.input if i.name not in inits]
    if not inputs:
        raise DfcError("the model has no graph inputs (only initializers): nothing to calibrate or validate")
    bad = non_finite_initializers(model)
    if bad:
        listed = ", ".join(f"{n!r} ({c} values)" for n, c in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise DfcError(f"non-finite weights (NaN/Inf) in initializer {listed}; refusing to compress a broken model")
    q = next((n for n in g.node if n.op_type in QUANTIZED_OPS), None)
    if q is not None:
        raise DfcError(f"the model is already quantized (node {q.name or '(unnamed)'!r} is {q.op_type}); "
                       "dfc compresses float models: give it the float original")
    if quantizing and len(inputs) > 1:
        raise DfcError(f"the model has {len(inputs)} inputs ({', '.join(inputs)}); quantization calibrates a single "
                       "input: use --no-quant for pruning only")
    _check_runtime_accepts(model)


def _check_runtime_accepts(model: onnx.ModelProto) -> None:
    from dfc.measure.runtime import make_session

    try:
        make_session(model)
    except Exception as e:  # ORT raises several unrelated exception types
        custom = [n for n in model.graph.node if n.domain not in _STANDARD_DOMAINS]
        where = (f" (node {custom[0].name or '(unnamed)'!r} is {custom[0].domain}.{custom[0].op_type}, a custom-domain op "
                 "with no ONNX Runtime kernel)") if custom else ""
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DfcError(f"ONNX Runtime cannot load the input model{where}: {first}") from e


def lift_opset_for_qdq(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Opset < 13 -> the same model converted to opset 13 (onnx.version_converter), and a note; else unchanged."""
    v = default_opset(model)
    if v >= QDQ_MIN_OPSET:
        return model, None
    from onnx import version_converter

    try:
        lifted = version_converter.convert_version(model, QDQ_MIN_OPSET)
        onnx.checker.check_model(lifted)
    except Exception as e:
        raise DfcError(f"quantization needs opset >= {QDQ_MIN_OPSET} (per-channel DequantizeLinear) and converting this "
                       f"opset-{v} model failed: {str(e).strip().splitlines()[-1] if str(e).strip() else e}; "
                       "re-export it at opset 13 or newer, or use --no-quant") from e
    return lifted, f"opset {v} converted to {QDQ_MIN_OPSET} for per-channel QDQ (onnx.version_converter)"
