"""A time-budgeted fine-tuning phase that ends on its budget: the steps still to run are re-planned from the phase's
own measured step time.

The graph's cost model times the probe's factor (`dfc.finetune.train_cost.measured_speed`) predicts the passes, not
a whole step: augmentation, MixUp, the block losses, Adam and AdaRound's regulariser come on top, and a busy core
slows every step after the probe. On the 2-core machines of the 2026-12-07 stops a kd budget of 480 s ran 520-542 s
and a blocks budget of 300 s ran 509 s. With a clock, after the first timed steps

    steps = done + (deadline − now) / (seconds per unit so far · units per remaining step)

(a kd step is one unit; a blocks step of block k costs the seconds its step was timed at before reconstruction, so
one measured rate carries over to the blocks still to come). Re-planning early keeps the warm-up and cosine schedules smooth; blocks re-plan before
each block (AdaRound's annealing follows the block's count), gradually (`block_reconstruction.MAX_MOVE`).
"""

from __future__ import annotations

import time

import numpy as np


class StepClock:
    """Seconds per unit of work measured since `mark`, and the steps that fill the time left before `deadline`."""

    def __init__(self, seconds: float | None, lo: int, hi: int):
        """`seconds`: the phase's budget from now (None: fixed steps, never re-planned); steps stay in [lo, hi]."""
        self.deadline = None if seconds is None else time.perf_counter() + max(seconds, 0.0)
        self.lo, self.hi = lo, hi
        self.t0: float | None = None
        self.units = 0.0
        self.prior_rate: float | None = None  # seconds per unit assumed until some are timed (None: keep the plan)

    def mark(self) -> None:
        """Start timing here (after a warm-up step: the first one pays for allocation and caches)."""
        self.t0, self.units = time.perf_counter(), 0.0

    def add(self, units: float = 1.0) -> None:
        self.units += units

    def steps(self, planned: int, done: int = 0, units_per_step: float = 1.0) -> int:
        """The re-planned count of a phase with `done` steps behind it whose remaining steps each cost `units_per_step`
        (blocks: n steps per block, one step of every block still to come); `planned` where the phase is fixed or
        nothing has been timed yet and no `prior_rate` is set."""
        timed = self.t0 is not None and self.units > 0
        if self.deadline is None or units_per_step <= 0 or not (timed or self.prior_rate):
            return planned
        now = time.perf_counter()
        rate = (now - self.t0) / self.units if timed else self.prior_rate
        return int(np.clip(done + (self.deadline - now) / (rate * units_per_step), max(self.lo, done), self.hi))


def replan_points(planned: int) -> set[int]:
    """After how many steps the count is re-planned: at 3 %, 10 % and 30 % of the plan (at least 4 steps in)."""
    return {max(4, int(f * planned)) for f in (0.03, 0.1, 0.3)}
