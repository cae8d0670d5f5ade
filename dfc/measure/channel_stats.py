"""Per-channel statistics of intermediate tensors, measured in ONNX Runtime on a batch of inputs (the tensors
exposed as extra graph outputs): channel means (bias correction) and moments (BN-less pruning)."""

from __future__ import annotations

import numpy as np
import onnx


def exposing_session(model: onnx.ModelProto, names: list[str]):
    """An unoptimised ORT session of `model` with the tensors `names` added to its outputs."""
    from dfc.measure.runtime import make_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for n in names:
        if n not in existing:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    return make_session(probe, optimize=False)


def channel_averages(model: onnx.ModelProto, names: list[str], x: np.ndarray, transforms, batch: int = 64,
                     progress: str | None = None) -> dict[str, list[np.ndarray]]:
    """Per tensor name: for each function f in `transforms` (f(values, name)), the per-channel (axis 1) mean of
    f(tensor) over the batch `x` and all other axes."""
    from dfc.progress import progress_bar
    from dfc.measure.runtime import fixed_batch, run_batched

    sess = exposing_session(model, names)
    batch = fixed_batch(sess) or batch
    sums: dict[str, list] = {n: [0.0] * len(transforms) for n in names}
    count = dict.fromkeys(names, 0)
    for s in progress_bar(range(0, len(x), batch), desc=progress, total=-(-len(x) // batch)):
        for n, v in zip(names, run_batched(sess, x[s : s + batch], batch, outputs=names)):
            v = np.asarray(v, np.float32)
            axes = tuple(i for i in range(v.ndim) if i != 1)
            sums[n] = [acc + f(v, n).sum(axis=axes, dtype=np.float64) for acc, f in zip(sums[n], transforms)]
            count[n] += v.size // max(1, v.shape[1])
    return {n: [a / max(1, count[n]) for a in sums[n]] for n in names}


def channel_means(model: onnx.ModelProto, params: dict, x: np.ndarray, batch: int = 64,
                  progress: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per tensor name in `params` (-> its `ActQParams`): the per-channel (axis 1) means of the tensor and of
    the tensor after fake quantization, over the batch `x` and all other axes."""
    from dfc.quant.quant_math import fake_quant_act

    got = channel_averages(model, list(params), x, [lambda v, n: v, lambda v, n: fake_quant_act(v, params[n])],
                           batch=batch, progress=progress)
    return {n: (a, b) for n, (a, b) in got.items()}


def channel_moments(model: onnx.ModelProto, names: list[str], x: np.ndarray, batch: int = 64,
                    progress: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per tensor name: the per-channel (axis 1) mean and standard deviation over the batch `x` and all other axes."""
    got = channel_averages(model, names, x, [lambda v, n: v, lambda v, n: v.astype(np.float64) ** 2], batch=batch,
                           progress=progress)
    return {n: (m, np.sqrt(np.maximum(sq - m ** 2, 0.0))) for n, (m, sq) in got.items()}
