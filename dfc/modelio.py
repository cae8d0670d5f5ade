"""Reading, validating and atomically writing ONNX models.

Every model dfc reads goes through `load_model` (clear errors naming the file) and every model it
writes goes through `save_model_atomic` (temp file + rename: an error or Ctrl-C never leaves a
half-written output, and the input is never touched).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from dfc.errors import DfcError


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX file (external data included), with errors that name the file."""
    p = Path(path)
    if not p.exists():
        raise DfcError(f"{p}: no such file")
    if p.is_dir():
        raise DfcError(f"{p}: is a directory, expected an .onnx file")
    try:
        model = onnx.load(str(p))
    except DecodeError as e:
        raise DfcError(f"{p}: not a valid ONNX model (protobuf parse failed: {e})") from e
    except (OSError, ValueError, RuntimeError) as e:
        raise DfcError(f"{p}: could not be read as ONNX ({e})") from e
    if not model.HasField("graph") or not model.opset_import:
        raise DfcError(f"{p}: not a valid ONNX model (no graph or no opset)")
    return model


def as_model(model_or_path) -> onnx.ModelProto:
    """Accept a ModelProto or a path; a ModelProto is copied so the caller's object is never mutated."""
    if isinstance(model_or_path, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model_or_path)
        return copy
    return load_model(model_or_path)


def check_model(model: onnx.ModelProto, what: str = "model") -> None:
    """Validity = onnx checker + an ORT session that can be created (raises DfcError otherwise)."""
    from dfc.runtime import make_session

    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise DfcError(f"{what} fails the ONNX checker: {e}") from e
    try:
        make_session(model)
    except Exception as e:  # ORT raises several unrelated exception types
        raise DfcError(f"{what} is not accepted by ONNX Runtime: {e}") from e


def save_model_atomic(model: onnx.ModelProto, path: str | os.PathLike) -> int:
    """Write `model` to `path` via a temp file in the same directory and os.replace.

    Returns the number of bytes written.
    """
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise DfcError(f"{p}: output directory {parent} does not exist")
    data = model.SerializeToString()
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return len(data)
