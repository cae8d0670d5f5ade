"""Export a PyTorch model to ONNX with BatchNormalization nodes kept (`dfc.export`).

`torch.onnx.export` folds BN into Conv in eval mode by default, which throws away the running statistics that
data-free synthesis (BNS), compensation (UDFC's BN-moment model) and the probes need. This helper uses the
TorchScript exporter with `training=TrainingMode.PRESERVE` on the module in eval mode (BN exported in its inference
form, numerically the same model), records the input normalisation in the model metadata (`dfc.input_mean/std`),
checks that every BatchNorm of the module reached the file, and writes the file atomically.
"""

from __future__ import annotations

import os
import tempfile
import warnings

import onnx
import torch

from dfc.errors import DfcError

_BN_TYPES = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)


def export_keep_bn(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    opset: int = 17,
    input_name: str = "input",
    output_name: str = "logits",
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> onnx.ModelProto:
    """Write `model` (run on `example`, batch dimension symbolic) to `path` with its BatchNorms kept; returns the
    model. The module's train/eval mode is restored afterwards."""
    if (mean is None) != (std is None):
        raise DfcError("dfc.export: give both mean and std (the input normalisation) or neither")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise DfcError(f"dfc.export: folder {folder} does not exist")
    was_training = model.training
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=folder)
    os.close(fd)
    try:
        model.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), tmp, dynamo=False, opset_version=opset,
                              training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                              input_names=[input_name], output_names=[output_name],
                              dynamic_axes={input_name: {0: "N"}, output_name: {0: "N"}})
        m = onnx.load(tmp)
        modules = sum(isinstance(mod, _BN_TYPES) for mod in model.modules())
        nodes = sum(n.op_type == "BatchNormalization" for n in m.graph.node)
        if nodes < modules:
            raise DfcError(f"dfc.export: the module has {modules} BatchNorm layers but the export kept {nodes}")
        if mean is not None:
            onnx.helper.set_model_props(m, {"dfc.input_mean": ",".join(f"{v:.6g}" for v in mean),
                                            "dfc.input_std": ",".join(f"{v:.6g}" for v in std)})
        onnx.save(m, tmp)
        os.replace(tmp, path)
    finally:
        model.train(was_training)
        if os.path.exists(tmp):
            os.remove(tmp)
    return m
