"""Landing a `--target-*` ratio: when a measured result counts as landed, and where the next round aims.

A target t is landed when the measured ratio y lies in the band [BAND·t, t], judged with the measurement's own
uncertainty m (latency: the standard error of the median ratio; size and MACs: 0): y + m ≤ t (a timing that meets
the goal only by its noise misses it as often when the output is measured again) and y + m ≥ BAND·t (below the band
even at the top of its uncertainty, the result removed more than asked for, and that costs accuracy for nothing).

The search steers a prediction (the cost model's ratio) by an *aim*; each round prunes until the prediction is at
or below the aim and measures. A result above the band ("slow") tightens the aim by the miss, one below it
("fast") loosens it; the aims tried so far bracket the answer (the tightest slow aim above, the loosest fast aim
below). Once both sides are known, the next aim interpolates between their (prediction, measurement) points
(false position: a cost model that is off by an offset as well as a factor, ResNet-20 0.3 on an Intel Xeon, 5
branches predicted 0.277 and measured 0.345, 7 predicted 0.157 and measured 0.204, sent the one-point ratio
correction back to 5 branches, the interpolation to 6), kept inside the bracket's inner 80 % (a wild measurement
on one side does not pin the search to the other); a correction that leaves the bracket is replaced by its
midpoint (bisection), so the search converges in both directions instead of only ever removing more.

A landed result far below where the band is safest is *centred* once (`centring_aim`): a timing settles best in the
band's middle (a later measurement of the same file moves by a few per cent either way, more than one run's standard
error: ResNet-56 0.271× in the search, 0.259× later, for a band from 0.27×), an exact measurement (size, MACs) at the
goal itself (least removed, so most accurate). One round gives back toward that point; the landed result nearer to it
is kept (`better`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

BAND = 0.9  # a target t is landed in [BAND·t, t]
SLOW, FAST, LANDED = "slow", "fast", "landed"


@dataclass
class Landing:
    goal: float
    slow: list[float] = field(default_factory=list)  # aims whose result measured above the goal
    fast: list[float] = field(default_factory=list)  # aims whose result measured below the band
    points: dict = field(default_factory=dict)  # aim -> (predicted, measured) of its result

    def verdict(self, measured: float, margin: float = 0.0) -> str:
        high = measured + margin
        if high > self.goal:
            return SLOW
        return FAST if high < BAND * self.goal else LANDED

    def point(self, margin: float = 0.0) -> float:
        """The measurement a round aims for: the middle of the band, less the margin (landed needs y + m ≤ t)."""
        return max((1.0 + BAND) / 2 * self.goal - margin, BAND * self.goal)

    def first_aim(self, exact: bool) -> float:
        """The goal itself where the prediction is the measurement (MACs), else the middle of the band."""
        return self.goal if exact else self.point()

    def next_aim(self, aim: float, predicted: float, measured: float, margin: float,
                 give_back: float | None = None) -> float:
        """The aim after a round that aimed at `aim`, predicted `predicted` and measured `measured` ± `margin`:
        above the goal, the miss corrected as a ratio and as an offset from the prediction (`corrected_aim`); below
        the band, as a ratio (aim · point / measured, looser than `aim`), at least `give_back` (the prediction of
        the graph one removal before: PP-OCR's branches are 0.28× of its size apart, and five ratio corrections
        rebuilt the same 2-branch graph before one gave a branch back); kept inside the bracket of the aims tried
        (else the bracket's midpoint)."""
        slow = self.verdict(measured, margin) == SLOW
        (self.slow if slow else self.fast).append(aim)
        self.points[aim] = (predicted, measured)
        point = self.point(margin)
        floor = 0.0 if slow else (give_back or 0.0) * (1 + 1e-6)
        new = (corrected_aim(aim, point, measured, predicted) if slow
               else max(aim * point / max(measured, 1e-12), floor))
        lo, hi = max(self.fast, default=0.0), min(self.slow, default=math.inf)
        if self.fast and self.slow:
            (pf, mf), (ps, ms) = self.points[lo], self.points[hi]
            if ps > pf and ms > mf:  # false position between the two nearest results, inside the inner 80 %
                w = hi - lo
                new = min(max(pf + (point - mf) * (ps - pf) / (ms - mf), lo + 0.1 * w, floor), hi - 0.1 * w)
        if lo < new < hi:
            return new
        return (lo + hi) / 2

    def settle(self, margin: float, exact: bool) -> float:
        """Where a landed result is best: the goal for an exact measurement, else the band's middle less the margin."""
        return self.goal if exact else self.point(margin)

    def centring_aim(self, aim: float, measured: float, margin: float, exact: bool,
                     give_back: float | None = None) -> float | None:
        """A looser aim for a landed result that lies more than a quarter of the band below `settle` (None when it
        is near enough, or no aim is left between `aim` and the tightest slow aim): the miss corrected as a ratio,
        at least `give_back` (the prediction of the graph one removal before the landed one, so that the round gives
        at least that removal back: EfficientNet-Lite0's branches are 0.04× apart, wider than the correction), kept
        inside that bracket (else its midpoint)."""
        target = self.settle(margin, exact)
        hi = min(self.slow, default=math.inf)
        if measured >= target - (1.0 - BAND) / 4 * self.goal or hi - aim < 1e-3:
            return None
        new = max(aim * target / max(measured, 1e-12), (give_back or 0.0) * (1 + 1e-6))
        return new if aim < new < hi else (aim + hi) / 2

    def better(self, a: tuple[float, float], b: tuple[float, float], exact: bool) -> bool:
        """Whether landed result a = (measured, margin) is nearer its settling point than b (a tie: the larger,
        which removed less)."""
        da, db = (abs(m - self.settle(e, exact)) for m, e in (a, b))
        return da < db or (da == db and a[0] > b[0])

    def converged(self, tolerance: float = 1e-3) -> bool:
        """The bracket is narrower than `tolerance`: no aim between a slow and a fast one is left to try."""
        lo, hi = max(self.fast, default=0.0), min(self.slow, default=math.inf)
        return hi - lo < tolerance


def corrected_aim(aim: float, point: float, measured: float, predicted: float) -> float:
    """The next aim for a result that measured `measured` above the `point` wanted: the miss taken as a ratio
    (aim · point / measured) and as an offset from the prediction (a size prediction misses by the bytes of the
    quantizers), whichever aims lower."""
    return min(aim * point / max(measured, 1e-12), predicted - (measured - point) * 1.05)
