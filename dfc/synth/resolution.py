"""Working at a smaller input size: the inverter synthesizes there and fine-tuning trains there, for models whose
graph runs at any size (convolutions and global pooling), because a step's cost follows the pixel count.

The reduced shape keeps the aspect ratio and aims at `target_macs` per sample (the model's MACs scale with the pixel
count: side factor √(target / MACs)), each side a multiple of the model's total stride and at least `min_side`; or
the shorter side scaled to `size` when that is given. A model that does not run at that shape (a Reshape to fixed
dims, a fixed-kernel pooling to 1×1) keeps its input shape.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from dfc.errors import DfcError

REDUCED_SIZE_MACS = 1.3e8  # per-sample MACs a reduced working size aims at (inverter and fine-tuning alike)


def area_ratio(low: tuple[int, ...], shape: tuple[int, ...]) -> float:
    """The pixel count of per-sample shape `low` over that of `shape` (1 for inputs without spatial axes)."""
    return float(np.prod(low[1:]) / np.prod(shape[1:])) if len(shape) > 1 else 1.0


def model_cost(model: onnx.ModelProto) -> tuple[int, int, int]:
    """(MACs per sample, total stride: the input's height over the smallest conv output height, activation elements
    per sample: the sum of the weighted layers' output sizes) of the model at its input size."""
    from dfc.graph.stats import layer_stats

    rows, shape = layer_stats(model), input_shape(model)
    heights = [r.output_shape[2] for r in rows if r.op == "Conv" and len(r.output_shape) == 4
               and isinstance(r.output_shape[2], int)]
    stride = max(1, shape[1] // min(heights)) if heights and len(shape) == 3 else 1
    volume = sum(int(np.prod(r.output_shape[1:])) for r in rows
                 if all(isinstance(d, (int, np.integer)) for d in r.output_shape[1:]))
    return sum(r.macs for r in rows), stride, volume


def input_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    from dfc.graph import ir
    from dfc.synth import sample_sources

    return sample_sources.input_spec(ir.import_graph(model))[1]


def reduced_shape(shape: tuple[int, ...], macs: float, stride: int, runs, target_macs: float | None,
                  size: int | None = None, min_side: int = 32) -> tuple[int, ...]:
    """The per-sample shape to work at (module doc); `runs(shape)` says whether the graph runs at a shape (it raises
    DfcError or returns False when not)."""
    if len(shape) != 3:
        return shape
    if size:
        factor = min(1.0, size / min(shape[1:]))
    elif target_macs and macs:
        factor = min(1.0, (target_macs / macs) ** 0.5)
    else:
        return shape
    stride = 1 if size else max(1, stride)
    side = lambda s: max(min(min_side, s), int(round(s * factor / stride)) * stride)  # noqa: E731
    low = (shape[0], min(shape[1], side(shape[1])), min(shape[2], side(shape[2])))
    if low == shape:
        return shape
    try:
        ok = runs(low)
    except DfcError:
        return shape
    return low if ok is not False else shape


def runnable_reduced_shape(model: onnx.ModelProto, graphs, shape: tuple[int, ...], target_macs: float,
                           size: int | None, device) -> tuple[int, ...]:
    """`reduced_shape` for torch graphs (`graphs`, e.g. a student and its teacher) built from `model` (whose MACs
    decide): smaller only where every graph runs there and gives outputs of the shapes it gives at `shape` (a
    detector's anchor count follows the input size). `size` 0: the input shape; None: by `target_macs`."""
    if size == 0:
        return shape
    macs, stride, _ = model_cost(model)

    def runs(low: tuple[int, ...]) -> bool:
        with torch.no_grad():
            probes = [torch.zeros((1,) + s, device=device) for s in (shape, low)]
            for g in graphs:
                full, small = ([tuple(o.shape) for o in g(p)[0]] for p in probes)
                if full != small:
                    return False
        return True

    return reduced_shape(shape, macs, stride, runs, target_macs, size, min_side=min(32, size or 32))


def resized(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """`x` at the per-sample `shape` (bilinear with antialiasing: a lower-resolution image of the same scene)."""
    if tuple(x.shape[1:]) == tuple(shape):
        return x
    return F.interpolate(x, size=list(shape[1:]), mode="bilinear", antialias=True, align_corners=False)
