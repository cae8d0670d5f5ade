"""The BNS inverter: synthetic calibration data from the model itself (Haroush et al., "The Knowledge
Within: Methods for Data-Free Model Compression", CVPR 2020, §3 and Algorithm 1).

Random inputs x (in the model's normalised input space) are optimised with Adam so that:
- `bns`: J_KL = mean over BN layers ℓ of mean over channels c of
      KL(N(μ̂, σ̂²) ‖ N(μ̃, σ̃²)) = log(σ̃/σ̂) + (σ̂² + (μ̂ − μ̃)²)/(2σ̃²) − 1/2          (Eq. 1-3)
  with (μ̂, σ̂) the BN's running statistics and (μ̃, σ̃² + 1e-8) the batch's per-channel statistics.
  dfc folds BN, so the statistics are compared at the folded layer's output, where BN's output is
  N(β, γ²): KL is invariant under the same affine map of both Gaussians, so this equals the KL at
  the BN input. The input normalisation counts as one more BN (target N(0, 1) per channel).
- `inception`: mean of e^(−logit[target]/scale) over the batch, random target classes.
- `bns+inception`: J_KL + w_inception · inception.
Every method adds the smoothing prior w_smooth · mean((x − blur(x))²) (Gaussian blur, σ = 1).
Each step: in-batch augmentation (each sample duplicated `copies` times, each copy randomly
crop-resized, flipped and cut out), the loss, an Adam step on x, then x is clamped to the valid
input range. CUDA is used when available.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from dfc.errors import DfcError

METHODS = ("bns", "inception", "bns+inception")


@dataclass
class InverterConfig:
    method: str = "bns"
    samples: int = 256
    batch: int = 256  # samples optimised together (BN statistics are batch statistics)
    steps: int = 200
    lr: float = 0.1
    copies: int = 1  # augmented copies of each sample per step
    w_smooth: float = 0.05
    w_inception: float = 0.1
    inception_scale: float = 1.0
    seed: int = 0
    device: str | None = None  # None: cuda when available, else cpu
    threads: int | None = None  # cpu threads (default: all cores)


@dataclass
class BNTarget:
    tensor: str
    mean: torch.Tensor  # per channel
    std: torch.Tensor
    mask: torch.Tensor  # channels whose std > 0


def bn_targets(bn_stats: dict, model: onnx.ModelProto) -> list[BNTarget]:
    """Targets N(β, γ²) of the folded BN outputs that exist in the graph (channels with γ = 0 skipped)."""
    tensors = {o for n in model.graph.node for o in n.output}
    out = []
    for name, st in sorted(bn_stats.items()):
        if name not in tensors:
            continue
        std = torch.tensor(np.abs(st.gamma), dtype=torch.float32)
        out.append(BNTarget(name, torch.tensor(st.beta, dtype=torch.float32), std, std > 1e-6))
    return out


def kl_to_target(y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over channels of KL(N(mean, std²) ‖ N(μ̃, σ̃² + 1e-8)), μ̃/σ̃² the batch statistics of y
    per channel (axis 1, over every other axis)."""
    dims = [d for d in range(y.dim()) if d != 1]
    mu = y.mean(dim=dims)
    var = y.var(dim=dims, unbiased=False) + 1e-8
    kl = 0.5 * torch.log(var) - torch.log(std) + (std ** 2 + (mean - mu) ** 2) / (2 * var) - 0.5
    return kl[mask].mean()


def j_kl(x: torch.Tensor, watched: dict[str, torch.Tensor], targets: list[BNTarget]) -> torch.Tensor:
    """J_KL: mean over the BN layers (and the input normalisation) of their mean channel KL."""
    c = x.shape[1]
    terms = [kl_to_target(x, torch.zeros(c, device=x.device), torch.ones(c, device=x.device),
                          torch.ones(c, dtype=torch.bool, device=x.device))]
    for t in targets:
        terms.append(kl_to_target(watched[t.tensor], t.mean.to(x.device), t.std.to(x.device), t.mask.to(x.device)))
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
        from dfc.torch_exec import TorchGraph

        self.cfg = cfg = config or InverterConfig()
        if cfg.method not in METHODS:
            raise DfcError(f"unknown inverter method {cfg.method!r}; choose from {', '.join(METHODS)}")
        for key in ("samples", "batch", "steps", "copies"):
            if int(getattr(cfg, key)) < 1:
                raise DfcError(f"inverter {key} must be >= 1, got {getattr(cfg, key)!r}")
        if not cfg.lr > 0:
            raise DfcError(f"inverter learning rate must be > 0, got {cfg.lr!r}")
        self.targets = bn_targets(bn_stats, model)
        if cfg.method != "inception" and not self.targets:
            raise DfcError("the BNS inverter needs BatchNorm statistics and the model has none; use --calib gaussian")
        self.device = pick_device(cfg.device)
        if self.device.type == "cpu":
            torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
        self.net = TorchGraph(model, watch=[t.tensor for t in self.targets]).to(self.device).eval()
        for p in self.net.buffers():
            p.requires_grad_(False)
        self.input_range = input_range
        self.shape = _input_shape(model)
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
        outs, watched = self.net(xa)
        total = cfg.w_smooth * smoothness(x)
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

    def generate(self, progress: bool = True) -> np.ndarray:
        from dfc.progress import progress_bar

        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        batches = [min(cfg.batch, cfg.samples - s) for s in range(0, cfg.samples, cfg.batch)]
        out = []
        n_classes = None
        bar = progress_bar(range(len(batches) * cfg.steps), desc=f"{cfg.method} inverter", total=len(batches) * cfg.steps,
                           unit="step") if progress else None
        it = iter(bar) if bar is not None else None
        for b in batches:
            x = torch.randn((b,) + self.shape, generator=gen).to(self.device)
            self._clamp(x)
            x.requires_grad_(True)
            opt = torch.optim.Adam([x], lr=cfg.lr)
            targets_cls = None
            if cfg.method != "bns":
                if n_classes is None:
                    with torch.no_grad():
                        n_classes = int(self.net(x[:1])[0][0].reshape(1, -1).shape[1])
                targets_cls = torch.randint(0, n_classes, (b,), generator=gen).to(self.device)
            for _ in range(cfg.steps):
                opt.zero_grad(set_to_none=True)
                total, jkl = self.loss(x, targets_cls, gen)
                if not torch.isfinite(total):
                    raise DfcError(f"{cfg.method} inverter: the loss is not finite ({float(total)}): activations overflow "
                                   "float32 (very large weights or BN statistics?)")
                total.backward()
                opt.step()
                self._clamp(x)
                self.last_jkl = jkl
                if it is not None:
                    next(it, None)
                    if hasattr(bar, "set_postfix_str"):
                        bar.set_postfix_str(f"J_KL {jkl:.3f}" if jkl == jkl else f"loss {float(total):.3f}", refresh=False)
            out.append(x.detach().cpu().numpy())
        if bar is not None and hasattr(bar, "close"):
            bar.close()
        return np.concatenate(out).astype(np.float32)


def _input_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    from dfc import calibration, ir

    return calibration.input_spec(ir.import_graph(model))[1]


def score(model: onnx.ModelProto, bn_stats: dict, x: np.ndarray, batch: int = 256) -> float:
    """J_KL of a data set against the model's BN statistics (paper §4.4), over batches of `batch`
    (the mean of the per-batch J_KL, so that sets of different sizes compare at the same batch size)."""
    from dfc.torch_exec import TorchGraph

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
