"""ONNX Runtime helpers: sessions with explicit threading, batched inference."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort


CPUS_ENV = "DFC_CPUS"  # set by dfc.distributed in a Ray task: the CPUs the task reserved


def cpu_threads() -> int:
    """CPU threads this process's torch work may use: a Ray task's reservation (`DFC_CPUS`), else the CPUs the
    affinity mask allows (taskset, cgroup cpusets), else `os.cpu_count()`."""
    if os.environ.get(CPUS_ENV, "").isdigit() and int(os.environ[CPUS_ENV]) > 0:
        return int(os.environ[CPUS_ENV])
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def make_session(model: onnx.ModelProto | str, threads: int = 0, optimize: bool = True, spinning: bool = True
                 ) -> ort.InferenceSession:
    """A CPU session; threads=0 lets ORT choose, otherwise intra-op threads are fixed (inter-op 1);
    `spinning=False`: worker threads sleep instead of spin-waiting between ops and runs."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
    """Run `session` on `x` (first input) in chunks of `batch`; returns the outputs concatenated.

    A model with a fixed batch dimension b gets chunks of exactly b (the last one padded by
    repeating samples, whose outputs are dropped)."""
    from dfc.progress import progress_bar

    name = session.get_inputs()[0].name
    fixed = fixed_batch(session)
    batch = fixed or batch
    chunks: list[list[np.ndarray]] = []
    starts = range(0, len(x), batch)
    for s in progress_bar(starts, desc=progress, total=len(starts)):
        xb = x[s : s + batch]
        n = len(xb)
        if fixed and n < fixed:
            xb = np.concatenate([xb, np.repeat(xb[-1:], fixed - n, axis=0)])
        chunks.append([o[:n] for o in session.run(outputs, {name: xb})])
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def fixed_batch(session: ort.InferenceSession) -> int | None:
    """The first input's batch size when the model fixes it, else None."""
    shape = session.get_inputs()[0].shape
    return shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None


def nchwc_block() -> int | None:
    """Channel block of ONNX Runtime's NCHWc conv kernels on this CPU (16 with AVX-512, 8 with AVX2), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return None
    return 16 if " avx512f" in flags else 8 if " avx2" in flags else None


def ort_optimized_ops(model: onnx.ModelProto) -> "Counter[str]":
    """Op counts of the graph ONNX Runtime runs after its graph optimizer (extended level: the QDQ fusions into
    QLinearConv / QGemm / QLinearAdd / ..., without the layout-specific NCHWc rewrite that cannot be saved)."""
    import os
    import tempfile
    from collections import Counter

    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = os.path.join(d, "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
