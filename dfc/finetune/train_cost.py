"""How long a fine-tuning step takes, predicted from the graph, so that the default number of steps fits a time
budget on any model (not only on the ones the budget was set on).

Training time on a CPU is not proportional to MACs: a depthwise conv's backward pass costs about 100× a dense
conv's per multiply-add in torch, and element-wise work (activations, fake quantization, MixUp, the loss) is
memory-bound. Per sample of one forward pass:

    cost = k_dense·MACs_dense + k_dw·MACs_depthwise + k_el·E,  E = Σ elements of every node output (floats)

with k fitted on kd steps (2 cores, torch 2.13, batch 32): ResNet-56 float and W8A8, EfficientNet-Lite0 float,
depth-pruned float and W8A8 students (within 10 %; 15 % with the node term below). A kd step runs the student
forward and backward (3 passes) and the teacher forward (1), plus a cost per student node that only small inputs
notice (the 8×8 digits demo: 3.5 ms a step, 1/50 of it predicted by the passes). A blocks step (one step of every
block; the teacher's block outputs are computed once) is K_BLOCKS·3 student passes plus a cost per student node (each block's own optimizer
step, AdaRound's rounding, dispatch: it dominates on small inputs), fitted on six ResNet-56 / Lite0 float, W8A8 and
2w4a students (within 20 %; the pass cost alone was off by 0.7-2.2×).

The k are one machine's; `measured_speed` times a few of the run's own kd passes (student forward and backward,
teacher forward, one batch) and divides by their prediction, and the default steps are set by the prediction times
that factor: on the 2-core machines of later stops kd took 1.5× its prediction (ResNet-56 W4A4: 456 s for 300),
and a GPU or a busy CPU moves it further.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from dfc.synth.torch_exec import TorchGraph

K_DENSE = 1.96e-4 / 32e6  # seconds per dense multiply-add and sample (kd fit above)
K_DEPTHWISE = 1.93e-2 / 32e6  # seconds per depthwise multiply-add and sample
K_ELEMENT = 1.04e-2 / 32e6  # seconds per output element and sample
K_KD_NODE = 1.5e-4  # kd: seconds per student node and step (dispatch, optimizer; the digits demo: 3.5 ms, 24 nodes)
K_BLOCKS = 0.77  # blocks: share of three kd-fitted student passes
K_BLOCK_NODE = 5.35e-4  # blocks: seconds per student node and step


@dataclass(frozen=True)
class PassCost:
    """One forward pass over one sample: dense and depthwise multiply-adds, elements written; the graph's nodes."""

    dense_macs: float
    depthwise_macs: float
    elements: float
    nodes: int = 0

    def seconds(self) -> float:
        return K_DENSE * self.dense_macs + K_DEPTHWISE * self.depthwise_macs + K_ELEMENT * self.elements


def pass_cost(model: onnx.ModelProto, graph: TorchGraph, x1: torch.Tensor, area: float = 1.0) -> PassCost:
    """The cost of `graph` (built from `model`) on the one-sample input `x1`; `area`: the pixel count of `x1` over
    that of the model's declared input (its layers' MACs, read from the declared shapes, scale with it)."""
    from dfc.graph.stats import layer_stats

    groups = {n.name: next((a.i for a in n.attribute if a.name == "group"), 1)
              for n in model.graph.node if n.op_type == "Conv"}
    dense = depthwise = 0.0
    for row in layer_stats(model):
        if groups.get(row.name, 1) > 1:
            depthwise += row.macs
        else:
            dense += row.macs
    with torch.no_grad():
        env = graph.run({graph.input_names[0]: x1})
    elements = sum(env[t.name].numel() for n in graph.nodes for t in n.outputs
                   if t is not None and t.name in env and torch.is_tensor(env[t.name])
                   and env[t.name].is_floating_point())
    return PassCost(dense * area, depthwise * area, float(elements), len(graph.nodes))


def step_seconds(method: str, student: PassCost, teacher: PassCost, batch: int) -> float:
    """Predicted seconds of one step of `method` at `batch` samples (reference: 2 CPU cores)."""
    if method == "kd":
        return batch * (3 * student.seconds() + teacher.seconds()) + K_KD_NODE * student.nodes
    return K_BLOCKS * 3 * batch * student.seconds() + K_BLOCK_NODE * student.nodes


def default_steps(method: str, student: PassCost, teacher: PassCost, batch: int, budget_s: float,
                  lo: int, hi: int) -> int:
    """Steps so that the predicted training time ≈ `budget_s`, within [lo, hi]."""
    per_step = max(step_seconds(method, student, teacher, batch), 1e-9)
    return int(np.clip(budget_s / per_step, lo, hi))


def measured_speed(student: TorchGraph, teacher: TorchGraph, samples: torch.Tensor, batch: int, s_cost: PassCost,
                   t_cost: PassCost, repeats: int = 3) -> float:
    """This machine's seconds for a kd step's passes on a batch of `samples` (student forward and backward, teacher
    forward; the fastest of `repeats` after one warm-up) over their prediction `step_seconds("kd", ...)`."""
    x = samples[torch.arange(batch) % len(samples)]
    predicted_s = step_seconds("kd", s_cost, t_cost, batch)
    cuda = x.device.type == "cuda"
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        with torch.no_grad():
            teacher(x)
        out = student(x)[0][0]
        out.float().square().mean().backward()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    student.zero_grad(set_to_none=True)
    return min(times[1:]) / max(predicted_s, 1e-9)
