"""Bias correction (Nagel et al. 2019, "Data-Free Quantization", §4.2): a quantized layer's bias cancels the mean
output shift its weight and input quantization cause."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfc.graph import ir


def bias_shift(n: gs.Node, w: np.ndarray, w_hat: np.ndarray, x_mean: np.ndarray, xq_mean: np.ndarray) -> np.ndarray | None:
    """Bias correction of one layer (Nagel et al. 2019, "Data-Free Quantization", §4.2, here with the input's
    quantization too): the layer's mean output per channel in float, W·E[x], minus the mean it has with
    quantized weights on quantized inputs, Ŵ·E[Q(x)], with E[·] per input channel over the calibration samples
    (the kernel sums the channel mean; zero padding at the borders is neglected). Adding it to the bias cancels
    the mean shift this layer adds; each layer is corrected for its own error only, given float inputs.
    None when the layer's form is not handled (no change then)."""
    w, w_hat = np.asarray(w, np.float64), np.asarray(w_hat, np.float64)
    if n.op == "Conv":
        groups = int(n.attrs.get("group", 1))
        o, cg = w.shape[0], w.shape[1]
        if x_mean.size != cg * groups or o % groups:
            return None
        ksum, ksum_hat = w.reshape(o, cg, -1).sum(2), w_hat.reshape(o, cg, -1).sum(2)
        xm, xq = x_mean.reshape(groups, cg), xq_mean.reshape(groups, cg)
        g_of = np.arange(o) // (o // groups)
        return (ksum * xm[g_of]).sum(1) - (ksum_hat * xq[g_of]).sum(1)
    rows, rows_hat = ir.weight_rows(n, w), ir.weight_rows(n, w_hat)
    if rows.shape[1] != x_mean.size:
        return None
    return rows @ x_mean - rows_hat @ xq_mean
