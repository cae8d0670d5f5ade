"""The BNS inverter: synthetic calibration data from the model itself (Haroush et al., "The Knowledge
Within: Methods for Data-Free Model Compression", CVPR 2020, §3 and Algorithm 1).

Random inputs x (in the model's normalised input space) are optimised with Adam so that:
- `bns`: J_KL = mean over BN layers ℓ of mean over channels c of
      KL(N(μ̂, σ̂²) ‖ N(μ̃, σ̃²)) = log(σ̃/σ̂) + (σ̂² + (μ̂ − μ̃)²)/(2σ̃²) − 1/2          (Eq. 1-3)
  with (μ̂, σ̂²) the BN's running statistics and (μ̃, σ̃²) the batch's per-channel statistics of the BN input, each
  variance plus the BN's own ε (the noise floor below which BN does not tell variances apart): without it a channel
  that is nearly constant in one batch but had σ̂² ~ ε in training gives a KL of 1e7-1e9 that swamps every other
  term (EfficientNet-Lite0, ε = 1e-3: J_KL of 64 real images 3402 without, 0.12 with). dfc folds BN, so the
  statistics are compared at the folded layer's output y = γ·(x − μ̂)/√(σ̂² + ε) + β, where the same affine map
  (KL is invariant under it) turns the two Gaussians into N(β, γ²) and N(μ̃_y, σ̃_y² + γ²·ε/(σ̂² + ε)).
  The input normalisation counts as one more BN (target N(0, 1) per channel, no floor).
- `inception`: mean of e^(−logit[target]/scale) over the batch, random target classes; started from pink (1/f)
  noise, not white: its loss says nothing of the activation statistics, and the start is most of what the samples
  keep (dfc's source for classifiers without BN statistics, docs/bn_folded.md). Optional image priors: total
  variation and l2 (DeepInversion), measured without gain there.
- `bns+inception`: J_KL + w_inception · inception.
Every method adds the smoothing prior w_smooth · mean((x − blur(x))²) (Gaussian blur, σ = 1).
Each step: in-batch augmentation (each sample duplicated `copies` times, each copy randomly
crop-resized, flipped and cut out), the loss, an Adam step on x, then x is clamped to the valid
input range. CUDA is used when available.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from dfc.errors import DfcError
from dfc.measure.runtime import cpu_threads
from dfc.synth.resolution import REDUCED_SIZE_MACS, area_ratio, input_shape, model_cost

METHODS = ("bns", "inception", "bns+inception")
INITS = ("gaussian", "pink")
MAX_SAMPLES, MIN_STEPS, MAX_STEPS = 256, 100, 200
REFINE_ROUND = 5  # steps of one Adam run at full size (`Inverter.refine_steps`)
# The default work (`Inverter.plan`), the same at every bit width: measured on ResNet-56 W4A4 (activation ranges at 4
# bits are the most sample-hungry calibration dfc does), 102 steps (this budget) vs 200 (twice it): 89.97 vs 87.61
# top-1 with --input-mean/--input-std, 88.99 vs 89.18 without (input box ±2.5); the gap the budget cut seemed to open
# without the normalisation was the box (±3: 87.51 vs 89.48), not the steps.
BUDGET = 1.4e10


@dataclass
class InverterConfig:
    method: str = "bns"
    samples: int | None = None  # None: from the work budget (`Inverter.plan`)
    batch: int | None = None  # samples optimised together (BN statistics are batch statistics); None: all of them
    steps: int | None = None  # None: from the work budget
    budget: float = BUDGET  # default work: samples × steps × activation elements per sample (at the synthesis size)
    lr: float = 0.1
    copies: int = 1  # augmented copies of each sample per step
    w_smooth: float = 0.05
    w_tv: float = 0.0  # total variation prior: mean |x[i+1] − x[i]| over both spatial axes (DeepInversion's R_TV)
    w_l2: float = 0.0  # l2 prior: mean x² (DeepInversion's R_l2)
    # the starting point: gaussian | pink (dfc.synth.sample_sources.pink_samples); None: pink for `inception`, whose loss says
    # nothing of the activation statistics (BN-folded ResNet-56 W4A4 on its samples: 83.68 from Gaussian noise, 86.73
    # from pink), gaussian where BN statistics drive them
    init: str | None = None
    w_inception: float = 0.1
    inception_scale: float = 1.0
    seed: int = 0
    device: str | None = None  # None: cuda when available, else cpu
    threads: int | None = None  # cpu threads (default: dfc.measure.runtime.cpu_threads, all cores this process may use)
    size: int | None = None  # side of the first phase's inputs in pixels (None: from `synthesis_macs`)
    synthesis_macs: float | None = REDUCED_SIZE_MACS  # per-sample MACs the first phase aims at (None: always the input size)
    min_side: int = 32
    refine_steps: int | None = 0  # steps at the input size after a smaller synthesis size; None: from `refine_work`
    refine_work: float = 0.0  # with refine_steps None: the full-size phase's work as a fraction of the first phase's


@dataclass
class BNTarget:
    tensor: str
    mean: torch.Tensor  # per channel
    std: torch.Tensor
    mask: torch.Tensor  # channels whose std > 0
    floor: torch.Tensor | float = 0.0  # γ²·ε/(σ̂² + ε): the BN's ε in output units, added to the batch variance


def bn_targets(bn_stats: dict, model: onnx.ModelProto) -> list[BNTarget]:
    """Targets N(β, γ²) and variance floors γ²·ε/(σ̂² + ε) of the folded BN outputs that exist in the graph
    (channels with γ = 0 skipped)."""
    tensors = {o for n in model.graph.node for o in n.output}
    out = []
    for name, st in sorted(bn_stats.items()):
        if name not in tensors:
            continue
        gamma2, var = st.gamma.astype(np.float64) ** 2, st.var.astype(np.float64)
        std = torch.tensor(np.sqrt(gamma2), dtype=torch.float32)
        floor = torch.tensor(gamma2 * st.eps / (var + st.eps), dtype=torch.float32)
        out.append(BNTarget(name, torch.tensor(st.beta, dtype=torch.float32), std, std > 1e-6, floor))
    return out


def kl_to_target(y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, mask: torch.Tensor,
                 floor: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Mean over channels of KL(N(mean, std²) ‖ N(μ̃, σ̃² + floor + 1e-8)), μ̃/σ̃² the batch statistics of y
    per channel (axis 1, over every other axis)."""
    dims = [d for d in range(y.dim()) if d != 1]
    n = y.numel() / y.shape[1]
    # var = E[y²] − E[y]² from two plain sums: 3× faster than mean() + var() with their backward on CPU (the
    # statistics cost as much as the forward pass otherwise); clamped where float32 rounding makes it negative
    mu = y.sum(dim=dims) / n
    var = ((y * y).sum(dim=dims) / n - mu * mu).clamp_min(0.0) + floor + 1e-8
    kl = 0.5 * torch.log(var) - torch.log(std) + (std ** 2 + (mean - mu) ** 2) / (2 * var) - 0.5
    return kl[mask].mean()


def j_kl(x: torch.Tensor, watched: dict[str, torch.Tensor], targets: list[BNTarget]) -> torch.Tensor:
    """J_KL: mean over the BN layers (and the input normalisation) of their mean channel KL."""
    c = x.shape[1]
    terms = [kl_to_target(x, torch.zeros(c, device=x.device), torch.ones(c, device=x.device),
                          torch.ones(c, dtype=torch.bool, device=x.device))]
    for t in targets:
        floor = t.floor.to(x.device) if isinstance(t.floor, torch.Tensor) else t.floor
        terms.append(kl_to_target(watched[t.tensor], t.mean.to(x.device), t.std.to(x.device), t.mask.to(x.device), floor))
    return torch.stack(terms).mean()


def pick_device(requested: str | None) -> torch.device:
    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise DfcError(f"--device {requested}: CUDA is not available on this machine")
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Depthwise Gaussian blur, σ = 1, 5×5, reflect padding."""
    r = torch.arange(-2, 3, dtype=x.dtype, device=x.device)
    k1 = torch.exp(-(r ** 2) / 2)
    k1 = k1 / k1.sum()
    k = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, 5, 5)
    return F.conv2d(F.pad(x, [2, 2, 2, 2], mode="reflect"), k, groups=x.shape[1])


def smoothness(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4 or min(x.shape[2:]) < 3:
        return x.new_zeros(())
    return ((x - _blur(x)) ** 2).mean()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels over the last two axes (anisotropic TV, l1)."""
    if x.dim() < 4:
        return x.new_zeros(())
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def augment(x: torch.Tensor, copies: int, gen: torch.Generator) -> torch.Tensor:
    """Each sample `copies` times, each copy randomly crop-resized (scale 0.8-1), flipped and cut out
    (a square of a quarter of the side set to 0, the normalised mean)."""
    if x.dim() != 4:
        return x.repeat(copies, *[1] * (x.dim() - 1))
    x = x.repeat(copies, 1, 1, 1)
    n, _, h, w = x.shape
    dev = x.device
    u = lambda *s: torch.rand(*s, generator=gen, device="cpu").to(dev)  # noqa: E731
    scale = 0.8 + 0.2 * u(n)
    flip = torch.where(u(n) < 0.5, -1.0, 1.0).to(dev)
    tx, ty = (1 - scale) * (2 * u(n) - 1), (1 - scale) * (2 * u(n) - 1)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = scale * flip, tx, scale, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    side = max(1, h // 4)
    cy, cx = (u(n) * (h - side)).long(), (u(n) * (w - side)).long()
    rows, cols = torch.arange(h, device=dev), torch.arange(w, device=dev)
    inside = ((rows[None, :] >= cy[:, None]) & (rows[None, :] < cy[:, None] + side))[:, :, None] & \
             ((cols[None, :] >= cx[:, None]) & (cols[None, :] < cx[:, None] + side))[:, None, :]
    return x * (~inside)[:, None].to(x.dtype)


class Inverter:
    """Generates samples for a (BN-folded) float model from its BN statistics."""

    def __init__(self, model: onnx.ModelProto, bn_stats: dict, input_range=None, config: InverterConfig | None = None):
        from dfc.synth.torch_exec import TorchGraph

        self.cfg = cfg = config or InverterConfig()
        if cfg.method not in METHODS:
            raise DfcError(f"unknown inverter method {cfg.method!r}; choose from {', '.join(METHODS)}")
        if cfg.init is None:
            self.cfg = cfg = replace(cfg, init="pink" if cfg.method == "inception" else "gaussian")
        if cfg.init not in INITS:
            raise DfcError(f"unknown inverter start {cfg.init!r}; choose from {', '.join(INITS)}")
        for key in ("samples", "batch", "steps", "copies"):
            if getattr(cfg, key) is not None and int(getattr(cfg, key)) < 1:
                raise DfcError(f"inverter {key} must be >= 1, got {getattr(cfg, key)!r}")
        if not cfg.lr > 0:
            raise DfcError(f"inverter learning rate must be > 0, got {cfg.lr!r}")
        self.targets = bn_targets(bn_stats, model)
        if cfg.method != "inception" and not self.targets:
            raise DfcError("the BNS inverter needs BatchNorm statistics and the model has none; use --calib gaussian")
        self.device = pick_device(cfg.device)
        if self.device.type == "cpu":
            torch.set_num_threads(cfg.threads or cpu_threads())
        self.net = TorchGraph(model, watch=[t.tensor for t in self.targets]).to(self.device).eval()
        for p in self.net.buffers():
            p.requires_grad_(False)
        self.input_range = input_range
        self.shape = input_shape(model)
        self.macs, self.stride, self.volume = model_cost(model)
        self._synthesis_shapes: dict[tuple, tuple[int, ...]] = {}
        self.last_jkl: float | None = None

    def _clamp(self, x: torch.Tensor) -> None:
        if self.input_range is None:
            return
        lo, hi = (torch.as_tensor(np.asarray(v, np.float32), device=x.device).reshape(1, -1, *[1] * (x.dim() - 2))
                  for v in self.input_range)
        x.data = torch.maximum(torch.minimum(x.data, hi), lo)

    def loss(self, x: torch.Tensor, targets_cls: torch.Tensor | None, gen: torch.Generator) -> tuple[torch.Tensor, float]:
        cfg = self.cfg
        xa = augment(x, cfg.copies, gen)
        outs, watched = self.net(self._layout(xa))
        total = cfg.w_smooth * smoothness(x)
        if cfg.w_tv:
            total = total + cfg.w_tv * total_variation(x)
        if cfg.w_l2:
            total = total + cfg.w_l2 * x.pow(2).mean()
        jkl = None
        if cfg.method in ("bns", "bns+inception"):
            jkl = j_kl(xa, watched, self.targets)
            total = total + jkl
        if cfg.method in ("inception", "bns+inception"):
            logits = outs[0].reshape(outs[0].shape[0], -1)
            picked = logits.gather(1, targets_cls.repeat(cfg.copies)[:, None])[:, 0]
            inc = torch.exp(-picked / cfg.inception_scale).mean()
            total = total + (cfg.w_inception * inc if cfg.method == "bns+inception" else inc)
        return total, float(jkl.detach()) if jkl is not None else float("nan")

    def generate(self, progress: bool = True, trace: dict | None = None) -> np.ndarray:
        """The samples: per batch, Adam steps at the synthesis size (`synthesis_shape`), then, when that is below
        the input size, the batch bilinearly upsampled (and refined there: `refine_steps`).
        `trace` (a dict) receives what was done: samples, steps, sizes and steps run per phase, J_KL at the end of
        each, seconds."""
        from dfc.progress import progress_bar

        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        samples, steps, batch = self.plan()
        batches = [min(batch, samples - s) for s in range(0, samples, batch)]
        low = self.synthesis_shape()
        refine = self.refine_steps(steps)
        phases = [(low, steps)] + ([(self.shape, refine)] if refine else [])
        out = []
        n_classes = None
        total_steps = len(batches) * sum(st for _, st in phases)
        bar = progress_bar(range(total_steps), desc=f"{cfg.method} inverter", total=total_steps, unit="step") if progress else None
        it = iter(bar) if bar is not None else None
        log = [{"shape": list(shp), "steps": 0, "seconds": 0.0, "j_kl": None} for shp, _ in phases]
        for b in batches:
            x = self._start((b,) + low, gen)
            targets_cls = None
            if cfg.method != "bns":
                if n_classes is None:
                    with torch.no_grad():
                        n_classes = int(self.net(self._layout(x[:1]))[0][0].reshape(1, -1).shape[1])
                targets_cls = torch.randint(0, n_classes, (b,), generator=gen).to(self.device)
            for k, (shp, phase_steps) in enumerate(phases):
                if tuple(x.shape[1:]) != shp:
                    x = F.interpolate(x.detach(), size=list(shp[1:]), mode="bilinear", align_corners=False)
                t0 = time.perf_counter()
                rounds = [phase_steps] if k == 0 else [min(REFINE_ROUND, phase_steps - s)
                                                      for s in range(0, phase_steps, REFINE_ROUND)]
                for n in rounds:  # at full size: short rounds, each with a fresh Adam (`refine_steps`)
                    x = self._optimise(x, targets_cls, n, gen, it, bar)
                log[k]["steps"] += phase_steps
                log[k]["seconds"] += time.perf_counter() - t0
                log[k]["j_kl"] = self.last_jkl
            if tuple(x.shape[1:]) != self.shape:  # synthesized smaller, no refinement at full size
                x = F.interpolate(x.detach(), size=list(self.shape[1:]), mode="bilinear", align_corners=False)
            out.append(x.detach().cpu().numpy())
        if bar is not None and hasattr(bar, "close"):
            bar.close()
        if trace is not None:
            trace.update(samples=samples, batch=batch, steps=steps)
            trace["phases"] = [{**p, "seconds": round(p["seconds"], 1),
                                "j_kl": None if p["j_kl"] is None or p["j_kl"] != p["j_kl"] else round(p["j_kl"], 5)}
                               for p in log]
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)

    def plan(self) -> tuple[int, int, int]:
        """(samples, steps, batch): the configured values, and where not given, the work budget decides. The cost of a
        step on CPU follows the activation elements it moves more than the MACs (depthwise convs, clips, the BN
        statistics are memory-bound), so the work is samples × steps × V, V the activation elements per sample at
        the synthesis size. Within `budget`: at most MAX_SAMPLES samples and MAX_STEPS steps; samples give way first
        (the nearest multiple of 32, at least 32) so that about MIN_STEPS steps fit, then steps. The CIFAR ResNets
        keep 256 samples (ResNet-20: 200 steps, ResNet-56: 102); EfficientNet-Lite0 at 128² gets 64 samples × 100
        steps. The budget is about 2 minutes of ResNet-56 synthesis on 2 CPU cores; J_KL still falls after it
        (ResNet-56: 0.025 at 100 steps, 0.014 at 200) but calibration does not gain (W4A4 88.10 / 87.81 / 87.61 at
        100 / 150 / 200 steps, W8A8 93.12 / 92.82 at 100 / 150)."""
        cfg = self.cfg
        low = self.synthesis_shape()
        volume = max(1.0, self.volume * area_ratio(low, self.shape))
        samples = cfg.samples
        if samples is None:
            fit = int(round(cfg.budget / (MIN_STEPS * volume) / 32)) * 32
            samples = int(min(MAX_SAMPLES, max(32, fit)))
        steps = cfg.steps
        if steps is None:
            steps = int(min(MAX_STEPS, max(MIN_STEPS, cfg.budget / (samples * volume))))
        return int(samples), int(steps), int(cfg.batch or samples)

    def refine_steps(self, steps: int) -> int:
        """Steps at the input size after a smaller first phase of `steps`: `refine_steps` when given, else the number
        whose work (samples × steps × activations at the input size) is `refine_work` times the first phase's times
        the share of the input's pixels the upsampling interpolates, steps × a × (1 − a) × refine_work with a = low
        pixels / input pixels (EfficientNet-Lite0, 128² for 224²: 10 steps of 100; UltraFace, 240×300 for 240×320:
        3 of 100, where a plain work share gave it 30); run in rounds of `REFINE_ROUND` steps, each with a fresh
        Adam. Upsampling moves the statistics the first phase matched: EfficientNet-Lite0's 64 samples from J_KL
        0.15 at 128² to 0.52 at 224² (64 real images: 0.08). W4A8 calibration on them, mean KL to fp32 on the 500
        real images (top-1): upsampled 0.253 (80.2); one round 0.227 / 0.232 (two seeds); two rounds 0.207 / 0.183
        (81.8 / 84.8); runs of 5 + 5 + 10 steps 0.196, + 20 more 0.181 (83.6). One Adam run of 33 steps instead brought
        J_KL to 0.11 and calibration nowhere (0.258 / 0.263, 80.4 / 80.2): fresh Adam moves every pixel by about its
        lr in the first steps, and what helps is those moves, not a lower J_KL."""
        low = self.synthesis_shape()
        if low == self.shape:
            return 0
        if self.cfg.refine_steps is not None:
            return int(self.cfg.refine_steps)
        a = area_ratio(low, self.shape)
        return int(round(steps * a * (1 - a) * self.cfg.refine_work))

    def synthesis_shape(self) -> tuple[int, ...]:
        """The per-sample shape the first phase optimises at: the input shape, or for a large image input a smaller
        one with the same aspect whose cost per sample is about `synthesis_macs` (the model's MACs scale with the
        pixel count), each side a multiple of the model's total stride and at least `min_side`; or the shorter side
        scaled to `size` when given. Only where the graph runs at that size (convolutions and global pooling);
        otherwise the input shape."""
        key = (self.cfg.size, self.cfg.synthesis_macs, self.macs)
        if key not in self._synthesis_shapes:  # plan() and generate() both ask; the size check runs the graph
            self._synthesis_shapes[key] = self._smaller_shape()
        return self._synthesis_shapes[key]

    def _smaller_shape(self) -> tuple[int, ...]:
        from dfc.synth.resolution import reduced_shape

        def runs(low: tuple[int, ...]) -> bool:
            with torch.no_grad():
                self.net(self._layout(torch.zeros((2,) + low, device=self.device)))
            return True

        return reduced_shape(self.shape, self.macs, self.stride, runs, self.cfg.synthesis_macs, self.cfg.size,
                             self.cfg.min_side)

    def _start(self, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
        """The batch the optimisation starts from: N(0, 1), or pink noise (`init`) drawn from the same generator."""
        if self.cfg.init == "pink":
            from dfc.synth.sample_sources import pink_samples

            rng = np.random.default_rng(int(torch.randint(0, 2 ** 31 - 1, (1,), generator=gen)))
            return torch.from_numpy(pink_samples(shape[1:], shape[0], rng)).to(self.device)
        return torch.randn(shape, generator=gen).to(self.device)

    @staticmethod
    def _layout(x: torch.Tensor) -> torch.Tensor:
        """channels-last for 4-D inputs: torch's CPU convolutions and the per-channel statistics run 1.5× faster."""
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x

    def _optimise(self, x: torch.Tensor, targets_cls, steps: int, gen: torch.Generator, it, bar) -> torch.Tensor:
        """`steps` Adam steps on a copy of `x` (clamped to the input range after each)."""
        cfg = self.cfg
        x = x.detach().clone()
        self._clamp(x)
        x.requires_grad_(True)
        opt = torch.optim.Adam([x], lr=cfg.lr)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            total, jkl = self.loss(x, targets_cls, gen)
            if not torch.isfinite(total):
                raise DfcError(f"{cfg.method} inverter: the loss is not finite ({float(total.detach())}): activations overflow "
                               "float32 (very large weights or BN statistics?)")
            total.backward()
            opt.step()
            self._clamp(x)
            self.last_jkl = jkl
            if it is not None:
                next(it, None)
                if hasattr(bar, "set_postfix_str"):
                    bar.set_postfix_str(f"J_KL {jkl:.3f}" if jkl == jkl else f"loss {float(total.detach()):.3f}", refresh=False)
        return x


def score(model: onnx.ModelProto, bn_stats: dict, x: np.ndarray, batch: int = 256) -> float:
    """J_KL of a data set against the model's BN statistics (paper §4.4), over batches of `batch`
    (the mean of the per-batch J_KL, so that sets of different sizes compare at the same batch size)."""
    from dfc.synth.torch_exec import TorchGraph

    targets = bn_targets(bn_stats, model)
    if not targets:
        raise DfcError("the model has no BatchNorm statistics to score against")
    net = TorchGraph(model, watch=[t.tensor for t in targets]).eval()
    vals = []
    with torch.no_grad():
        for s in range(0, len(x), batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[s:s + batch], dtype=np.float32))
            if len(xb) < 2:
                continue
            _, watched = net(xb)
            vals.append(float(j_kl(xb, watched, targets)))
    if not vals:
        raise DfcError("bns-score needs at least 2 samples")
    return float(np.mean(vals))
