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
timed on freshly created sessions, and `latency_ratio` averages over the groups, their spread its margin.
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
    seconds: float = 0.0,
) -> tuple[dict[str, float], int]:
    """(name -> median seconds of one `session.run` on batch `x`, batch size used), alternating
    between models; `samples` (a dict) receives every round's seconds per model, `load` the cores other processes
    kept busy meanwhile (`other_cores`; None where the OS does not say). `sessions` > 1: the rounds in that many
    consecutive groups (`np.array_split`), each on freshly created sessions (module doc). `seconds` > 0: at least
    as many rounds as fill that time at the warm-up's pace (at most MAX_ROUNDS; `timed_rounds`), the groups then
    `session_groups` of them."""
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

    live, feeds, x = fresh(x, warmup)
    if seconds > 0:
        per_round = 0.0
        for k, s in live.items():
            t0 = time.perf_counter()
            s.run(None, feeds[k])
            per_round += time.perf_counter() - t0
        rounds = timed_rounds(rounds, per_round, seconds)
        sessions = session_groups(rounds) if sessions > 1 else 1
    groups = {int(g[0]) for g in np.array_split(np.arange(rounds), max(1, min(sessions, rounds))) if len(g)} - {0}
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


# a latency target's timing lasts at least this long (`median_latencies(..., seconds=)`): the machine's noise is
# correlated over seconds, so 20 rounds of a small model say little (ResNet-20 W8A8 at 0.28x, 20 rounds in 1 s: sd
# 0.035 over 10 timings on a shared Intel Xeon; 80 rounds in 4 s: 0.016; ResNet-56, 20 rounds in 3.6 s: 0.009)
TIMING_SECONDS = 4.0
MAX_ROUNDS = 200


def timed_rounds(rounds: int, per_round: float, seconds: float) -> int:
    """The rounds of a timing: `rounds`, or as many more as fill `seconds` at `per_round` seconds a round (all
    models once), at most MAX_ROUNDS."""
    need = int(np.ceil(seconds / per_round)) if per_round > 0 else rounds
    return int(min(max(rounds, need), max(rounds, MAX_ROUNDS)))


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


# the two estimates `latency_ratio` chooses between (the report names the one used)
FASTEST, PAIRED = "fastest runs", "paired medians"


def latency_ratio(times: list[float], reference: list[float], groups: int = 4) -> tuple[float, float, str]:
    """(ratio, margin, estimate) of a model timed against a reference in alternating rounds, split into `groups`
    consecutive groups (fresh sessions each where `median_latencies(..., sessions=groups)` timed them). Two noises
    move a timing, and each estimate is immune to one:
    - another process on the cores only adds time, more to the smaller model on 2 cores: per group the ratio of
      the fastest runs, min(t)/min(r) (ResNet-56 0.6× pruned, one core kept busy, AMD EPYC: 0.559 ± 0.016 by minima,
      0.625 ± 0.083 by medians over 8 timings);
    - the machine's own speed drifts over seconds (a shared host: ResNet-56 ran 88-166 ms within 20 rounds on an
      Intel Xeon with nothing else running) and scales both models of a round alike: per group the median of the
      paired ratios t_i/r_i, where the minima catch the fastest moment of each model apart (12 timings of a 0.5×
      pruned ResNet-56: sd 0.009 paired, 0.014 by minima, 0.036 by the slowest group's minima).
    Each estimate is the mean over the groups (a session's own speed is a draw: EfficientNet-Lite0 W8A8 ran 0.394×
    or 0.420× by session), its margin the standard error between them; the estimate with the smaller margin is
    used. Fewer than 2 rounds a group: the fastest runs overall, margin 0."""
    t, r = np.asarray(times, np.float64), np.asarray(reference, np.float64)
    if not len(t) or len(t) != len(r):
        return float("nan"), 0.0, FASTEST
    if len(t) < 2 * groups or groups < 2:
        return float(t.min() / r.min()), 0.0, FASTEST
    parts = list(zip(np.array_split(t, groups), np.array_split(r, groups)))
    by = {FASTEST: [tg.min() / rg.min() for tg, rg in parts], PAIRED: [np.median(tg / rg) for tg, rg in parts]}
    est = {k: (float(np.mean(v)), float(np.std(v, ddof=1) / np.sqrt(groups))) for k, v in by.items()}
    how = min(est, key=lambda k: est[k][1])
    return est[how][0], est[how][1], how


def latency_ratios(medians: dict[str, float], reference: str) -> dict[str, float]:
    ref = medians[reference]
    return {k: v / ref for k, v in medians.items()}


def add_timing_arguments(parser) -> None:
    """The benchmark tools' shared options: --batch, --threads, --rounds, --json."""
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", help="also write the results here")
