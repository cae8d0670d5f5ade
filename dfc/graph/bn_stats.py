"""BatchNorm statistics kept after folding, keyed by the tensor whose channels they describe.

When BN is folded into its producer, y = γ·(x − μ)/√(σ² + ε) + β becomes part of the producer's
weights, and the statistics vanish from the graph. Later data-free passes need them (UDFC's
reconstruction error, the BNS inverter's KL target), so `fold-bn` stores them here under the name
of the tensor that now carries y, and the store is written into the output model's metadata
(key `dfc.bn_stats`) so a later run on a dfc output still finds them.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import numpy as np

METADATA_KEY = "dfc.bn_stats"  # the file format: models written by any dfc version carry this key
ESTIMATED = "estimated"  # BNStats.source of moments measured on synthetic samples (passes/moments.py), not BN's


@dataclass
class BNStats:
    """Per-channel statistics of one BN: running mean/var of its input, affine γ/β, and ε."""

    mean: np.ndarray
    var: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    eps: float
    source: str = ""  # name of the BN node they came from

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    def output_mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of the BN *output* per channel when its input has the running statistics: x ~ N(μ, σ²) gives
        y ~ N(β, γ²·σ²/(σ² + ε)). The ε term matters where σ² is not ≫ ε: a channel that was (nearly) constant in
        training (σ² ≈ 0, common in TF-trained mobile models with ε = 1e-3) has an output std of ≈ 0, not |γ|."""
        var = self.var.astype(np.float64)
        return self.beta.astype(np.float64), np.abs(self.gamma.astype(np.float64)) * np.sqrt(var / (var + self.eps))

    def select(self, keep: np.ndarray) -> "BNStats":
        """The statistics of the kept channels only (for channel surgery)."""
        return BNStats(self.mean[keep], self.var[keep], self.gamma[keep], self.beta[keep], self.eps, self.source)

    def to_json(self) -> dict:
        """Each array as base64 of its little-endian float32 bytes: exact, and about a quarter of the decimal list's
        size (PP-OCR's statistics: 172 kB of JSON lists, a third of its float weights' size)."""
        out = {k: _pack(getattr(self, k)) for k in ARRAYS}
        return {**out, "eps": float(self.eps), "source": self.source}

    @staticmethod
    def from_json(d: dict) -> "BNStats":
        """Reads both forms: base64 float32 (this version) and decimal lists (models written before it)."""
        arr = lambda k: _unpack(d[k])  # noqa: E731
        return BNStats(arr("mean"), arr("var"), arr("gamma"), arr("beta"), float(d["eps"]), d.get("source", ""))


ARRAYS = ("mean", "var", "gamma", "beta")


def _pack(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def _unpack(v) -> np.ndarray:
    if isinstance(v, str):
        return np.frombuffer(base64.b64decode(v), dtype="<f4").astype(np.float32)
    return np.asarray(v, dtype=np.float32)


class BNStatsStore(dict):
    """tensor name -> BNStats."""

    def to_metadata(self) -> str:
        """The BN statistics as JSON (estimated moments left out: they are not BN statistics)."""
        return json.dumps({k: v.to_json() for k, v in sorted(self.items()) if v.source != ESTIMATED},
                          separators=(",", ":"))

    def measured(self) -> bool:
        """Whether any entry is real BN statistics (not estimated moments)."""
        return any(v.source != ESTIMATED for v in self.values())

    @staticmethod
    def from_metadata(text: str) -> "BNStatsStore":
        store = BNStatsStore()
        for k, v in json.loads(text).items():
            store[k] = BNStats.from_json(v)
        return store

    def rename(self, old: str, new: str) -> None:
        if old in self and old != new:
            self[new] = self.pop(old)
