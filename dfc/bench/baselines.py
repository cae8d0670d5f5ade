"""The peers dfc is compared with: ONNX Runtime's own static quantization.

`ort_quantize_static` is what an ORT user does by the book: `quant_pre_process` (shape inference
and ORT's graph optimisation, which folds BatchNormalization into Conv; where its symbolic shape inference fails, as
on PP-OCR's opset-11 Concat, again without it), then `quantize_static`; a model below opset 13 is lifted to 13
first, as dfc lifts it (ORT writes per-channel DequantizeLinear with `axis`, which older opsets do not have: left
as they are, PP-OCR and UltraFace come back invalid)
with QDQ nodes, per-channel int8 weights, MinMax activation ranges over the calibration batch and
the chosen activation type (uint8, or ORT's default int8).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from dfc.errors import DfcError
from dfc.synth.ort_reader import SampleReader
from dfc.graph.preflight import lift_opset_for_qdq
from dfc.graph.signature import Signature

ACTIVATION_TYPES = ("uint8", "int8")


def ort_quantize_static(model: onnx.ModelProto, calib_x, activations: str = "uint8") -> onnx.ModelProto:
    """ORT `quantize_static` (QDQ, per-channel int8 weights, MinMax) of `model`, calibrated on `calib_x` (an array of
    inputs, or a CalibrationDataReader such as `dfc.calibration_reader`)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if activations not in ACTIVATION_TYPES:
        raise DfcError(f"ORT baseline activations must be one of {', '.join(ACTIVATION_TYPES)}, got {activations!r}")
    with tempfile.TemporaryDirectory(prefix="dfc-ort-") as tmp:
        src, pre, out = (Path(tmp) / n for n in ("in.onnx", "pre.onnx", "out.onnx"))
        onnx.save(lift_opset_for_qdq(model)[0], src)
        try:
            quant_pre_process(str(src), str(pre))
        except Exception:  # noqa: BLE001  (ORT's symbolic shape inference refuses some exports: what its docs suggest)
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(out), calib_x if isinstance(calib_x, CalibrationDataReader) else
            SampleReader(model.graph.input[0].name, calib_x, Signature.of(model).fixed_batch or 64),
            quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
        )
        return onnx.load(str(out))
