"""tools/w8a8_error_budget.py: its graph edits undo exactly what they say they undo."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
from conftest import DEMO, ROOT, run

from dfc.api import optimize
from dfc.measure.runtime import make_session, run_batched
from dfc.measure.validation import fidelity

_spec = importlib.util.spec_from_file_location("w8a8_error_budget", ROOT / "tools" / "w8a8_error_budget.py")
budget = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(budget)


def test_removing_every_quantizer_and_restoring_float_weights_gives_back_the_fp32_model(digits_test):
    x = digits_test[0][:128]
    fp32 = optimize(DEMO, no_quant=True)
    w8a8 = optimize(DEMO, calib="gaussian", measure=False)
    acts = {q.input[0] for q in budget.activation_quantizers(w8a8)}
    assert len(acts) > 3
    assert np.abs(run(w8a8, x) - run(fp32, x)).max() > 1e-3  # there is quantization error to undo
    back = budget.with_float_weights(budget.without_quantizers(w8a8, acts), fp32)
    onnx.checker.check_model(back)
    np.testing.assert_allclose(run(back, x), run(fp32, x), atol=1e-4)
    # one of the two alone leaves error behind
    assert np.abs(run(budget.without_quantizers(w8a8, acts), x) - run(fp32, x)).max() > 1e-4
    assert np.abs(run(budget.with_float_weights(w8a8, fp32), x) - run(fp32, x)).max() > 1e-4


def test_per_channel_activations_are_per_channel_and_stay_faithful(digits_test):
    x = digits_test[0][:128]
    fp32 = optimize(DEMO, no_quant=True)
    w8a8 = optimize(DEMO, calib="gaussian", measure=False)
    pc = budget.with_per_channel_activations(w8a8, fp32, x)
    onnx.checker.check_model(pc)
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in pc.graph.initializer}
    assert all(consts[q.input[1]].ndim == 1 for q in budget.activation_quantizers(pc))
    # ORT's optimiser would fuse them into QLinearConv, which takes per-tensor parameters only: the tool runs its
    # study rows unoptimised (the QDQ reference semantics)
    y = run_batched(make_session(pc, optimize=False), x)[0]
    assert fidelity(run(fp32, x), y)["agreement"] >= 0.95
