"""Op families, declared once: which ONNX ops carry weights, pool, or preserve values (so quantization parameters
and channel maps pass through them)."""

WEIGHTED = ("Conv", "Gemm", "MatMul")  # ops with a constant weight input at index 1
POOLS = ("GlobalAveragePool", "AveragePool")
SHARED_PARAM_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "MaxPool", "Slice")  # values kept as-is
