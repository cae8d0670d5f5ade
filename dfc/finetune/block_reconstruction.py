"""Block reconstruction (BRECQ, Li et al. 2021, with AdaRound's learned rounding, Nagel et al. 2020): block by block
in graph order, min ‖block_q(x_q) − block(x)‖² + λ·Σ(1 − |2h − 1|^β) (β annealed 20 → 2 after a 20 % warm-up) over
the block's weight roundings and biases (and, for a float student, its kept weights), x_q the inputs that the
already-reconstructed blocks give, block(x) the teacher's tensor at the block's output (`TeacherTargets`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from dfc.finetune.step_clock import StepClock
from dfc.finetune.student import QuantizedTensor, Student
from dfc.progress import manual_bar, retotal
from dfc.synth.torch_exec import TorchGraph

if TYPE_CHECKING:
    from dfc.finetune.train import Block, FinetuneConfig

# blocks' step costs are predicted less evenly than a kd step (measured / predicted 0.7-1.9 between the kinds of
# EfficientNet-Lite0's blocks), so a re-planned count follows the measured rate gradually, not block by block
MAX_MOVE = 1.15


def _chunks(fn, x: torch.Tensor, batch: int = 128) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[i:i + batch]) for i in range(0, len(x), batch)])


def reconstruct_blocks(student: Student, teacher: TorchGraph, blocks: list[Block], x: torch.Tensor,
                       cfg: FinetuneConfig, steps: int, lr: float, clock: StepClock | None = None) -> dict:
    """BRECQ with AdaRound (module doc): one block at a time, in order; a block whose reconstruction loss on the
    samples ends above where it started (the annealed rounding hardened too early) keeps its starting weights and
    roundings (EfficientNet-Lite0 W4A8 at 152 steps per block at 128²: 8 of 32 blocks). With a budgeted `clock`, every
    block's step is timed first (`block_step_seconds`) and the count for the blocks still to come is planned from
    those times and re-planned from the time the done blocks took (by at most `MAX_MOVE` from one block to the
    next). Returns {"block_trace": per-block steps and losses before/after}."""
    gen = torch.Generator().manual_seed(cfg.seed)
    clock = clock or StepClock(None, steps, steps)
    costs = block_step_seconds(student, teacher, blocks, x, cfg.batch) if clock.deadline else [1.0] * len(blocks)
    clock.prior_rate = 1.0  # until a block is done: the timed steps as they are
    x_q = x
    trace = []
    bar = manual_bar("finetune blocks", total=len(blocks) * steps)
    targets = TeacherTargets(teacher, x)
    clock.mark()
    for k, b in enumerate(blocks):
        # a step of this block and of every block still to come; the count moves by at most MAX_MOVE a block
        planned = clock.steps(steps, 0, sum(costs[k:]))
        steps = planned if k == 0 else int(np.clip(planned, steps / MAX_MOVE, steps * MAX_MOVE))
        retotal(bar, sum(t["steps"] for t in trace) + (len(blocks) - k) * steps)
        t_block = time.perf_counter()
        target = targets.at(b.target)
        run = lambda xi: student.run({b.input: xi}, b.start, b.stop)[b.output]  # noqa: E731
        rounding, params, scales, floats = _trainable(student, b)
        before = _block_loss(run, x_q, target)
        start = [p.detach().clone() for p in params + scales + floats]
        for m in rounding:
            m.hard = False
        groups = [(params, lr), (scales, cfg.scale_lr), (floats, cfg.float_lr)]
        opt = torch.optim.Adam([{"params": p, "lr": r} for p, r in groups if p])
        warm, step = int(0.2 * steps), 0
        while step < steps:
            idx = torch.randint(len(x_q), (cfg.batch,), generator=gen).to(x.device)
            diff = run(x_q[idx]) - target[idx]
            rec = diff.pow(2).sum(1).mean() if diff.dim() > 1 else diff.pow(2).mean()
            loss = rec
            if rounding and step >= warm:
                beta = 2 + (20 - 2) * (1 - (step - warm) / max(1, steps - warm))
                loss = loss + cfg.round_weight * sum(m.rounding_regularizer(beta) for m in rounding)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            clock.add(costs[k])
            bar.update()
            if hasattr(bar, "set_postfix") and step % 20 == 0:
                bar.set_postfix(block=f"{k + 1}/{len(blocks)}", rec=f"{float(rec.detach()):.4f}")
        for m in rounding:
            m.hard = True
        kept, after = _kept_or_restored(run, x_q, target, before, params + scales + floats, start)
        trace.append({"output": b.output, "layers": len(b.layers), "steps": steps, "cost": costs[k],
                      "seconds": round(time.perf_counter() - t_block, 2), "loss_before": round(before, 6),
                      "loss_after": round(after, 6), "kept": "trained" if kept else "input"})
        x_q = _chunks(run, x_q)
    bar.close()
    for p in student.parameters():
        p.requires_grad_(True)
    return {"block_trace": trace}


def block_step_seconds(student: Student, teacher: TorchGraph, blocks: list[Block], x: torch.Tensor,
                       batch: int) -> list[float]:
    """Seconds of one reconstruction step of each block: forward with soft rounding, loss and backward on a batch of
    the teacher's inputs to the block (the faster of two after a warm-up; the optimizer step is left out). Costs
    ~3 steps of every block; the graph's cost model is off by 0.7-1.9× between kinds of blocks (EfficientNet-Lite0
    at 128²), which made the steps it planned uneven."""
    xb = x[torch.arange(batch) % len(x)]
    targets, inputs, out = TeacherTargets(teacher, xb), xb, []
    for b in blocks:
        target = targets.at(b.target)
        rounding, *_ = _trainable(student, b)
        for m in rounding:
            m.hard = False
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            diff = student.run({b.input: inputs}, b.start, b.stop)[b.output] - target
            diff.pow(2).mean().backward()
            times.append(time.perf_counter() - t0)
        for m in rounding:
            m.hard = True
        student.zero_grad(set_to_none=True)
        out.append(min(times[1:]))
        inputs = target
    for p in student.parameters():
        p.requires_grad_(True)
    return out


def _trainable(student: Student, b: Block) -> tuple[list, list, list, list]:
    """(learned roundings, the block's quantized-tensor parameters, its activation scales, its float parameters),
    all else frozen."""
    mods = student.modules_of(set(b.layers))
    rounding = [m for m in mods if isinstance(m, QuantizedTensor) and m.learn_rounding]
    params = [p for m in mods if isinstance(m, QuantizedTensor) for p in m.parameters()]
    floats = [p for m in mods if not isinstance(m, QuantizedTensor) for p in m.parameters()]
    scales = [p for m in student.act_scales_in(b.start, b.stop) for p in m.parameters()]
    for p in student.parameters():
        p.requires_grad_(False)
    for p in params + scales + floats:
        p.requires_grad_(True)
    return rounding, params, scales, floats


def _kept_or_restored(run, x_q: torch.Tensor, target: torch.Tensor, before: float, params: list,
                      start: list) -> tuple[bool, float]:
    """(kept, loss after): where the hardened rounding ends worse than it started, the block keeps `start`."""
    after = _block_loss(run, x_q, target)
    if after <= before:
        return True, after
    with torch.no_grad():
        for p, p0 in zip(params, start):
            p.copy_(p0)
    return False, _block_loss(run, x_q, target)


class TeacherTargets:
    """The teacher's tensors at the blocks' targets, in order, on all samples: each computed from the previous one
    by the teacher's nodes in between (the targets are cuts of the teacher too), one pass over the teacher in all;
    a full forward pass where that does not hold."""

    def __init__(self, teacher: TorchGraph, x: torch.Tensor):
        self.teacher, self.x = teacher, x
        self.index = {t.name: i for i, n in enumerate(teacher.nodes) for t in n.outputs}
        self.name, self.value, self.stop = teacher.input_names[0], x, 0

    def at(self, name: str) -> torch.Tensor:
        stop = self.index.get(name)
        value = None
        if stop is not None and stop >= self.stop:
            try:
                value = _chunks(lambda v: self.teacher.run({self.name: v}, self.stop, stop + 1)[name], self.value)
            except KeyError:  # a node in between reads more than the previous target: not a cut of the teacher
                value = None
        if value is None:
            self.teacher.watch = [name]
            value = _chunks(lambda v: self.teacher(v)[1][name], self.x)
        self.name, self.value, self.stop = name, value, (stop + 1 if stop is not None else len(self.teacher.nodes))
        return value


def _block_loss(run, x_q: torch.Tensor, target: torch.Tensor) -> float:
    with torch.no_grad():
        y = _chunks(run, x_q)
        d = y - target
        return float(d.pow(2).sum(1).mean() if d.dim() > 1 else d.pow(2).mean())
