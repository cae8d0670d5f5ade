"""ORT latency as a ratio against a reference, measured fairly on a noisy machine.

All models get sessions with the same thread settings, then run in alternation, each round starting at the next
model (A, B, C, then B, C, A, then C, A, B, ...), so that drifts in machine load and whatever happens between rounds
(a progress-bar refresh, another process waking up) hit every model alike; each model's latency is the median of its
runs. (With a fixed order the first model paid for the gap between rounds: PP-OCR's float graph, timed first, lost
to an int8 candidate that measures 1.1-1.4× slower in 3 of 12 test runs on a busy machine; rotated, 0 of 8.) The sessions do not spin-wait: with spinning (ORT's default) the worker threads of the
session that just ran keep spinning while the next one runs and take its cores, which on a 2-core
machine inflated every time by 30-70 ms on ResNet-56 and pulled ratios towards 1 (0.5 all pruned:
0.63-0.67 alternating with spinning, 0.53-0.55 without, 0.49-0.54 timing each model alone).

A session's speed is itself a draw: the same EfficientNet-Lite0 W8A8 file ran at 126-127 ms in some fresh sessions and
134-136 ms in others (6 session pairs in one process, each steady within ±1 %; the float original 317-319 ms in all),
so one session's ratio (0.394 or 0.420) is not the file's. With `sessions` > 1 the rounds are split into groups, each
timed on freshly created sessions, and `fastest_ratio(..., sessions=True)` judges by the slowest group: a user's
session may land in either regime.
"""

from __future__ import annotations

import os
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
    load: dict | None = None,
    sessions: int = 1,
) -> tuple[dict[str, float], int]:
    """(name -> median seconds of one `session.run` on batch `x`, batch size used), alternating
    between models; `samples` (a dict) receives every round's seconds per model, `load` the cores other processes
    kept busy meanwhile (`other_cores`; None where the OS does not say). `sessions` > 1: the rounds in that many
    consecutive groups (`np.array_split`), each on freshly created sessions (module doc)."""
    from dfc.progress import progress_bar
    from dfc.measure.runtime import fixed_batch, make_session

    def fresh(x, runs):
        made = {k: make_session(m, threads=threads, spinning=False) for k, m in models.items()}
        fixed = {fixed_batch(s) for s in made.values()} - {None}
        if fixed:  # a model with a fixed batch size is timed at that batch size
            x = x[: min(fixed)]
        feeds = {k: {s.get_inputs()[0].name: x} for k, s in made.items()}
        for _ in range(runs):
            for k, s in made.items():
                s.run(None, feeds[k])
        return made, feeds, x

    groups = {int(g[0]) for g in np.array_split(np.arange(rounds), max(1, min(sessions, rounds))) if len(g)} - {0}
    live, feeds, x = fresh(x, warmup)
    times: dict[str, list[float]] = {k: [] for k in models}
    names = list(models)
    before = _cpu_clock()
    for r in progress_bar(range(rounds), desc=progress, total=rounds):
        if r in groups:
            live, feeds, x = fresh(x, min(warmup, 1))
        for k in names[r % len(names):] + names[:r % len(names)]:  # each round starts at the next model
            t0 = time.perf_counter()
            live[k].run(None, feeds[k])
            times[k].append(time.perf_counter() - t0)
    if samples is not None:
        samples.update(times)
    if load is not None:
        load["other_cores"] = other_cores(before, _cpu_clock())
    return {k: float(np.median(v)) for k, v in times.items()}, int(len(x))


# fresh sessions per timing of a latency target (the search's rounds and the report's check; module doc), each
# timing at least ROUNDS_PER_SESSION rounds: the slowest of groups of 2-3 rounds read ResNet-20 0.321 where 6
# separate sessions of 15 rounds read 0.279-0.293
SESSIONS, ROUNDS_PER_SESSION = 4, 5


def session_groups(rounds: int) -> int:
    """How many fresh-session groups a timing of `rounds` rounds is split into."""
    return max(1, min(SESSIONS, rounds // ROUNDS_PER_SESSION))

# other processes holding more than this many cores during a timing make it uncertain (2 cores, one kept busy:
# ResNet-56 pruned to 7 branches measured 0.78x where it runs at 0.55x)
BUSY_CORES = 0.25


def _cpu_clock() -> tuple[float, float, float] | None:
    """(CPU seconds busy on the whole machine, CPU seconds of this process, wall seconds); None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    own = os.times()
    return (sum(v) - v[3] - v[4]) / hz, own.user + own.system, time.perf_counter()


def other_cores(before, after) -> float | None:
    """The cores that other processes kept busy between two `_cpu_clock` readings: machine busy time less this
    process's, over the wall time (a timing on a machine where this is well above 0 measures the scheduler)."""
    if before is None or after is None or after[2] <= before[2]:
        return None
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / (after[2] - before[2]))


def ratio_margin(times: list[float], reference: list[float]) -> float:
    """The standard error of the median of per-round ratios times[i] / reference[i] (1.2533·σ/√n, the median's
    efficiency on a normal sample): how far a measured latency ratio can be off by the machine's noise. 0 without
    rounds."""
    if not len(times) or len(times) != len(reference):
        return 0.0
    ratios = np.asarray(times, np.float64) / np.asarray(reference, np.float64)
    return float(1.2533 * ratios.std() / np.sqrt(len(ratios)))


def fastest_ratio(times: list[float], reference: list[float], blocks: int = 4,
                  sessions: bool = False) -> tuple[float, float]:
    """(min(times) / min(reference), its margin): the ratio of the undisturbed run times, for decisions that must hold
    on a busy machine. Interference (another process on the cores, a neighbour's burst) only ever adds time, and on
    2 cores it adds more to the smaller model: with a second process keeping one core busy, ResNet-56 0.6× pruned
    measured 0.625 ± 0.083 by medians and 0.559 ± 0.016 by minima over 8 runs of 30 rounds (quiet: 0.563 / 0.558).
    The margin is the standard error over `blocks` runs of consecutive rounds, each block's own ratio of minima (the
    noise is correlated over seconds, so the rounds' own scatter understates it); 0 with fewer than 2 rounds a block.
    `sessions`: the blocks were timed on fresh sessions each (`median_latencies(..., sessions=blocks)`); the ratio is
    then the slowest block's, since a session's own speed is a draw (module doc)."""
    t, r = np.asarray(times, np.float64), np.asarray(reference, np.float64)
    if not len(t) or len(t) != len(r):
        return float("nan"), 0.0
    ratio = float(t.min() / r.min())
    if len(t) < 2 * blocks:
        return ratio, 0.0
    per = [tb.min() / rb.min() for tb, rb in zip(np.array_split(t, blocks), np.array_split(r, blocks))]
    return (float(max(per)) if sessions else ratio), float(np.std(per, ddof=1) / np.sqrt(blocks))


def latency_ratios(medians: dict[str, float], reference: str) -> dict[str, float]:
    ref = medians[reference]
    return {k: v / ref for k, v in medians.items()}


def add_timing_arguments(parser) -> None:
    """The benchmark tools' shared options: --batch, --threads, --rounds, --json."""
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", help="also write the results here")
