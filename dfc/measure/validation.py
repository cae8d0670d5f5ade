"""Validation in ONNX Runtime: accuracy on labelled data, fidelity to a reference model.

- top-1: mean(argmax logits == label);
- agreement: mean(argmax logits == argmax reference logits);
- mean KL: mean over samples of KL(softmax(reference) ‖ softmax(model));
- per output (any shape: a detector's boxes, a dense map): relative L2 error ‖y − y_ref‖ / ‖y_ref‖ and
  SQNR = 10·log10(‖y_ref‖² / ‖y − y_ref‖²) dB over the whole tensor; agreement and mean KL where the output is
  [N, classes].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from dfc.errors import DfcError


def parse_floats(text: str | None, option: str) -> np.ndarray | None:
    """'0.485,0.456,0.406' -> float32 array; clear error naming the option otherwise."""
    if text is None:
        return None
    try:
        vals = [float(v) for v in str(text).split(",") if v.strip() != ""]
    except ValueError as e:
        raise DfcError(f"{option}: expected comma-separated numbers, got {text!r}") from e
    if not vals:
        raise DfcError(f"{option}: expected comma-separated numbers, got {text!r}")
    return np.asarray(vals, np.float32)


def parse_ints(text: str | None, option: str) -> tuple[int, ...] | None:
    """'1,3,48,192' -> (1, 3, 48, 192); clear error naming the option otherwise."""
    if text is None:
        return None
    try:
        vals = tuple(int(v) for v in str(text).split(",") if v.strip() != "")
    except ValueError as e:
        raise DfcError(f"{option}: expected comma-separated integers, got {text!r}") from e
    if not vals or any(v < 1 for v in vals):
        raise DfcError(f"{option}: expected comma-separated integers >= 1, got {text!r}")
    return vals


def check_normalisation(mean: np.ndarray | None, std: np.ndarray | None, channels: int | None) -> None:
    if (mean is None) != (std is None):
        raise DfcError("--mean/--input-mean and --std/--input-std must be given together")
    if mean is None:
        return
    if len(mean) != len(std):
        raise DfcError(f"mean has {len(mean)} values but std has {len(std)}")
    if np.any(std <= 0):
        raise DfcError(f"std must be positive, got {std.tolist()}")
    if channels is not None and len(mean) not in (1, channels):
        raise DfcError(f"mean/std have {len(mean)} values but the model input has {channels} channels")


def load_eval_data(path: str | Path, need_labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """`images` uint8 [N, H, W, C] and `labels` int from an .npz file (labels None when absent and not needed)."""
    p = Path(path)
    if not p.exists():
        raise DfcError(f"{p}: no such file")
    try:
        data = np.load(p)
    except Exception as e:
        raise DfcError(f"{p}: not a readable .npz file ({e})") from e
    missing = [k for k in ("images", "labels") if k not in data.files and (k == "images" or need_labels)]
    if missing:
        raise DfcError(f"{p}: missing array(s) {', '.join(missing)} (has: {', '.join(data.files) or 'nothing'})")
    images = data["images"]
    labels = np.asarray(data["labels"]).astype(np.int64).ravel() if "labels" in data.files else None
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.dtype != np.uint8:
        raise DfcError(f"{p}: `images` must be uint8 [N, H, W, C], got {images.dtype} {list(images.shape)}")
    if labels is not None and len(images) != len(labels):
        raise DfcError(f"{p}: {len(images)} images but {len(labels)} labels")
    return images, labels


def preprocess(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """x = (uint8 / 255 − mean) / std, then NHWC -> NCHW."""
    x = (images.astype(np.float32) / 255.0 - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32)


def check_input_shape(model: onnx.ModelProto, x: np.ndarray, what: str) -> None:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    want = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    got = list(x.shape)
    if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want[1:], got[1:])):
        raise DfcError(f"{what} gives inputs of shape {['N'] + got[1:]}, the model expects {['N' if w is None else w for w in want]}")


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def row_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p ‖ q) of each row of two [N, classes] probability arrays."""
    return np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=1)


def fidelity(reference: np.ndarray, logits: np.ndarray) -> dict:
    """Agreement, mean KL(ref ‖ model) and max |Δ logit| between two logit arrays."""
    kl = row_kl(softmax(reference.astype(np.float64)), softmax(logits.astype(np.float64)))
    return {
        "agreement": float(np.mean(reference.argmax(1) == logits.argmax(1))),
        "mean_kl": float(np.mean(kl)),
        "max_abs_diff": float(np.max(np.abs(reference - logits))),
    }


def is_classifier_output(y: np.ndarray) -> bool:
    """An output of shape [N, classes] (classes > 1): one whose argmax is a prediction."""
    return y.ndim == 2 and y.shape[1] > 1


def output_fidelity(reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per output name: relative L2 error and SQNR (dB) against the reference's same output; agreement, mean KL and
    max |Δ| too for [N, classes] outputs."""
    out = {}
    for name, ref in reference.items():
        y = outputs[name].astype(np.float64)
        r = ref.astype(np.float64)
        err, norm = float(np.sum((y - r) ** 2)), float(np.sum(r ** 2))
        row = {"shape": list(ref.shape), "rel_l2": float(np.sqrt(err / norm)) if norm > 0 else float(np.sqrt(err)),
               "sqnr_db": float(10 * np.log10(norm / err)) if err > 0 and norm > 0 else float("inf")}
        if is_classifier_output(ref):
            row.update(fidelity(ref, outputs[name]))
        out[name] = row
    return out


def fidelity_lines(per_output: dict[str, dict]) -> list[str]:
    """One line per output: 'name [shape]: rel. L2 error e, SQNR s dB[, top-1 agreement a %]'."""
    lines = []
    for name, r in per_output.items():
        line = f"{name} {r['shape']}: rel. L2 error {r['rel_l2']:.4f}, SQNR {r['sqnr_db']:.1f} dB"
        if "agreement" in r:
            line += f", top-1 agreement {100 * r['agreement']:.2f} %"
        lines.append(line)
    return lines


def outputs_of(model: onnx.ModelProto | str, x: np.ndarray, progress: str | None = None) -> dict[str, np.ndarray]:
    """Every graph output of `model` on `x`, by name."""
    from dfc.measure.runtime import make_session, run_batched

    sess = make_session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, run_batched(sess, x, progress=progress)))


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(1) == labels))


def logits_of(model: onnx.ModelProto | str, x: np.ndarray, progress: str | None = None) -> np.ndarray:
    from dfc.measure.runtime import make_session, run_batched

    return run_batched(make_session(model), x, progress=progress)[0]
