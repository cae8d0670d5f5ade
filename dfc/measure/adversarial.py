"""Robustness to adversarial inputs: FGSM (Goodfellow et al. 2015), as PAODING measures a pruned model's fidelity.

x_adv = clip(x + (ε/σ_c)·sign(∇ₓ CE(f(x), y)), x_min, x_max): ε in pixel units (1/255 is one grey level), divided by
the normalisation's per-channel std σ_c; the valid pixel range [0, 1] through the normalisation is the clip. The
gradient is the evaluated model's own, through the torch executor; a QDQ graph passes it through its rounding
(straight-through estimator), so a quantized model is attacked through its quantized graph, not a float copy.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from dfc.errors import DfcError
from dfc.progress import progress_bar


def parse_eps(text: str, option: str = "--fgsm") -> list[float]:
    """'1/255,2/255,0.03' -> [0.00392, 0.00784, 0.03] (pixel units, each in [0, 1])."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            num, _, den = part.partition("/")
            v = float(num) / (float(den) if den else 1.0)
        except (ValueError, ZeroDivisionError):
            raise DfcError(f"{option}: expected comma-separated numbers or fractions like 2/255, got {part!r}") from None
        if not 0.0 <= v <= 1.0:
            raise DfcError(f"{option}: ε is in pixel units and must lie in [0, 1], got {part!r}")
        out.append(v)
    return out


def input_gradients(model: onnx.ModelProto, x: np.ndarray, labels: np.ndarray, batch: int = 128) -> np.ndarray:
    """∇ₓ of the cross-entropy of the model's logits at `labels`, per sample (torch executor; STE through Q/DQ)."""
    from dfc.pipeline import Context, PassManager
    from dfc.synth.torch_exec import TorchGraph

    graph = TorchGraph(PassManager(["cleanup"]).run(model, Context()))  # exact; folds exporter shape arithmetic
    out = np.empty_like(x, dtype=np.float32)
    for i in progress_bar(range(0, len(x), batch), desc="fgsm gradients", total=-(-len(x) // batch)):
        xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch], np.float32)).requires_grad_(True)
        logits = graph(xb)[0][0]
        F.cross_entropy(logits, torch.from_numpy(np.asarray(labels[i:i + batch], np.int64)), reduction="sum").backward()
        out[i:i + batch] = xb.grad.numpy()
    return out


def fgsm(x: np.ndarray, grad: np.ndarray, eps: float, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """One FGSM step of ε pixels from normalised inputs x (NCHW), clipped to the valid pixel range."""
    std_c = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    mean_c = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    lo, hi = (0.0 - mean_c) / std_c, (1.0 - mean_c) / std_c
    return np.clip(x + np.float32(eps) / std_c * np.sign(grad), lo, hi).astype(np.float32)


def fgsm_eval(model: onnx.ModelProto, x: np.ndarray, labels: np.ndarray, eps_list: list[float], mean, std,
              reference: onnx.ModelProto | None = None) -> dict:
    """Top-1 under FGSM at each ε (white-box: the model's own gradients). With `reference`: its own robust top-1,
    the transfer case (the reference's adversarial inputs on this model) and the ratio of robust accuracies
    model / reference. Logits from ONNX Runtime, as the clean top-1."""
    from dfc.measure.validation import logits_of, top1

    if mean is None or std is None:
        raise DfcError("--fgsm needs the input normalisation (--mean/--std or the model's dfc metadata)")
    grad = input_gradients(model, x, labels)
    ref_grad = input_gradients(reference, x, labels) if reference is not None else None
    rows = []
    for eps in eps_list:
        row = {"eps": eps, "eps_255": round(eps * 255, 3), "top1": top1(logits_of(model, fgsm(x, grad, eps, mean, std)), labels)}
        if reference is not None:
            ref_adv = fgsm(x, ref_grad, eps, mean, std)
            row["reference_top1"] = top1(logits_of(reference, ref_adv), labels)
            row["transfer_top1"] = top1(logits_of(model, ref_adv), labels)
            row["robust_ratio"] = row["top1"] / row["reference_top1"] if row["reference_top1"] > 0 else None
        rows.append(row)
    return {"fgsm": rows}
