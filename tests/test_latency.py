"""Fair timing: every model leads a round equally often, and a ratio's noise is measured."""

import numpy as np

from dfc.measure import latency, runtime


class _Session:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def get_inputs(self):
        return [type("I", (), {"name": "x"})()]

    def run(self, _outputs, _feed):
        self.log.append(self.name)


def test_rounds_rotate_so_no_model_always_runs_first(monkeypatch):
    log: list = []
    monkeypatch.setattr(runtime, "make_session", lambda m, threads, spinning: _Session(m, log))
    monkeypatch.setattr(runtime, "fixed_batch", lambda s: None)
    latency.median_latencies({"a": "a", "b": "b", "c": "c"}, np.zeros((2, 1), np.float32), rounds=6, warmup=0)
    firsts = [log[3 * r] for r in range(6)]
    assert sorted(firsts) == ["a", "a", "b", "b", "c", "c"]
    assert all(sorted(log[3 * r:3 * r + 3]) == ["a", "b", "c"] for r in range(6))


def test_ratio_margin_is_zero_for_steady_ratios_and_grows_with_noise():
    ref = [1.0] * 10
    assert latency.ratio_margin([0.5] * 10, ref) == 0.0
    noisy = latency.ratio_margin([0.4, 0.6] * 5, ref)
    assert abs(noisy - 1.2533 * 0.1 / np.sqrt(10)) < 1e-12
    assert latency.ratio_margin([], []) == 0.0


def test_fastest_ratio_ignores_interference_and_reports_the_spread_between_blocks():
    """Interference only adds time: a burst that slows some rounds moves the median ratio, not the ratio of the
    fastest runs; the margin comes from blocks of consecutive rounds."""
    ref = [1.0] * 20
    burst = [0.3] * 10 + [0.45] * 10  # the pruned model's later rounds disturbed (a second process woke up)
    ratio, margin = latency.fastest_ratio(burst, ref)
    assert ratio == 0.3 and margin > 0.0
    steady, zero = latency.fastest_ratio([0.3] * 20, ref)
    assert steady == 0.3 and zero == 0.0
    assert latency.fastest_ratio([0.3] * 4, [1.0] * 4)[1] == 0.0  # too few rounds for blocks


def test_a_timing_while_other_processes_hold_the_cores_is_taken_again(monkeypatch):
    """The target search's check (TargetMeter.measured_ratio): a timing with another process busy is retried after a
    pause and the least disturbed one counts; the cores held are reported."""
    from dfc.prune import target_meter

    calls = []

    def fake_median_latencies(models, x, threads=2, rounds=20, samples=None, load=None, **_):
        busy = [1.0, 0.05][len(calls)] if len(calls) < 2 else 0.0
        calls.append(busy)
        ratio = 0.8 if busy > 0.5 else 0.5  # a busy core distorts the small model's time
        samples.update({"original": [1.0] * rounds, "pruned": [ratio] * rounds})
        load["other_cores"] = busy
        return {"original": 1.0, "pruned": ratio}, len(x)

    monkeypatch.setattr(latency, "median_latencies", fake_median_latencies)
    monkeypatch.setattr(target_meter, "RETRY_WAITS_S", (0.0, 0.0, None))
    meter = object.__new__(target_meter.TargetMeter)
    meter.kind, meter.original, meter.x, meter.threads, meter.rounds = "latency", None, [0.0], 2, 20
    meter.variant, meter.timed_original = (lambda graph: None), None
    assert meter.measured_ratio(None) == 0.5 and calls == [1.0, 0.05] and meter.busy == 0.05
    assert latency.other_cores((10.0, 1.0, 0.0), (12.0, 1.5, 1.0)) == 1.5  # 2 s busy, 0.5 s ours, over 1 s
    assert latency.other_cores(None, (1.0, 1.0, 1.0)) is None



def test_a_size_target_sizes_layers_the_quantize_pass_leaves_float_at_32_bits():
    from onnx import helper

    from dfc.prune.target_meter import bits_as_written

    nodes = [helper.make_node("DequantizeLinear", ["wq", "s"], ["w0"], name="dq"),
             helper.make_node("Conv", ["x", "w0"], ["y0"], name="int8_conv"),
             helper.make_node("Conv", ["y0", "w1"], ["y1"], name="float_conv")]
    model = helper.make_model(helper.make_graph(nodes, "g", [], []))
    assert bits_as_written(model, {"int8_conv": 8, "float_conv": 8, "absent": 4}) == {
        "int8_conv": 8, "float_conv": 32, "absent": 4}


def test_sessions_are_created_afresh_for_each_group_and_the_slowest_group_counts(monkeypatch):
    made: list = []
    log: list = []

    def make(m, threads, spinning):
        made.append(m)
        return _Session(m, log)

    monkeypatch.setattr(runtime, "make_session", make)
    monkeypatch.setattr(runtime, "fixed_batch", lambda s: None)
    samples: dict = {}
    latency.median_latencies({"a": "a", "b": "b"}, np.zeros((2, 1), np.float32), rounds=8, warmup=2, sessions=4,
                             samples=samples)
    assert made == ["a", "b"] * 4  # one pair per group of 2 rounds
    assert len(samples["a"]) == 8 and log.count("a") == 2 + 3 * 1 + 8  # warm-up 2 runs, then 1 per fresh pair
    ref = [1.0] * 8
    regimes = [0.40, 0.40, 0.42, 0.42, 0.40, 0.40, 0.42, 0.42]  # a file whose sessions run in two speeds
    ratio, margin = latency.fastest_ratio(regimes, ref, 4, sessions=True)
    assert ratio == 0.42 and margin > 0
    assert latency.fastest_ratio(regimes, ref, 4)[0] == 0.40  # across sessions, the minimum is the fast regime's
