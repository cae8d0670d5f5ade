"""UDFC closed forms (numpy only, no graph code): the scales that rebuild a damaged channel.

Setting. A producer layer (BN folded) makes pre-activations z_c = F_c·x + b_c; a positively
homogeneous path (ReLU, pooling, flatten, ...) takes a_c = act(z_c) to the consumer, which
multiplies channel c by its input-channel weights W2[:, c]. If z_n = s·z_m with s ≥ 0 then
relu(z_n) = s·relu(z_m), so

    W2[:, m]·a_m + W2[:, n]·a_n = (W2[:, m] + s·W2[:, n])·a_m

and channel n can be deleted after `W2[:, m] += s·W2[:, n]` with no change of the output (the
BN-aware exact case: F and b are the *folded* filter and bias, so proportional BN outputs merge
exactly; Neuron Merging's code divides by the BN ratio instead, which is wrong).

Weights loss (the issue's form). In general z_n is only close to s·z_m; s minimises

    ℓp(s) = ‖F_n − s·Q_m‖² + αp·(b_n − s·b_m)²                    (convex quadratic in s)
    ℓp'(s) = 0  ⇒  s* = (⟨F_n, Q_m⟩ + αp·b_n·b_m) / (‖Q_m‖² + αp·b_m²)
    ℓp(s*) = ‖F_n‖² + αp·b_n² − (⟨F_n, Q_m⟩ + αp·b_n·b_m)² / (‖Q_m‖² + αp·b_m²)

with Q_m the partner's filter as it will run (quantized, or F_m in float). Every quantity is an
inner product ⟨u, v⟩ = u_F·v_F + α·u_b·v_b, so the whole method runs on *Gram matrices*:
s* = G[n, m] / G[m, m], ℓ(s*) = G[n, n] − G[n, m]² / G[m, m].

BN-moment loss. The same quadratic with the inner product ⟨a_n, a_m⟩ = E[act(z_n)·act(z_m)] of the
activated channels under the Gaussian model that BN statistics give: z_c ~ N(β_c, γ_c²) (BN output
mean and std) with correlations ρ_nm = cos(F_n, F_m) (inputs taken as isotropic). This is the
reconstruction error of what the consumer actually sees, E‖a_n − s·a_m‖², computed from weights and
BN parameters alone (`moment_gram`). A quantized channel runs with std γ_c·‖Q_c‖/‖F_c‖ and
correlation cos(·, Q_c).

Quantized kept channel m: the same problem with n = m, target the float channel, source the
quantized one: W2[:, m] *= s′* = G[F_m, Q_m] / G[Q_m, Q_m]; in the weights loss
s′* = (⟨F_m, Q_m⟩ + αq·b_m²) / (‖Q_m‖² + αq·b_m²)   (= 1 when Q_m = F_m).

Vector variant: rebuild n from all kept channels, min_{c ≥ 0} E‖a_n − Σ_j c_j·a_j‖²
= cᵀ·S·c − 2·cᵀ·g + G[n, n] with S the kept channels' Gram and g their cross terms with n
(non-negative least squares, scipy, on the Cholesky factor of S).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls


def merge_scales(f_drop: np.ndarray, b_drop: np.ndarray, q_keep: np.ndarray, b_keep: np.ndarray,
                 alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights loss: s*[i, j] and ℓp(s*)[i, j] for rebuilding dropped channel i from kept channel j,
    for all pairs at once from Gram products (rows of f_drop / q_keep are flattened filters; a
    channel fed by several layers, e.g. a residual stream, has one bias per layer: b rows of length
    K, and the bias term becomes α·‖b_n − s·b_m‖²)."""
    cross, source, target = weights_grams(f_drop, b_drop, q_keep, b_keep, alpha)
    return scales_from_gram(cross, np.diag(source), target)


def weights_grams(f_t: np.ndarray, b_t, f_s: np.ndarray, b_s, alpha: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cross [T, S], source Gram [S, S], target squared norms [T]) of the weights inner product
    ⟨u, v⟩ = u_F·v_F + α·u_b·v_b between target rows (f_t, b_t) and source rows (f_s, b_s)."""
    ft, fs = np.asarray(f_t, np.float64), np.asarray(f_s, np.float64)
    bt, bs = _bias_rows(b_t, len(ft)), _bias_rows(b_s, len(fs))
    cross = ft @ fs.T + alpha * bt @ bs.T
    source = fs @ fs.T + alpha * bs @ bs.T
    target = (ft ** 2).sum(1) + alpha * (bt ** 2).sum(1)
    return cross, source, target


def scales_from_gram(cross: np.ndarray, source_sq: np.ndarray, target_sq: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """s[i, j] = G[i, j] / G[j, j] and ℓ(s)[i, j] = G[i, i] − G[i, j]² / G[j, j] (s = 0 and ℓ = G[i, i]
    where source j is identically zero)."""
    den = np.asarray(source_sq, np.float64)
    ok = den > 0
    safe = np.where(ok, den, 1.0)
    s = np.where(ok, cross / safe, 0.0)
    loss = np.asarray(target_sq, np.float64)[:, None] - np.where(ok, cross ** 2 / safe, 0.0)
    return s, np.maximum(loss, 0.0)


def merge_loss(s: float, f_n, b_n: float, q_m, b_m: float, alpha: float) -> float:
    """ℓp(s) = ‖F_n − s·Q_m‖² + α·(b_n − s·b_m)² (for checks against a numeric minimiser)."""
    d = np.asarray(f_n, np.float64) - s * np.asarray(q_m, np.float64)
    return float((d ** 2).sum() + alpha * (b_n - s * b_m) ** 2)


def best_partners(scales: np.ndarray, losses: np.ndarray) -> list[tuple[int, float, float] | None]:
    """Per dropped channel i: (partner j, s*, ℓ(s*)) with the smallest loss among s* > 0, or None
    when no kept channel has a positive scale (ReLU only commutes with s ≥ 0: no merge then)."""
    out: list[tuple[int, float, float] | None] = []
    for s_row, l_row in zip(scales, losses):
        ok = np.flatnonzero(s_row > 0)
        if ok.size == 0:
            out.append(None)
            continue
        j = int(ok[np.argmin(l_row[ok])])
        out.append((j, float(s_row[j]), float(l_row[j])))
    return out


def nnls_from_gram(source: np.ndarray, cross_row: np.ndarray, target_sq: float) -> tuple[np.ndarray, float]:
    """c ≥ 0 minimising cᵀ·S·c − 2·cᵀ·g + t (= E‖a_n − Σ c_j·a_j‖²), and that minimum.
    With S = L·Lᵀ this is ‖Lᵀ·c − L⁻¹·g‖² + t − ‖L⁻¹·g‖²."""
    s = np.asarray(source, np.float64)
    jitter = 1e-10 * max(float(np.trace(s)) / max(len(s), 1), 1e-30)
    lower = np.linalg.cholesky(s + jitter * np.eye(len(s)))
    y = np.linalg.solve(lower, np.asarray(cross_row, np.float64))
    c, rnorm = nnls(lower.T, y)
    return c, float(max(rnorm ** 2 + target_sq - y @ y, 0.0))


def requant_scales(cross_diag: np.ndarray, source_sq: np.ndarray) -> np.ndarray:
    """s′*[m] = G[F_m, Q_m] / G[Q_m, Q_m] per channel (1 where the quantized channel is zero)."""
    den = np.asarray(source_sq, np.float64)
    return np.where(den > 0, np.asarray(cross_diag, np.float64) / np.where(den > 0, den, 1.0), 1.0)


def requant_losses(cross_diag: np.ndarray, source_sq: np.ndarray, target_sq: np.ndarray, s: np.ndarray) -> np.ndarray:
    """ℓq(s)[m] = G[F_m, F_m] − 2·s·G[F_m, Q_m] + s²·G[Q_m, Q_m]."""
    return np.maximum(np.asarray(target_sq) - 2 * s * np.asarray(cross_diag) + s ** 2 * np.asarray(source_sq), 0.0)


# ------------------------------------------------------------------ BN-moment model

ACTIVATIONS = {
    "identity": lambda z, slope: z,
    "relu": lambda z, slope: np.maximum(z, 0.0),
    "leaky": lambda z, slope: np.where(z > 0, z, slope * z),
}


def moment_gram(rows: np.ndarray, means: np.ndarray, stds: np.ndarray, activation: str = "relu",
                slope: float = 0.01, samples: int = 16384, seed: int = 0) -> np.ndarray:
    """G[i, j] = E[act(z_i)·act(z_j)] for z ~ N(means, D·R·D), D = diag(stds), R = the cosines of
    `rows` (each channel's filter, in the same input space), estimated on `samples` draws from a
    fixed seed (the Gram of a Gaussian model: data-free and deterministic)."""
    rows = np.asarray(rows, np.float64)
    norms = np.linalg.norm(rows, axis=1)
    unit = rows / np.where(norms > 0, norms, 1.0)[:, None]
    corr = unit @ unit.T
    np.fill_diagonal(corr, 1.0)
    cov = np.asarray(stds, np.float64)[:, None] * corr * np.asarray(stds, np.float64)[None, :]
    vals, vecs = np.linalg.eigh(cov)
    root = vecs * np.sqrt(np.clip(vals, 0.0, None))[None, :]
    z = np.asarray(means, np.float64)[None, :] + np.random.default_rng(seed).standard_normal((samples, len(rows))) @ root.T
    a = ACTIVATIONS[activation](z, slope)
    return a.T @ a / samples


def _bias_rows(b, n: int) -> np.ndarray:
    """Biases as [n, K] (a scalar bias per channel is K = 1)."""
    return np.asarray(b, np.float64).reshape(n, -1)
