"""Reading, validating and atomically writing ONNX models.

Every model dfc reads goes through `load_model` (clear errors naming the file) and every model it
writes goes through `save_model_atomic` (temp file + rename: an error or Ctrl-C never leaves a
half-written output, and the input is never touched).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
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
    except (OSError, ValueError, RuntimeError, onnx.checker.ValidationError) as e:  # e.g. its external data is missing
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
    """Validity = onnx checker with strict shape inference + an ORT session that runs one probe
    sample (when every input has a fixed per-sample shape). Raises DfcError naming `what`."""
    from dfc.measure.runtime import make_session

    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise DfcError(f"{what} fails the ONNX checker: {e}") from e
    try:
        sess = make_session(model)
        feeds = _probe_feeds(sess)
        if feeds is not None:
            sess.run(None, feeds)
    except Exception as e:  # ORT raises several unrelated exception types
        raise DfcError(f"{what} is not accepted by ONNX Runtime: {e}") from e


def _probe_feeds(sess) -> dict | None:
    """One zero sample per float input, or None when a shape is not fixed past the batch axis."""
    import numpy as np

    feeds = {}
    for i in sess.get_inputs():
        dims = list(i.shape)
        if i.type != "tensor(float)" or not dims or any(not isinstance(d, int) for d in dims[1:]):
            return None
        batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else 1
        feeds[i.name] = np.zeros([batch] + dims[1:], np.float32)
    return feeds


@contextmanager
def atomic_target(path: str | os.PathLike, suffix: str = ".tmp"):
    """Yield a temp path beside `path`; on success it is fsynced and renamed onto `path` (os.replace, atomic),
    on any error or Ctrl-C it is deleted, so `path` is either untouched or complete."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise DfcError(f"{p}: output directory {parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=suffix, dir=parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the output gets the usual permissions
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> int:
    """Write `data` to `path` atomically (see `atomic_target`); returns the number of bytes."""
    with atomic_target(path) as tmp:
        Path(tmp).write_bytes(data)
    return len(data)


def save_model_atomic(model: onnx.ModelProto, path: str | os.PathLike) -> int:
    """Serialize `model` to `path` atomically; returns the number of bytes written."""
    return write_bytes_atomic(model.SerializeToString(), path)
