"""ORT latency as a ratio against a reference, measured fairly on a noisy machine.

All models get sessions with the same thread settings, then run in alternation, each round starting at the next
model (A, B, C, then B, C, A, then C, A, B, ...), so that drifts in machine load and whatever happens between rounds
(a progress-bar refresh, another process waking up) hit every model alike; each model's latency is the median of its
runs. (With a fixed order the first model paid for the gap between rounds: PP-OCR's float graph, timed first, lost
to an int8 candidate that measures 1.1-1.4× slower in 3 of 12 test runs on a busy machine; rotated, 0 of 8.) The sessions do not spin-wait: with spinning (ORT's default) the worker threads of the
session that just ran keep spinning while the next one runs and take its cores, which on a 2-core
machine inflated every time by 30-70 ms on ResNet-56 and pulled ratios towards 1 (0.5 all pruned:
0.63-0.67 alternating with spinning, 0.53-0.55 without, 0.49-0.54 timing each model alone).
"""

from __future__ import annotations

import time

import numpy as np
import onnx


def median_latencies(
    models: dict[str, onnx.ModelProto | str],
    x: np.ndarray,
    threads: int = 2,
    rounds: int = 20,
    warmup: int = 2,
    progress: str | None = None,
    samples: dict | None = None,
) -> tuple[dict[str, float], int]:
    """(name -> median seconds of one `session.run` on batch `x`, batch size used), alternating
    between models; `samples` (a dict) receives every round's seconds per model."""
    from dfc.progress import progress_bar
    from dfc.measure.runtime import fixed_batch, make_session

    sessions = {k: make_session(m, threads=threads, spinning=False) for k, m in models.items()}
    fixed = {fixed_batch(s) for s in sessions.values()} - {None}
    if fixed:  # a model with a fixed batch size is timed at that batch size
        x = x[: min(fixed)]
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    for _ in range(warmup):
        for k, s in sessions.items():
            s.run(None, feeds[k])
    times: dict[str, list[float]] = {k: [] for k in sessions}
    names = list(sessions)
    for r in progress_bar(range(rounds), desc=progress, total=rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:  # each round starts at the next model
            t0 = time.perf_counter()
            sessions[k].run(None, feeds[k])
            times[k].append(time.perf_counter() - t0)
    if samples is not None:
        samples.update(times)
    return {k: float(np.median(v)) for k, v in times.items()}, int(len(x))


def ratio_margin(times: list[float], reference: list[float]) -> float:
    """The standard error of the median of per-round ratios times[i] / reference[i] (1.2533·σ/√n, the median's
    efficiency on a normal sample): how far a measured latency ratio can be off by the machine's noise. 0 without
    rounds."""
    if not len(times) or len(times) != len(reference):
        return 0.0
    ratios = np.asarray(times, np.float64) / np.asarray(reference, np.float64)
    return float(1.2533 * ratios.std() / np.sqrt(len(ratios)))


def latency_ratios(medians: dict[str, float], reference: str) -> dict[str, float]:
    ref = medians[reference]
    return {k: v / ref for k, v in medians.items()}


def add_timing_arguments(parser) -> None:
    """The benchmark tools' shared options: --batch, --threads, --rounds, --json."""
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", help="also write the results here")
