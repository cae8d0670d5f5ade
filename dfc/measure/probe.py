"""Synthetic probe inputs for a pass that checks its own result against the graph it started from.

The probe is the run's BNS calibration samples when it has them (inputs whose activations follow the
model's BN statistics), else Gaussian noise in the model's input space (`dfc.synth.sample_sources`): data-free
either way. The error of a candidate graph against the reference outputs on the probe (`error`): the mean KL
divergence of the class distributions for a classifier's [N, classes] output, the mean squared difference for any
other output.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs



from dfc.synth import sample_sources
from dfc.graph import ir
from dfc.graph.bn_stats import BNStatsStore
from dfc.errors import DfcError
from dfc.pipeline import Context

_quiet = logging.getLogger("dfc.trial")
_quiet.propagate = False
_quiet.addHandler(logging.NullHandler())


def inputs(graph: gs.Graph, ctx: Context, n: int, salt: int, purpose: str) -> np.ndarray | None:
    """Up to `n` probe inputs for `graph`, or None (with a note saying `purpose` is skipped) when its input cannot
    be generated."""
    if ctx.calibration is not None:
        return ctx.calibration[:n]
    try:
        _, shape = sample_sources.input_spec(graph)
    except DfcError as e:
        ctx.note(f"{purpose} skipped: no synthetic probe inputs for this model ({e})")
        return None
    return sample_sources.gaussian_samples(shape, n, ctx.rng(salt=salt), ctx.sample_range())


def source(ctx: Context) -> str:
    """What the probe inputs of `inputs` are."""
    if ctx.calibration is None:
        return "gaussian"
    return ctx.calibration_source or "synthetic"


def outputs(graph: gs.Graph | onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    """All outputs of the graph (or model) on `x` in ONNX Runtime."""
    from dfc.measure.runtime import make_session, run_batched

    model = graph if isinstance(graph, onnx.ModelProto) else ir.export_model(graph)
    return run_batched(make_session(model), x)


def error(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """How far `candidate`'s outputs are from `reference`'s, summed over outputs: mean KL(ref ‖ candidate) of the
    class distributions for an [N, classes] output (the rows themselves where they already are probabilities, else
    their softmax), mean squared difference for any other. On logits the squared difference weighs every class alike,
    the KL the classes the reference believes in: EfficientNet-Lite0, 20 % of the inner channels pruned, on 64 BNS
    samples: MSE 1.13 with UDFC's mean compensation vs 1.47 plain, KL 1.31 vs 1.21, top-1 48.8 vs 62.6."""
    return float(sum(_kl(r, c) if _classes(r) else _mse(r, c) for r, c in zip(reference, candidate)))


def metric(reference: list[np.ndarray]) -> str:
    """What `error` measures on these outputs: 'KL', 'MSE' or 'KL + MSE'."""
    kinds = sorted({"KL" if _classes(r) else "MSE" for r in reference})
    return " + ".join(kinds) or "MSE"


def _classes(y: np.ndarray) -> bool:
    from dfc.measure.validation import is_classifier_output

    return is_classifier_output(np.asarray(y))


def _mse(r: np.ndarray, c: np.ndarray) -> float:
    d = np.asarray(c, np.float64) - np.asarray(r, np.float64)
    return float(np.mean(d ** 2)) if d.size else 0.0


def _kl(r: np.ndarray, c: np.ndarray) -> float:
    from dfc.measure.validation import row_kl, softmax

    r, c = np.asarray(r, np.float64), np.asarray(c, np.float64)
    if (r >= 0).all() and np.allclose(r.sum(1), 1.0, atol=1e-3):  # already probabilities (a Softmax output)
        p, q = r / r.sum(1, keepdims=True), np.clip(c, 0, None) / np.clip(c, 0, None).sum(1, keepdims=True).clip(1e-12)
    else:
        p, q = softmax(r), softmax(c)
    return float(np.mean(row_kl(p, q)))


def trial_context(ctx: Context) -> Context:
    """A copy of `ctx` for a candidate run: own BN statistics, notes and results, a silent logger."""
    return dataclasses.replace(ctx, bn_stats=BNStatsStore(ctx.bn_stats), notes=[], results={}, logger=_quiet)


def adopt(ctx: Context, trial: Context) -> None:
    """Take over the BN statistics and notes of the kept candidate."""
    ctx.bn_stats.clear()
    ctx.bn_stats.update(trial.bn_stats)
    for text in trial.notes:
        ctx.note(text)
