"""Op families, declared once: which ONNX ops carry weights, pool, or preserve values (so quantization parameters
and channel maps pass through them)."""

WEIGHTED = ("Conv", "Gemm", "MatMul")  # ops with a constant weight input at index 1
POOLS = ("GlobalAveragePool", "AveragePool")
SHARED_PARAM_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "MaxPool", "Slice")  # values kept as-is


def layer_macs(op: str, outputs_per_sample: int, weight_shape, trans_b: bool = False) -> int:
    """Multiply-accumulates of one sample through a weighted layer: each output element of a Conv takes
    |W[0]| = C_in/group · k_h · k_w products; of a Gemm/MatMul, the reduced dimension K (W is [K, N], or [N, K] with
    transB)."""
    if op == "Conv":
        per_output = 1
        for d in weight_shape[1:]:
            per_output *= int(d)
        return int(outputs_per_sample) * per_output
    return int(outputs_per_sample) * int(weight_shape[1] if trans_b else weight_shape[0])
