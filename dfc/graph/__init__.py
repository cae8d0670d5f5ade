"""The graph core: ONNX I/O and checks, the graphsurgeon IR helpers, op families, exact rewrite rules, the
input signature, BN statistics kept after folding, per-layer statistics."""
