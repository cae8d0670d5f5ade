"""The ONNX ops of `dfc.synth.torch_exec` as torch functions: `OPS[op](module, node, args)` returns the node's
outputs. QuantizeLinear gives its integer codes as float values with a straight-through rounding (`round_ste`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dfc.errors import DfcError
from dfc.graph import ir


def _ints(v) -> list[int]:
    return [int(a) for a in np.asarray(v).ravel()]


# ------------------------------------------------------------------ ops


def _spatial_pad(x: torch.Tensor, pads: list[int], value: float = 0.0) -> tuple[torch.Tensor, list[int] | int]:
    """ONNX pads [b1..bk, e1..ek] over the spatial dims: symmetric -> conv padding, else F.pad first."""
    k = len(pads) // 2
    if not any(pads):
        return x, 0
    if pads[:k] == pads[k:]:
        return x, pads[:k]
    torch_pads = []
    for d in reversed(range(k)):
        torch_pads += [pads[d], pads[d + k]]
    return F.pad(x, torch_pads, value=value), 0


def _conv(m, n, a):
    x, w = a[0], a[1]
    b = a[2] if len(a) > 2 else None
    if n.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        raise DfcError(f"Conv node {n.name!r}: auto_pad is not supported by the torch executor")
    k = w.dim() - 2
    x, pad = _spatial_pad(x, _ints(n.attrs.get("pads", [0] * 2 * k)))
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[k]
    return conv(x, w, b, stride=_ints(n.attrs.get("strides", [1] * k)), padding=pad,
                dilation=_ints(n.attrs.get("dilations", [1] * k)), groups=int(n.attrs.get("group", 1)))


def _bn(m, n, a):
    return F.batch_norm(a[0], a[3], a[4], a[1], a[2], training=False, eps=float(n.attrs.get("epsilon", 1e-5)))


def _clip(m, n, a):
    lo = a[1] if len(a) > 1 and a[1] is not None else n.attrs.get("min")
    hi = a[2] if len(a) > 2 and a[2] is not None else n.attrs.get("max")
    lo = float(lo) if lo is not None else None
    hi = float(hi) if hi is not None else None
    return torch.clamp(a[0], lo, hi)


def _hardsigmoid(m, n, a):
    alpha, beta = float(n.attrs.get("alpha", 0.2)), float(n.attrs.get("beta", 0.5))
    return torch.clamp(alpha * a[0] + beta, 0.0, 1.0)


def _gemm(m, n, a):
    x, w = a[0], a[1]
    if int(n.attrs.get("transA", 0)):
        x = x.t()
    if int(n.attrs.get("transB", 0)):
        w = w.t()
    y = float(n.attrs.get("alpha", 1.0)) * (x @ w)
    if len(a) > 2 and a[2] is not None:
        y = y + float(n.attrs.get("beta", 1.0)) * a[2]
    return y


def _pad(m, n, a):
    x = a[0]
    if m.opset >= 11:
        pads = _ints(a[1].cpu().numpy())
        value = float(a[2]) if len(a) > 2 and a[2] is not None else 0.0
        axes = _ints(a[3].cpu().numpy()) if len(a) > 3 and a[3] is not None else list(range(x.dim()))
    else:
        pads, value, axes = _ints(n.attrs["pads"]), float(n.attrs.get("value", 0.0)), list(range(x.dim()))
    axes = [ax % x.dim() for ax in axes]
    mode = n.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    full = [0] * (2 * x.dim())
    for i, ax in enumerate(axes):
        full[ax], full[ax + x.dim()] = pads[i], pads[i + len(axes)]
    torch_pads = []
    for d in reversed(range(x.dim())):
        torch_pads += [full[d], full[d + x.dim()]]
    if mode == "constant":
        return F.pad(x, torch_pads, value=value)
    lead = next((d for d in range(x.dim()) if full[d] or full[d + x.dim()]), x.dim())
    if lead < 2:
        raise DfcError(f"Pad node {n.name!r}: mode {mode} on the batch/channel axes is not supported")
    return F.pad(x, torch_pads[: 2 * (x.dim() - 2)], mode={"reflect": "reflect", "edge": "replicate"}[mode])


def _slice(m, n, a):
    x = a[0]
    starts, ends = _ints(a[1].cpu().numpy()), _ints(a[2].cpu().numpy())
    axes = _ints(a[3].cpu().numpy()) if len(a) > 3 and a[3] is not None else list(range(len(starts)))
    steps = _ints(a[4].cpu().numpy()) if len(a) > 4 and a[4] is not None else [1] * len(starts)
    idx = [slice(None)] * x.dim()
    reversed_axes = []
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax, size = ax % x.dim(), x.shape[ax % x.dim()]
        if st == 0:
            raise DfcError(f"Slice node {n.name!r}: step 0")
        if st > 0:
            s = max(0, min(s + size if s < 0 else s, size))
            e = max(0, min(e + size if e < 0 else e, size))
            idx[ax] = slice(s, e, st)
        else:  # ONNX bounds for negative steps: start in [0, size-1], end in [-1, size-1]
            s = max(-1, min(s + size if s < 0 else s, size - 1))
            e = max(-1, min(e + size if e < 0 else e, size - 1))
            reversed_axes.append((ax, torch.arange(s, e, st, device=x.device)))
    x = x[tuple(idx)]
    for ax, positions in reversed_axes:
        x = torch.index_select(x, ax, positions)
    return x


def _reshape(m, n, a):
    shape = _ints(a[1].cpu().numpy())
    if not int(n.attrs.get("allowzero", 0)):
        shape = [a[0].shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return a[0].reshape(shape)


def _flatten(m, n, a):
    axis = int(n.attrs.get("axis", 1)) % max(a[0].dim(), 1)
    lead = int(np.prod(a[0].shape[:axis])) if axis else 1
    return a[0].reshape(lead, -1)


def _axes(m, n, a, i):
    if len(a) > i and a[i] is not None:
        return _ints(a[i].cpu().numpy())
    v = n.attrs.get("axes")
    return None if v is None else _ints(v)


def _squeeze(m, n, a):
    axes = _axes(m, n, a, 1)
    if axes is None:
        return a[0].squeeze()
    x = a[0]
    for ax in sorted((ax % x.dim() for ax in axes), reverse=True):
        x = x.squeeze(ax)
    return x


def _unsqueeze(m, n, a):
    x = a[0]
    axes = _axes(m, n, a, 1)
    rank = x.dim() + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        x = x.unsqueeze(ax)
    return x


def _pool(m, n, a):
    x = a[0]
    k = x.dim() - 2
    kernel = _ints(n.attrs["kernel_shape"])
    strides = _ints(n.attrs.get("strides", [1] * k))
    pads = _ints(n.attrs.get("pads", [0] * 2 * k))
    ceil = bool(int(n.attrs.get("ceil_mode", 0)))
    if n.op == "MaxPool":  # asymmetric pads: pad with -inf first (padding never wins a max)
        x, sym = _spatial_pad(x, pads, value=float("-inf"))
        pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[k]
        return pool(x, kernel, strides, sym, dilation=_ints(n.attrs.get("dilations", [1] * k)), ceil_mode=ceil)
    if pads[:k] != pads[k:]:
        raise DfcError(f"{n.op} node {n.name!r}: asymmetric pads are not supported by the torch executor")
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[k]
    return pool(x, kernel, strides, pads[:k], ceil_mode=ceil, count_include_pad=bool(int(n.attrs.get("count_include_pad", 0))))


def _softmax(m, n, a):
    axis = int(n.attrs.get("axis", -1 if m.opset >= 13 else 1))
    if m.opset < 13:  # coerced to 2-D at `axis`
        shape = a[0].shape
        return torch.softmax(a[0].reshape(int(np.prod(shape[:axis])), -1), dim=1).reshape(shape)
    return torch.softmax(a[0], dim=axis)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) (half to even, as QuantizeLinear) with the identity's gradient (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def _code_range(zp: torch.Tensor) -> tuple[float, float]:
    if zp.dtype == torch.uint8:
        return 0.0, 255.0
    if zp.dtype == torch.int8:
        return -128.0, 127.0
    return -2.0**31, 2.0**31 - 1


def _per_axis(v: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """A scale / zero point shaped to broadcast along `axis` of x (per-tensor values unchanged)."""
    if v.dim() == 0 or v.numel() == 1:
        return v.reshape(())
    shape = [1] * x.dim()
    shape[axis % x.dim()] = -1
    return v.reshape(shape)


def _quantize_linear(m, n, a):
    """clamp(round(x/s) + zp) as float codes; gradient straight through the rounding, zero where saturated."""
    x, s = a[0], a[1]
    zp = a[2] if len(a) > 2 and a[2] is not None else torch.zeros((), dtype=torch.uint8)
    axis = int(n.attrs.get("axis", 1))
    lo, hi = _code_range(zp)
    return torch.clamp(round_ste(x / _per_axis(s, x, axis)) + _per_axis(zp, x, axis).float(), lo, hi)


def _dequantize_linear(m, n, a):
    x, s = a[0].float(), a[1]
    zp = a[2] if len(a) > 2 and a[2] is not None else None
    axis = int(n.attrs.get("axis", 1))
    if zp is not None:
        x = x - _per_axis(zp, x, axis).float()
    return x * _per_axis(s, x, axis)


def _shape(m, n, a):
    dims = list(a[0].shape)
    start, end = int(n.attrs.get("start", 0)), n.attrs.get("end")
    return torch.tensor(dims[start: None if end is None else int(end)], dtype=torch.int64)


def _gather(m, n, a):
    x, idx = a[0], a[1].long()
    axis = int(n.attrs.get("axis", 0)) % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    if idx.dim() == 0:
        return x.select(axis, int(idx))
    return torch.index_select(x, axis, idx.reshape(-1)).reshape(x.shape[:axis] + idx.shape + x.shape[axis + 1:])


_ONNX_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 6: torch.int32, 7: torch.int64, 9: torch.bool,
                10: torch.float16, 11: torch.float64}


def _cast(m, n, a):
    to = _ONNX_DTYPES.get(int(n.attrs["to"]))
    if to is None:
        raise DfcError(f"Cast node {n.name!r}: target type {n.attrs['to']} is not supported by the torch executor")
    return a[0].to(torch.float32 if to in (torch.float16, torch.float64) else to)  # float math stays float32


def _constant_of_shape(m, n, a):
    v = n.attrs.get("value")
    arr = np.asarray(v.values if hasattr(v, "values") else (v if v is not None else np.zeros(1, np.float32)))
    fill = torch.from_numpy(np.array(arr.ravel()[:1], dtype=np.float32 if arr.dtype.kind == "f" else arr.dtype))
    return fill.expand(*_ints(a[0].cpu().numpy())).clone() if a[0].numel() else fill.reshape(()).clone()


def _resize(m, n, a):
    """Resize/Upsample, nearest or (bi)linear, by scales or sizes (half-pixel or asymmetric coordinates)."""
    x = a[0]
    mode = n.attrs.get("mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if n.op == "Upsample":
        scales = a[1] if len(a) > 1 else torch.tensor(n.attrs["scales"])
        sizes = None
    else:
        scales = a[2] if len(a) > 2 and a[2] is not None and a[2].numel() else None
        sizes = a[3] if len(a) > 3 and a[3] is not None and a[3].numel() else None
    if sizes is not None:
        size = _ints(sizes.cpu().numpy())[2:]
    else:
        size = [int(np.floor(d * float(s))) for d, s in zip(x.shape[2:], scales.cpu().numpy().ravel()[2:])]
    coord = n.attrs.get("coordinate_transformation_mode", "half_pixel" if n.op == "Resize" and m.opset >= 11 else "asymmetric")
    coord = coord.decode() if isinstance(coord, bytes) else coord
    if mode == "nearest":
        if coord not in ("asymmetric", "half_pixel", "tf_half_pixel_for_nn"):
            raise DfcError(f"{n.op} node {n.name!r}: nearest with {coord} coordinates is not supported by the torch executor")
        return F.interpolate(x, size=size, mode="nearest" if coord == "asymmetric" else "nearest-exact")
    if mode not in ("linear", "bilinear"):
        raise DfcError(f"{n.op} node {n.name!r}: mode {mode} is not supported by the torch executor")
    if coord not in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"):
        raise DfcError(f"{n.op} node {n.name!r}: {coord} coordinates are not supported by the torch executor")
    if coord == "asymmetric":
        raise DfcError(f"{n.op} node {n.name!r}: linear with asymmetric coordinates is not supported by the torch executor")
    return F.interpolate(x, size=size, mode="bilinear" if x.dim() == 4 else "linear", align_corners=coord == "align_corners")


def _conv_transpose(m, n, a):
    x, w = a[0], a[1]
    b = a[2] if len(a) > 2 else None
    k = w.dim() - 2
    if n.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET") or "output_shape" in n.attrs:
        raise DfcError(f"ConvTranspose node {n.name!r}: auto_pad/output_shape are not supported by the torch executor")
    pads = _ints(n.attrs.get("pads", [0] * 2 * k))
    if pads[:k] != pads[k:]:
        raise DfcError(f"ConvTranspose node {n.name!r}: asymmetric pads are not supported by the torch executor")
    conv = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[k]
    return conv(x, w, b, stride=_ints(n.attrs.get("strides", [1] * k)), padding=pads[:k],
                output_padding=_ints(n.attrs.get("output_padding", [0] * k)), groups=int(n.attrs.get("group", 1)),
                dilation=_ints(n.attrs.get("dilations", [1] * k)))


def _reduce(fn):
    def run(m, n, a):
        axes = _axes(m, n, a, 1) if m.opset >= 18 or (n.op == "ReduceSum" and m.opset >= 13) else (
            _ints(n.attrs["axes"]) if "axes" in n.attrs else None)
        keep = bool(int(n.attrs.get("keepdims", 1)))
        x = a[0]
        for ax in sorted((ax % x.dim() for ax in (axes if axes is not None else range(x.dim()))), reverse=True):
            x = fn(x, ax, keep)
        return x
    return run


def _constant(m, n, a):
    v = n.attrs["value"]
    arr = np.asarray(v.values if hasattr(v, "values") else v)
    return torch.from_numpy(np.array(arr, dtype=np.float32 if arr.dtype.kind == "f" else arr.dtype, copy=True))


_OPS = {
    "Conv": _conv,
    "BatchNormalization": _bn,
    "Relu": lambda m, n, a: F.relu(a[0]),
    "Clip": _clip,
    "LeakyRelu": lambda m, n, a: F.leaky_relu(a[0], float(n.attrs.get("alpha", 0.01))),
    "Sigmoid": lambda m, n, a: torch.sigmoid(a[0]),
    "HardSigmoid": _hardsigmoid,
    "HardSwish": lambda m, n, a: F.hardswish(a[0]),
    "Add": lambda m, n, a: a[0] + a[1],
    "Sub": lambda m, n, a: a[0] - a[1],
    "Mul": lambda m, n, a: a[0] * a[1],
    "Div": lambda m, n, a: a[0] / a[1],
    "Gemm": _gemm,
    "MatMul": lambda m, n, a: torch.matmul(a[0], a[1]),
    "Pad": _pad,
    "Slice": _slice,
    "Concat": lambda m, n, a: torch.cat(a, dim=int(n.attrs["axis"])),
    "Reshape": _reshape,
    "Expand": lambda m, n, a: a[0].expand(torch.broadcast_shapes(tuple(a[0].shape), tuple(_ints(a[1].cpu().numpy())))),
    "Flatten": _flatten,
    "Transpose": lambda m, n, a: a[0].permute(*(_ints(n.attrs["perm"]) if "perm" in n.attrs else reversed(range(a[0].dim())))),
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "GlobalAveragePool": lambda m, n, a: a[0].mean(dim=tuple(range(2, a[0].dim())), keepdim=True),
    "AveragePool": _pool,
    "MaxPool": _pool,
    "ReduceMean": _reduce(lambda x, ax, keep: x.mean(dim=ax, keepdim=keep)),
    "ReduceSum": _reduce(lambda x, ax, keep: x.sum(dim=ax, keepdim=keep)),
    "ReduceMax": _reduce(lambda x, ax, keep: x.amax(dim=ax, keepdim=keep)),
    "GlobalMaxPool": lambda m, n, a: a[0].amax(dim=tuple(range(2, a[0].dim())), keepdim=True),
    "Softmax": _softmax,
    "LogSoftmax": lambda m, n, a: torch.log(_softmax(m, n, a)),
    "Tanh": lambda m, n, a: torch.tanh(a[0]),
    "Exp": lambda m, n, a: torch.exp(a[0]),
    "Sqrt": lambda m, n, a: torch.sqrt(a[0]),
    "Neg": lambda m, n, a: -a[0],
    "Pow": lambda m, n, a: torch.pow(a[0], a[1]),
    "Floor": lambda m, n, a: torch.floor(a[0]),
    "Ceil": lambda m, n, a: torch.ceil(a[0]),
    "Equal": lambda m, n, a: a[0] == a[1],
    "Where": lambda m, n, a: torch.where(a[0].bool(), a[1], a[2]),
    "Shape": _shape,
    "Gather": _gather,
    "Cast": _cast,
    "Range": lambda m, n, a: torch.arange(a[0].item(), a[1].item(), a[2].item(), dtype=a[0].dtype),
    "ConstantOfShape": _constant_of_shape,
    "Resize": _resize,
    "Upsample": _resize,
    "ConvTranspose": _conv_transpose,
    "Identity": lambda m, n, a: a[0],
    "Dropout": lambda m, n, a: a[0],
    "Constant": _constant,
    "QuantizeLinear": _quantize_linear,
    "DequantizeLinear": _dequantize_linear,
}
SUPPORTED_OPS = tuple(sorted(_OPS))
