"""Synthetic probe inputs for a pass that checks its own result against the graph it started from.

The probe is the run's BNS calibration samples when it has them (inputs whose activations follow the
model's BN statistics), else Gaussian noise in the model's input space (`dfc.synth.sample_sources`): data-free
either way. The error of a candidate graph is the mean squared difference of all its outputs from the
reference outputs on the probe.
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


def mse(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """Mean squared difference over every element of every output."""
    diff = np.concatenate([(np.asarray(c, np.float64) - np.asarray(r, np.float64)).ravel()
                           for r, c in zip(reference, candidate)])
    return float(np.mean(diff ** 2)) if diff.size else 0.0


def trial_context(ctx: Context) -> Context:
    """A copy of `ctx` for a candidate run: own BN statistics, notes and results, a silent logger."""
    return dataclasses.replace(ctx, bn_stats=BNStatsStore(ctx.bn_stats), notes=[], results={}, logger=_quiet)


def adopt(ctx: Context, trial: Context) -> None:
    """Take over the BN statistics and notes of the kept candidate."""
    ctx.bn_stats.clear()
    ctx.bn_stats.update(trial.bn_stats)
    for text in trial.notes:
        ctx.note(text)
