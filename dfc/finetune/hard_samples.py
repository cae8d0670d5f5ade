"""Samples where the student disagrees with the teacher, grown during distillation at no extra pass.

Data-free distillation fits the teacher on the synthetic samples, not between them; adversarial data-free methods
(DFAD, Fang et al. 2019; ZAQ, Liu et al. 2021; DeepInversion's competition term, Yin et al. 2020) therefore also train
on inputs chosen to maximise the teacher-student discrepancy. Here that costs no extra forward or backward pass
("adversarial training for free", Shafahi et al. 2019): the kd step's backward also gives ∇ₓ of its loss. A pool the
size of the samples holds inputs that entered it from fresh (augmented, mixed) batches; a share of every batch is
drawn from it, and each drawn input goes back moved one signed step up the loss, x + ε·σ·sign(∇ₓ L) (σ: the samples'
per-channel std; clipped to their per-channel range). Inputs enter at a rate that lets each be drawn `updates`
times on average before it is replaced, so a pool input has moved about `updates` steps toward disagreement.
"""

from __future__ import annotations

import math

import torch


class DisagreementPool:
    """Inputs moved up the kd loss (module doc)."""

    def __init__(self, x: torch.Tensor, share: float, step: float, gen: torch.Generator, updates: int = 4):
        self.share, self.gen, self.updates = float(share), gen, max(1, int(updates))
        dims = [0] + list(range(2, x.dim()))
        self.step = step * x.std(dim=dims, keepdim=True)
        self.low, self.high = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
        self.buffer = torch.empty_like(x)
        self.filled = self.next = 0
        self.drawn = torch.empty(0, dtype=torch.long)

    def split(self, batch: int) -> tuple[int, int]:
        """(fresh, from the pool) counts for a batch: the pool's share once it holds anything."""
        hard = min(int(round(self.share * batch)), self.filled)
        return batch - hard, hard

    def draw(self, n: int) -> torch.Tensor:
        self.drawn = torch.randint(self.filled, (n,), generator=self.gen).to(self.buffer.device)
        return self.buffer[self.drawn]

    def _moved(self, xb: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(xb.detach() + self.step * grad.sign(), self.high), self.low)

    def push(self, xb: torch.Tensor, grad: torch.Tensor, hard: int) -> None:
        """After a step on xb = [fresh, `hard` drawn]: the drawn inputs go back moved (module doc), and the first
        share·batch/updates fresh ones, moved, take the oldest places."""
        moved = self._moved(xb, grad)
        if hard:
            self.buffer[self.drawn] = moved[len(moved) - hard:]
        n = min(len(moved) - hard, len(self.buffer), math.ceil(self.share * len(xb) / self.updates))
        pos = (self.next + torch.arange(n, device=moved.device)) % len(self.buffer)
        self.buffer[pos] = moved[:n]
        self.next = int((self.next + n) % len(self.buffer))
        self.filled = min(len(self.buffer), self.filled + n)
