"""The fine-tuning step-time model (dfc.finetune.train_cost): depthwise and element-wise work counted from the graph, default
steps that shrink as the predicted step time grows, and the prediction in the report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import conv_bn_relu_cnn, rand
from test_mobile import relu6_cnn

import dfc.api as api
from dfc.finetune.train import MAX_STEPS, MIN_STEPS, FinetuneConfig, finetune
from dfc.pipeline import Context, PassManager
from dfc.synth.torch_exec import TorchGraph
from dfc.finetune.train_cost import PassCost, default_steps, pass_cost, step_seconds


def _cost(model, shape):
    folded = PassManager(["cleanup", "fold-bn"]).run(model, Context())
    return pass_cost(folded, TorchGraph(folded), torch.from_numpy(rand(shape)))


def test_depthwise_macs_and_elements_are_counted_apart():
    c = _cost(relu6_cnn(size=8), (1, 3, 8, 8))
    # the depthwise conv: 8 channels × 3×3 taps × 8×8 outputs; dense: conv1 (8·27·64) + project (6·8·64) + fc (4·6)
    assert c.depthwise_macs == 8 * 9 * 64
    assert c.dense_macs == 8 * 27 * 64 + 6 * 8 * 64 + 4 * 6
    assert c.elements >= 8 * 64 * 3  # at least the three 8-channel maps (conv, clip, dw) are written
    dense_only = PassCost(c.dense_macs + c.depthwise_macs, 0.0, c.elements)
    assert c.seconds() > dense_only.seconds()  # a depthwise multiply-add costs more than a dense one


def test_default_steps_follow_the_predicted_step_time():
    small = PassCost(1.2e8, 0.0, 1.4e6)  # about ResNet-56
    big = PassCost(small.dense_macs * 20, 3e7, small.elements * 20)
    lo, hi = MIN_STEPS["kd"], MAX_STEPS["kd"]
    n_big = default_steps("kd", big, big, 32, 60.0, lo, hi)
    n_small = default_steps("kd", small, small, 32, 60.0, lo, hi)
    assert lo <= n_big < n_small <= hi
    assert step_seconds("kd", small, small, 64) == pytest.approx(2 * step_seconds("kd", small, small, 32), rel=1e-9)
    assert n_big * step_seconds("kd", big, big, 32) <= 60.0 or n_big == lo
    assert step_seconds("blocks", big, big, 32) < step_seconds("kd", big, big, 32)  # no teacher pass per step


def test_default_steps_fit_the_budget_and_are_reported():
    model = conv_bn_relu_cnn()
    teacher = PassManager(["cleanup", "fold-bn"]).run(model, Context())
    qdq = api.optimize(model, calib="gaussian", measure=False)
    x = rand((16, 3, 8, 8), seed=1)
    _, info = finetune(qdq, teacher, x, FinetuneConfig(method="kd", batch=4, time_budget_s=1e-3, speed=1.0))
    assert info["steps"] == MIN_STEPS["kd"] and info["predicted_seconds"] > 0
    step = info["predicted_seconds"] / MIN_STEPS["kd"]
    _, info = finetune(qdq, teacher, x, FinetuneConfig(method="kd", batch=4, time_budget_s=250 * step, speed=1.0))
    assert 245 <= info["steps"] <= 250 and info["predicted_seconds"] <= 250 * step * 1.01
    _, info = finetune(qdq, teacher, x, FinetuneConfig(method="kd", steps=3))
    assert info["steps"] == 3 and info["predicted_seconds"] is None and np.isfinite(info["kl_after"])


def test_default_steps_follow_this_machines_measured_speed():
    model = conv_bn_relu_cnn()
    teacher = PassManager(["cleanup", "fold-bn"]).run(model, Context())
    qdq = api.optimize(model, calib="gaussian", measure=False)
    x = rand((16, 3, 8, 8), seed=1)
    _, ref = finetune(qdq, teacher, x, FinetuneConfig(method="kd", batch=4, time_budget_s=1e-3, speed=1.0, steps=None))
    budget = 400 * ref["predicted_seconds"] / MIN_STEPS["kd"]
    _, slow = finetune(qdq, teacher, x, FinetuneConfig(method="kd", batch=4, time_budget_s=budget, speed=2.0))
    assert slow["steps"] in (199, 200) and slow["speed"] == 2.0  # a machine twice as slow: half the steps
    assert slow["predicted_seconds"] == pytest.approx(budget, rel=0.02)
    _, measured = finetune(qdq, teacher, x, FinetuneConfig(method="kd", batch=4, time_budget_s=budget))
    expected = int(np.clip(400 / measured["speed"], MIN_STEPS["kd"], MAX_STEPS["kd"]))
    assert measured["speed"] > 0 and abs(measured["planned_steps"] - expected) <= 1


def test_step_clock_replans_the_steps_left_from_the_measured_rate(monkeypatch):
    from dfc.finetune import step_clock

    now = [100.0]
    monkeypatch.setattr(step_clock.time, "perf_counter", lambda: now[0])
    clock = step_clock.StepClock(100.0, lo=10, hi=1000)  # deadline at 200
    assert clock.steps(50) == 50  # nothing timed yet: the plan stands
    clock.mark()
    now[0] += 20.0
    clock.add(10)  # 2 s a unit; 80 s left
    assert clock.steps(50, done=10) == 10 + 40
    assert clock.steps(50, done=10, units_per_step=4.0) == 10 + 10  # steps four times as costly: a quarter as many
    now[0] = 199.0
    assert clock.steps(50, done=10) == 10  # out of time: never fewer than done (nor lo)
    fixed = step_clock.StepClock(None, lo=10, hi=1000)
    fixed.mark()
    fixed.add(5)
    assert fixed.steps(50, done=5) == 50  # steps set by the user are never re-planned


@pytest.mark.parametrize("method", ["kd", "blocks"])
def test_a_budgeted_run_keeps_its_budget_when_the_prediction_under_reads(monkeypatch, method):
    """The probe's factor made 10× too small: the plan is 10× too long; the clock brings the run back to its budget."""
    from dfc.finetune import train

    model = conv_bn_relu_cnn()
    teacher = PassManager(["cleanup", "fold-bn"]).run(model, Context())
    qdq = api.optimize(model, calib="gaussian", measure=False)
    x = rand((16, 3, 8, 8), seed=1)
    monkeypatch.setattr(train, "measured_speed", lambda *a, **k: 1.0)
    _, ref = finetune(qdq, teacher, x, FinetuneConfig(method=method, batch=4, time_budget_s=1e-3))
    per_step = ref["seconds"] / ref["steps"]  # this machine's step, measured
    budget = 300 * per_step
    monkeypatch.setattr(train, "measured_speed", lambda *a, **k: 0.1 * per_step * ref["steps"] / ref["predicted_seconds"])
    _, info = finetune(qdq, teacher, x, FinetuneConfig(method=method, batch=4, time_budget_s=budget))
    assert info["planned_steps"] >= 2 * info["steps"]  # planned 10× too many (or the cap), re-planned to what fits
    assert info["seconds"] < 2.0 * budget
    from dfc.report import _inverter_lines

    line = next(t for t in _inverter_lines({"finetune": info}) if t.startswith("finetune:"))
    assert f"re-planned from {info['planned_steps']} steps by the measured step time" in line
    if method == "blocks":  # the blocks' own timed steps set the first count; later ones move at most MAX_MOVE
        from dfc.finetune.block_reconstruction import MAX_MOVE

        counts = [b["steps"] for b in info["block_trace"]]
        assert len(counts) > 1 and all(a / MAX_MOVE - 1 <= b <= a * MAX_MOVE + 1 for a, b in zip(counts, counts[1:]))
