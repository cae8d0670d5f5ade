"""ONNX Runtime helpers: sessions with explicit threading, batched inference."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort


def make_session(model: onnx.ModelProto | str, threads: int = 0, optimize: bool = True) -> ort.InferenceSession:
    """A CPU session; threads=0 lets ORT choose, otherwise intra-op threads are fixed (inter-op 1)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def run_batched(
    session: ort.InferenceSession,
    x: np.ndarray,
    batch: int = 256,
    outputs: list[str] | None = None,
    progress: str | None = None,
) -> list[np.ndarray]:
    """Run `session` on `x` (first input) in chunks of `batch`; returns the outputs concatenated."""
    from dfc.progress import progress_bar

    name = session.get_inputs()[0].name
    chunks: list[list[np.ndarray]] = []
    starts = range(0, len(x), batch)
    for s in progress_bar(starts, desc=progress, total=len(starts)):
        chunks.append(session.run(outputs, {name: x[s : s + batch]}))
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]
