"""Data-free fine-tuning of a compressed graph against the float graph, on synthetic samples.

- `distill` (The Knowledge Within, Algorithm 2): the whole student trained on
  α·KL(softmax(t) ‖ softmax(s)) + β·Σ_blocks smooth-L1(s_b, t_b) over batches drawn with replacement from the
  samples, augmented as the inverter does (crop-resize, flip, cutout) and mixed in-batch (MixUp, λ ~ Beta(a, a);
  teacher and student see the same mixed input, the teacher's outputs are not mixed); Adam with linear warm-up and
  cosine decay. A quantized student of the teacher's architecture moves its int8-coded weights in quantization steps
  (per channel lr c·s): one absolute lr is 0.02 steps of a 4-bit weight and 0.26 of an 8-bit one.
- `reconstruct_blocks` (`dfc.finetune.block_reconstruction`): BRECQ with AdaRound's learned rounding, block by
  block in graph order.
- A budgeted run keeps its budget: the steps are planned from the graph's cost model times the measured speed of a
  few kd passes (`dfc.finetune.train_cost`), then re-planned from the run's own step time (`dfc.finetune.step_clock`).

Blocks are the graph's single-tensor cuts: a point in the topological order where one tensor alone carries
everything later nodes read (a residual block's output; in a plain chain every layer). In a QDQ graph the cuts are
taken at activation DequantizeLinear outputs, so a block's output includes its activation quantization; each cut's
teacher tensor is the float tensor that the QuantizeLinear quantizes (a fused Relu/ReLU6's output).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from dfc.errors import DfcError
from dfc.progress import manual_bar, retotal
from dfc.finetune.hard_samples import DisagreementPool
from dfc.finetune.student import WEIGHTED, QuantizedTensor, Student
from dfc.synth.torch_exec import TorchGraph
from dfc.finetune.block_reconstruction import reconstruct_blocks
from dfc.finetune.step_clock import StepClock, replan_points
from dfc.finetune.train_cost import default_steps, measured_speed, pass_cost, step_seconds
from dfc.synth.resolution import REDUCED_SIZE_MACS, area_ratio, resized, runnable_reduced_shape

METHODS = ("kd", "blocks")


@dataclass
class FinetuneConfig:
    method: str = "blocks"
    steps: int | None = None  # kd: total steps; blocks: steps per block. None: from the time budget
    batch: int = 32
    lr: float | None = None  # None: the method's default (DEFAULT_LR); kd: float parameters (biases, a float student)
    # kd: Adam's step on the int8-coded weights in units of each channel's quantization step s (lr c·s); None: DEFAULT_STEP_LR
    step_lr: float | None = None
    seed: int = 0
    device: str | None = None
    kd_alpha: float = 1.0
    kd_beta: float = 1.0  # weight of the block-output term IQ (smooth-L1, summed over blocks)
    mixup: float = 1.0  # Beta(a, a) of MixUp's λ; 0 turns MixUp off
    hard_share: float = 0.0  # kd: batch share from `dfc.finetune.hard_samples`' pool; 0: off (default)
    hard_step: float = 0.05  # the pool's step, in units of the samples' per-channel std
    # blocks: adaround (learned rounding, constant lr as in AdaRound) | ste (latent weights: lower loss on the samples,
    # but it overfits them: ResNet-20 W4A4 300 steps 89.77 top-1 vs adaround 90.46); kd always trains latent weights
    rounding: str = "adaround"
    round_weight: float = 0.01  # λ of AdaRound's regulariser
    # blocks: reconstruct on the samples plus copies − 1 augmented copies of them (the inverter's augmentations);
    # None: as many as bring the samples to BLOCK_INPUTS (`block_copies`)
    copies: int | None = None
    float_lr: float = 1e-4  # blocks: Adam's step on a float student's weights (pruned, --no-quant); lr is for roundings
    act_scales: bool = False  # learn the activation quantizers' scales too (LSQ); measured worse at block level
    scale_lr: float = 1e-3  # Adam's step on log s
    # seconds of training the default steps fill, predicted from the graph times `speed` (`dfc.finetune.train_cost`);
    # 480: the steps the README's rows were measured at on these 2-core CPUs (300 s of the reference took 450-520 s)
    time_budget_s: float = 480.0
    speed: float | None = None  # the model's factor for this machine; None: measured on the run's own kd passes
    # train at a smaller input (`dfc.synth.resolution`), for a model that runs at any size: None: where a sample costs
    # about `train_macs` (the inverter's rule; the CIFAR ResNets stay at 32²); 0: the input size; else this side
    size: int | None = None
    train_macs: float = REDUCED_SIZE_MACS
    full_steps: int = 0  # kd: steps at the input size after the reduced-size phase


DEFAULT_LR = {"kd": 3e-4, "blocks": 1e-2}  # measured on the shared ResNets (README, fine-tuning)
# kd on int8-coded weights: a hundredth of a quantization step per update, at any bit width (README, fine-tuning: one
# absolute lr moved 8-bit weights 0.26 steps and 4-bit ones 0.02 an update, and the 8-bit students drifted off)
DEFAULT_STEP_LR = 0.01
MIN_STEPS = {"kd": 100, "blocks": 50}
# Block reconstruction fits every learned rounding of a block to the inputs it is given: on fewer than this many it
# learns the samples, not the layer (EfficientNet-Lite0 W4A8 on its 64 BNS samples: KL to fp32 on the samples
# 0.195 -> 0.010 at 224², on 500 real images 0.141 -> 0.184). BRECQ reconstructs on 1024 images; at 256 samples a
# copy more measured level (ResNet-56 W4A4, 240 s: 91.45 / 90.86 top-1, JPEG mean KL 0.447 / 0.428 with 1 / 2
# copies), so fewer samples are topped up with augmented copies to this many.
BLOCK_INPUTS = 256
MAX_STEPS = {"kd": 4000, "blocks": 2000}


@dataclass
class Block:
    start: int  # node range [start, stop) of the student
    stop: int
    input: str  # student tensor read
    output: str  # student tensor compared
    target: str  # teacher tensor it is compared with
    layers: list[str]


def _names(student: TorchGraph) -> set[str]:
    return set(student._const_names) | set(student._names.values())


def blocks_of(student: Student, teacher: onnx.ModelProto, probe: np.ndarray | None = None,
              teacher_graph: TorchGraph | None = None) -> list[Block]:
    """The student's blocks (module doc): single-tensor cuts that the teacher also has, each block holding at
    least one trainable layer; the last block ends at the graph output. With a `probe` input, a cut whose tensor
    has another shape in the teacher (a pruned layer's output) is not used."""
    same_shape = _shape_check(student, teacher_graph or TorchGraph(teacher), probe)
    nodes, fixed = student.nodes, _names(student)
    teacher_names = {t for n in teacher.graph.node for t in n.output} | {i.name for i in teacher.graph.input}
    quantized = any(n.op == "DequantizeLinear" for n in nodes)
    last_use: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for t in n.inputs:
            if t is not None and t.name and t.name not in fixed:
                last_use[t.name] = i
    for o in student.output_names:
        last_use[o] = len(nodes)
    trainable = set(student.layer_of.values())
    live = {name for name in student.input_names if name in last_use}
    out: list[Block] = []
    start, current, layers = 0, student.input_names[0], []
    for i, n in enumerate(nodes):
        if n.op in WEIGHTED and n.name in trainable:
            layers.append(n.name)
        live |= {t.name for t in n.outputs if t.name in last_use}
        live = {t for t in live if last_use[t] > i}
        if len(live) != 1 or not layers:
            continue
        (cut,) = live
        if quantized and n.op != "DequantizeLinear":
            continue
        target = _teacher_name(n, teacher_names) if quantized else (cut if cut in teacher_names else None)
        if target is None or not same_shape(cut, target):
            continue
        out.append(Block(start, i + 1, current, cut, target, layers))
        start, current, layers = i + 1, cut, []
    final = teacher.graph.output[0].name
    if layers or not out:
        out.append(Block(start, len(nodes), current, student.output_names[0], final, layers))
    else:
        b = out[-1]
        out[-1] = Block(b.start, len(nodes), b.input, student.output_names[0], final, b.layers)
    return out


def _shape_check(student: Student, t_graph: TorchGraph, probe: np.ndarray | None):
    """(student tensor, teacher tensor) -> whether their shapes agree on the probe input (always True without one)."""
    if probe is None:
        return lambda a, b: True
    device = next(student.parameters()).device
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(probe[:1], np.float32)).to(device)
        s_env = student.run({student.input_names[0]: x})
        t_env = t_graph.run({t_graph.input_names[0]: x})
    return lambda a, b: a in s_env and b in t_env and tuple(s_env[a].shape) == tuple(t_env[b].shape)


def _teacher_name(dq, teacher_names: set[str]) -> str | None:
    """The float tensor an activation DequantizeLinear stands for: its QuantizeLinear's input (through the Clip on
    the codes that a narrow width inserts between the two)."""
    q = dq.inputs[0].inputs[0] if dq.inputs[0].inputs else None
    if q is not None and q.op == "Clip" and q.inputs[0].inputs:
        q = q.inputs[0].inputs[0]
    if q is None or q.op != "QuantizeLinear":
        return None
    t = q.inputs[0]
    return t.name if t.name in teacher_names else None


def _kl(t_logits: torch.Tensor, s_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(t) ‖ softmax(s)), mean over the batch."""
    return F.kl_div(F.log_softmax(s_logits, 1), F.log_softmax(t_logits, 1), log_target=True, reduction="batchmean")


def _lr_at(step: int, steps: int, lr: float, warmup: float = 0.05) -> float:
    """Linear warm-up over the first 5 % of the steps, then cosine decay to 0."""
    w = max(1, int(warmup * steps))
    if step < w:
        return lr * (step + 1) / w
    return 0.5 * lr * (1 + math.cos(math.pi * (step - w) / max(1, steps - w)))


def probability_outputs(graph: TorchGraph) -> list[bool]:
    """Per graph output: whether a Softmax writes it (class probabilities, not logits)."""
    soft = {t.name for n in graph.nodes if n.op == "Softmax" for t in n.outputs if t is not None}
    return [name in soft for name in graph.output_names]


def output_loss(t_outs: list[torch.Tensor], s_outs: list[torch.Tensor], probs: list[bool] | None = None) -> torch.Tensor:
    """What kd minimises and the keep check reads, summed over the graph's outputs: KL(softmax(t) ‖ softmax(s)) of
    class logits ([N, C]; of log p where `probs` says a Softmax wrote the output: softmax(log p) = p, where a softmax
    of p itself would flatten the classes); the squared relative L2 error ‖s − t‖² / ‖t‖² of any other output (a
    detector's scores [N, anchors, 2] and boxes, where a softmax over dim 1 would compare anchors, not classes)."""
    total = torch.zeros((), device=t_outs[0].device)
    for i, (t, s) in enumerate(zip(t_outs, s_outs)):
        if t.dim() == 2 and probs and probs[i]:
            t, s = t.clamp_min(1e-12).log(), s.clamp_min(1e-12).log()
        total = total + (_kl(t, s) if t.dim() == 2 else (s - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12))
    return total


def output_loss_name(teacher: TorchGraph, x1: torch.Tensor) -> str:
    """How `output_loss` compares this graph's outputs, for the summary: "KL", "rel. L2²" or both."""
    with torch.no_grad():
        kinds = {"KL" if t.dim() == 2 else "rel. L2²" for t in teacher(x1)[0]}
    return " + ".join(sorted(kinds))


def output_kl(student: Student, teacher: TorchGraph, x: torch.Tensor, batch: int = 128) -> float:
    """Mean `output_loss` of the student against the teacher on `x` (the report's "output KL" before/after)."""
    total, probs = 0.0, probability_outputs(teacher)
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = x[i:i + batch]
            total += float(output_loss(teacher(xb)[0], student(xb)[0], probs)) * len(xb)
    return total / len(x)


def distill(student: Student, teacher: TorchGraph, blocks: list[Block], x: torch.Tensor, cfg: FinetuneConfig,
            steps: int, in_steps: bool = True, clock: StepClock | None = None) -> dict:
    """The Knowledge Within, Algorithm 2 (module doc); with `in_steps` the int8-coded weights move in units of their
    quantization step (`adam_step_in_quant_steps`); `clock` re-plans `steps` at `replan_points` from the measured step
    time. Returns the loss trace and the steps run."""
    from dfc.synth.inverter import augment

    gen = torch.Generator().manual_seed(cfg.seed)
    inner = blocks[:-1]
    student.watch = [b.output for b in inner]
    teacher.watch = [b.target for b in inner]
    scales = [p for p in student.act_scales.parameters()]
    coded = [m for m in student.tensors.values() if in_steps and in_quant_steps(m)]
    params = [p for m in student.tensors.values() if m not in coded for p in m.parameters()]
    groups = [(params, cfg.lr or DEFAULT_LR["kd"]), ([m.w for m in coded], cfg.step_lr or DEFAULT_STEP_LR),
              (scales, cfg.scale_lr)]
    opt = torch.optim.Adam([{"params": p, "lr": r, "base": r} for p, r in groups if p])
    beta_dist = torch.distributions.Beta(cfg.mixup, cfg.mixup) if cfg.mixup > 0 else None
    pool = DisagreementPool(x, cfg.hard_share, cfg.hard_step, gen) if cfg.hard_share else None
    probs = probability_outputs(teacher)
    first = last = None
    clock, marks, step = clock or StepClock(None, steps, steps), replan_points(steps), 0
    bar = manual_bar("finetune kd", total=steps)
    while step < steps:
        fresh, hard = pool.split(cfg.batch) if pool else (cfg.batch, 0)
        idx = torch.randint(len(x), (fresh,), generator=gen).to(x.device)
        xb = augment(x[idx], 1, gen)
        if beta_dist is not None:
            lam = beta_dist.sample((len(xb),)).to(x.device).view(-1, *[1] * (xb.dim() - 1))
            perm = torch.randperm(len(xb), generator=gen).to(x.device)
            xb = lam * xb + (1 - lam) * xb[perm]
        if hard:  # pool samples were augmented and mixed when they first entered it
            xb = torch.cat([xb, pool.draw(hard)])
        xb.requires_grad_(pool is not None)
        with torch.no_grad():
            t_outs, t_blocks = teacher(xb)
        s_outs, s_blocks = student(xb)
        loss = cfg.kd_alpha * output_loss(t_outs, s_outs, probs)
        if cfg.kd_beta and inner:
            loss = loss + cfg.kd_beta * sum(F.smooth_l1_loss(s_blocks[b.output], t_blocks[b.target]) for b in inner)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, g["base"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        adam_step_in_quant_steps(opt, coded)
        if pool is not None:
            pool.push(xb, xb.grad, hard)
        v = float(loss.detach())
        first = v if first is None else first
        last = v if last is None else 0.9 * last + 0.1 * v
        step += 1
        if step == 1:
            clock.mark()
        else:
            clock.add()
        if step in marks:
            steps = clock.steps(steps, step)
            retotal(bar, steps)
        bar.update()
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{last:.4f}")
    bar.close()
    return {"train_loss_first": first, "train_loss_last": last, "steps_run": step}


def in_quant_steps(m: torch.nn.Module) -> bool:
    """Whether kd moves this tensor in units of its quantization step: int8-coded weights with an STE latent."""
    return isinstance(m, QuantizedTensor) and not m.learn_rounding and m.dtype == np.int8


def adam_step_in_quant_steps(opt: torch.optim.Optimizer, coded: list[QuantizedTensor]) -> None:
    """opt.step(), each coded weight's update then multiplied by its channel's scale s: Adam's moments do not depend
    on the lr, so this is Adam at a per-channel lr c·s, c (the group's lr) counted in quantization steps."""
    before = [m.w.detach().clone() for m in coded]
    opt.step()
    with torch.no_grad():
        for m, w0 in zip(coded, before):
            m.w.sub_(w0).mul_(m.scale).add_(w0)


def is_pruned(model: onnx.ModelProto, teacher_model: onnx.ModelProto) -> bool:
    """Whether `model` has fewer weights than the teacher (channels or residual branches removed): its student has
    an architecture gap to close, not only rounding."""
    from dfc.graph.stats import model_summary

    return model_summary(model)["weight_params"] < model_summary(teacher_model)["weight_params"]


def _planned_steps(cfg: FinetuneConfig, student: tuple, teacher: tuple, x_low: torch.Tensor, xt: torch.Tensor,
                   full_steps: int, area: float) -> tuple[int, float, float, float]:
    """(steps, predicted seconds, speed factor, predicted seconds of the full-size phase): `cfg.steps`, or what fills
    `cfg.time_budget_s` at the predicted step time (`dfc.finetune.train_cost`) less the full-size phase;
    `student`/`teacher`: (model, graph)."""
    (s_model, s_graph), (t_model, t_graph) = student, teacher
    s_cost, t_cost = pass_cost(s_model, s_graph, x_low[:1], area), pass_cost(t_model, t_graph, x_low[:1], area)
    measure = cfg.steps is None and not cfg.speed
    speed = measured_speed(s_graph, t_graph, x_low, cfg.batch, s_cost, t_cost) if measure else (cfg.speed or 1.0)
    full_s = speed * full_steps * step_seconds(cfg.method, pass_cost(s_model, s_graph, xt[:1]), pass_cost(
        t_model, t_graph, xt[:1]), cfg.batch) if full_steps else 0.0
    steps = cfg.steps if cfg.steps is not None else default_steps(
        cfg.method, s_cost, t_cost, cfg.batch, max(cfg.time_budget_s - full_s, 0.0) / speed,
        MIN_STEPS[cfg.method], MAX_STEPS[cfg.method])
    return steps, speed * steps * step_seconds(cfg.method, s_cost, t_cost, cfg.batch) + full_s, speed, full_s


def block_copies(cfg: FinetuneConfig, n: int) -> int:
    """How many times block reconstruction sees each of `n` samples, the first as it is, the rest augmented
    (crop-resize, flip, cutout: `dfc.synth.inverter.augment`): `cfg.copies`, or by default as many as come nearest
    to BLOCK_INPUTS inputs (PP-OCR's 224 samples: 1; EfficientNet-Lite0 W4A8, 64 samples, 4 copies: KL to fp32 on
    500 real images 0.137 against 0.176 without and 0.141 before fine-tuning; 8 copies 0.138). kd augments every
    batch itself: 1."""
    if cfg.method != "blocks":
        return 1
    if cfg.copies is not None:
        if int(cfg.copies) < 1:
            raise DfcError(f"fine-tuning copies must be >= 1, got {cfg.copies}")
        return int(cfg.copies)
    return max(1, round(BLOCK_INPUTS / max(1, n)))


def _train_phases(student: Student, teacher: TorchGraph, blocks: list[Block], cfg: FinetuneConfig, plan: tuple,
                  xt: torch.Tensor, in_steps: bool, clock: StepClock) -> tuple[dict, list[dict]]:
    """Run each (samples, steps) phase of `plan` (the reduced size, then the input size `xt`), the first on `clock`;
    returns the last trace and per phase its shape, steps run, seconds and output KL at the input size."""
    trace, phases = {}, []
    for x_phase, n in plan:
        if n <= 0:
            continue
        t1 = time.perf_counter()
        if cfg.method == "kd":
            trace = distill(student, teacher, blocks, x_phase, cfg, n, in_steps, None if phases else clock)
            n = trace.pop("steps_run")
        else:
            trace = reconstruct_blocks(student, teacher, blocks, x_phase, cfg, n, cfg.lr or DEFAULT_LR["blocks"], clock)
            n = round(float(np.mean([t["steps"] for t in trace["block_trace"]])))
        # what the phase bought: the output KL at the input size, on the samples
        phases.append({"shape": list(x_phase.shape[1:]), "steps": int(n), "seconds": round(time.perf_counter() - t1, 1),
                       "kl_after": round(output_kl(student, teacher, xt), 6)})
    return trace, phases


def finetune(model: onnx.ModelProto, teacher_model: onnx.ModelProto, x: np.ndarray, cfg: FinetuneConfig,
             float_model: onnx.ModelProto | None = None, latents: dict | None = None) -> tuple[onnx.ModelProto, dict]:
    """Fine-tune `model` (QDQ or float) towards `teacher_model` on samples `x`; returns (model, info).
    `float_model`: the graph before quantization (latent weights; AdaRound's base); `latents`: layer name -> the
    float weights its codes were rounded from where that is not `float_model`'s (GPTQ's error-fed weights). Where the trained student's
    output KL to the teacher on the (unaugmented) samples ends above the untrained one's, `model` itself is returned
    and info["kept"] says "input" (ResNet-56 W8A8, kd at lr 3e-4: KL 0.0041 → 0.0446, JPEG agreement 97.98 → 94.44 %)."""
    from dfc.synth.inverter import pick_device
    from dfc.finetune.student import float_weights_of

    if cfg.method not in METHODS:
        raise DfcError(f"--finetune must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    if len(x) < 1:
        raise DfcError("fine-tuning needs at least one sample")
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    t0 = time.perf_counter()
    floats = float_weights_of(float_model) if float_model is not None else {}
    floats.update({k: (w, floats.get(k, (None, None))[1]) for k, w in (latents or {}).items()})
    student = Student(model, floats, rounding=cfg.rounding if cfg.method == "blocks" else "ste",
                      learn_act_scales=cfg.act_scales).to(device)
    teacher = TorchGraph(teacher_model).to(device)
    blocks = blocks_of(student, teacher_model, probe=x, teacher_graph=teacher)
    xt = torch.from_numpy(np.asarray(x, np.float32)).to(device)
    shape = tuple(xt.shape[1:])
    low = runnable_reduced_shape(teacher_model, (student, teacher), shape, cfg.train_macs, cfg.size, device)
    x_low = resized(xt, low)
    full_steps = int(cfg.full_steps) if cfg.method == "kd" and low != shape else 0
    steps, predicted, speed, full_s = _planned_steps(cfg, (model, student), (teacher_model, teacher), x_low, xt,
                                                     full_steps, area_ratio(low, shape))
    # kd counts the quantized weights' steps in quantization steps where rounding is all that separates them from the
    # teacher; a pruned student (fewer weights) has further to go: all its parameters move at the absolute lr
    in_steps = (cfg.method == "kd" and any(in_quant_steps(m) for m in student.tensors.values())
                and not is_pruned(model, teacher_model))
    t_kl = time.perf_counter()
    kl_before = output_kl(student, teacher, xt)
    # a budgeted phase keeps its budget: steps re-planned from its own step time (`dfc.finetune.step_clock`); the
    # final KL costs what the first did
    t_kl = time.perf_counter() - t_kl
    left = cfg.time_budget_s - (time.perf_counter() - t0) - full_s - t_kl
    clock = StepClock(left if cfg.steps is None and cfg.speed is None else None, MIN_STEPS[cfg.method],
                      MAX_STEPS[cfg.method])
    copies = block_copies(cfg, len(x))
    if steps > 0 and copies > 1:
        from dfc.synth.inverter import augment

        gen = torch.Generator().manual_seed(cfg.seed + 1)
        xt_train = torch.cat([x_low, augment(x_low, copies - 1, gen)])
    else:
        xt_train = x_low
    trace, phases = _train_phases(student, teacher, blocks, cfg, ((xt_train, steps), (xt, full_steps)), xt,
                                  in_steps, clock)
    kl_after = phases[-1]["kl_after"] if phases else output_kl(student, teacher, xt)
    student.watch = []
    # training that moved the student away from the teacher on the samples themselves is not kept
    kept = "input" if steps > 0 and kl_after > kl_before else "trained"
    info = {
        "method": cfg.method, "steps": int(phases[0]["steps"] if phases else steps), "planned_steps": int(steps),
        "samples": int(len(x)), "copies": copies, "batch": cfg.batch,
        "lr": cfg.lr or DEFAULT_LR[cfg.method], "step_lr": (cfg.step_lr or DEFAULT_STEP_LR) if in_steps else None,
        "blocks": len(blocks), "device": str(device),
        "disagreement": float(cfg.hard_share) if cfg.method == "kd" else None,
        "learned_act_scales": len(student.act_scales),
        "kl_before": round(kl_before, 6), "kl_after": round(kl_after, 6), "loss": output_loss_name(teacher, xt[:1]),
        "seconds": round(time.perf_counter() - t0, 1),
        "predicted_seconds": float(f"{predicted:.3g}") if cfg.steps is None else None,
        "speed": round(speed, 3) if cfg.steps is None else None,
        "kept": kept, "phases": phases, "input_shape": list(shape),
        **trace,
    }
    return (model if kept == "input" else student.export(model)), info
