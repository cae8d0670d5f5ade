"""Benchmark models derived from the shared ones: BN-folded exports, as users hand them in.

- `resnet20_folded`, `resnet56_folded`: the shared checkpoints exported with `torch.onnx.export`'s defaults (eval
  mode, the default exporter, dynamic batch): every BatchNorm folded into its Conv, the statistics gone.
- `efficientnet_lite0_folded`: the shared ONNX file through dfc's own `cleanup` + `fold-bn`, written without the BN
  statistics dfc keeps in its metadata (no exporter folds Lite0's TF-style graph the way torch does).

Built once into a folder (the benchmark's `--out`/derived) and reused.
"""

from __future__ import annotations

from pathlib import Path

from dfc.errors import DfcError

CHECKPOINTS = {"resnet20_folded": ("models/resnet20_cifar10.th", 20), "resnet56_folded": ("models/resnet56_cifar10.th", 56)}
FOLDED_BY_DFC = {"efficientnet_lite0_folded": "models/efficientnet_lite0_imagenet.onnx"}
NAMES = (*CHECKPOINTS, *FOLDED_BY_DFC)


def torch_default_export(checkpoint: str | Path, depth: int, path: Path) -> None:
    """The checkpoint's CifarResNet through `torch.onnx.export` as a user calls it (names and a dynamic batch)."""
    import warnings

    import torch

    from dfc.models.cifar_resnet import load_checkpoint

    model = load_checkpoint(str(checkpoint), depth)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
        except ImportError as e:  # torch's default exporter needs onnxscript
            raise DfcError(f"the BN-folded export needs onnxscript: pip install -e '.[bench]' ({e})") from e


def fold_without_statistics(source: str | Path, path: Path) -> None:
    """`cleanup` + `fold-bn` of dfc, the BN statistics dropped from the written model."""
    from dfc.graph.bn_stats import METADATA_KEY
    from dfc.graph.modelio import load_model, save_model_atomic
    from dfc.pipeline import PassManager, context_from_model

    model = load_model(source)
    ctx = context_from_model(model)
    folded = PassManager(["cleanup", "fold-bn"]).run(model, ctx)
    keep = [p for p in folded.metadata_props if p.key != METADATA_KEY]
    del folded.metadata_props[:]
    folded.metadata_props.extend(keep)
    save_model_atomic(folded, path)


def source_of(name: str) -> str:
    """The shared file (relative to ../shared) a derived model is built from."""
    return CHECKPOINTS[name][0] if name in CHECKPOINTS else FOLDED_BY_DFC[name]


def build(name: str, shared: Path, folder: Path) -> Path:
    """The derived model `name`, built into `folder` unless it is there already."""
    path = Path(folder) / f"{name}.onnx"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if name in FOLDED_BY_DFC:
        fold_without_statistics(Path(shared) / FOLDED_BY_DFC[name], path)
        return path
    import tempfile

    from dfc.graph.modelio import load_model, save_model_atomic

    rel, depth = CHECKPOINTS[name]
    with tempfile.TemporaryDirectory() as tmp:  # the exporter may write its weights beside the file
        torch_default_export(Path(shared) / rel, depth, Path(tmp) / "model.onnx")
        save_model_atomic(load_model(Path(tmp) / "model.onnx"), path)  # one self-contained file, written whole
    return path
