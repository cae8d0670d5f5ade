"""Export a PyTorch model to ONNX with BatchNormalization nodes kept.

`torch.onnx.export` folds BN into Conv in eval mode by default, which throws away the running
statistics that data-free calibration and compensation need. This helper uses the TorchScript
exporter with `training=TrainingMode.PRESERVE` on a model in eval mode (BN exported in inference
form) and records the input normalisation in the model metadata (`dfc.input_mean/std`).
"""

from __future__ import annotations

import warnings

import onnx
import torch


def export_keep_bn(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: str,
    opset: int = 17,
    input_name: str = "input",
    output_name: str = "logits",
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> onnx.ModelProto:
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            path,
            dynamo=False,
            opset_version=opset,
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=False,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "N"}, output_name: {0: "N"}},
        )
    m = onnx.load(path)
    if mean is not None and std is not None:
        onnx.helper.set_model_props(
            m,
            {
                "dfc.input_mean": ",".join(f"{v:.6g}" for v in mean),
                "dfc.input_std": ",".join(f"{v:.6g}" for v in std),
            },
        )
        onnx.save(m, path)
    return m
