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
