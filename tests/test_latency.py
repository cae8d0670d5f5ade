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


def test_latency_ratio_takes_the_fastest_runs_under_interference_from_another_process():
    """Another process adds time to single runs of either model: the ratio of each group's fastest runs stays at the
    true ratio, the paired ratios scatter, so the fastest runs are used."""
    rng = np.random.default_rng(0)
    ref = 1.0 + (rng.random(40) < 0.3) * rng.uniform(0.2, 0.8, 40)
    cand = 0.5 + (rng.random(40) < 0.3) * rng.uniform(0.2, 0.8, 40)
    cand[::10], ref[5::10] = 0.5, 1.0  # every group has an undisturbed run of each
    ratio, margin, how = latency.latency_ratio(list(cand), list(ref), 4)
    assert how == latency.FASTEST and abs(ratio - 0.5) < 1e-12 and margin == 0.0
    assert latency.latency_ratio([0.3] * 4, [1.0] * 4, 4)[1:] == (0.0, latency.FASTEST)  # too few rounds for groups


def test_latency_ratio_pairs_the_rounds_when_the_machine_speed_drifts():
    """The machine's speed drifts over rounds and scales both models of a round alike: the paired ratios are the
    true ratio, where each model's fastest run falls at a different moment of the drift."""
    speed = 1.0 + 0.3 * np.sin(np.arange(40) / 3.0)
    ref, cand = list(speed), list(0.5 * speed * np.where(np.arange(40) % 2, 1.02, 0.98))  # ±2 % of its own noise
    ratio, margin, how = latency.latency_ratio(cand, ref, 4)
    assert how == latency.PAIRED and abs(ratio - 0.5) < 0.002 and margin < 0.002
    fastest = np.mean([min(c) / min(r) for c, r in zip(np.array_split(cand, 4), np.array_split(ref, 4))])
    assert abs(fastest - 0.5) > abs(ratio - 0.5)


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


def test_sessions_are_created_afresh_for_each_group_and_their_spread_is_the_margin(monkeypatch):
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
    ratio, margin, _ = latency.latency_ratio(regimes, ref, 4)
    assert abs(ratio - 0.41) < 1e-12 and margin > 0.005  # the groups' mean, their spread its margin


def test_a_timing_lasts_long_enough_for_a_small_model(monkeypatch):
    """`seconds`: the rounds grow until they fill that time at the warm-up's pace (a small model's 20 rounds in 1 s
    read its ratio ±12 %), never below the rounds asked, at most MAX_ROUNDS; the fresh-session groups follow."""
    assert latency.timed_rounds(20, 0.05, 4.0) == 80
    assert latency.timed_rounds(20, 0.5, 4.0) == 20
    assert latency.timed_rounds(20, 1e-5, 4.0) == latency.MAX_ROUNDS
    log: list = []
    monkeypatch.setattr(runtime, "make_session", lambda m, threads, spinning: _Session(m, log))
    monkeypatch.setattr(runtime, "fixed_batch", lambda s: None)
    clock = iter(np.arange(0.0, 1e4, 0.025))  # every perf_counter call 25 ms later: a round of two models 50 ms
    monkeypatch.setattr(latency.time, "perf_counter", lambda: next(clock))
    samples: dict = {}
    latency.median_latencies({"a": "a", "b": "b"}, np.zeros((2, 1), np.float32), rounds=10, sessions=2,
                             samples=samples, seconds=2.0)
    assert len(samples["a"]) == 40  # 2 s at 50 ms a round
