"""The benchmark's configurations: names, what they mean as `dfc.optimize` options, the full matrix and the
quick subset.

Names:
- `fp32`: the original model (the reference every row is compared with);
- `float-{prune}-{comp}`: pruning only, no quantization;
- `{w}{a}-{calib}-{prune}-{comp}`, e.g. `w4a4-bns-p0.3inner-udfc`: dfc, weights/activations at
  `w`/`a` bits (first and last layers 8-bit), data-free calibration `calib` (gaussian, pink, bns, inception,
  bns+inception);
- `ort-{u8|s8}-{gaussian|real}`: ONNX Runtime `quantize_static` (QDQ, per-channel int8 weights, uint8
  or int8 activations), calibrated on Gaussian noise (data-free) or 256 real JPEG images (not data-free).

`prune` is `p0`, `p0.3inner` or `p0.5all` (ratio and scope), or a target the pruning search meets (measured on this
machine): `tlat0.6` (ORT latency ratio), `tsize0.25` (file size ratio), `tmacs0.5` (MACs ratio), all with the
default channel multiple and `all` scope; `comp` is `udfc` (dfc's defaults: udfc
criterion, compensation and requantization) or `none` (plain L1 pruning: `l1-prebn` criterion, no
compensation, no requantization). A `-kd` or `-blocks` suffix fine-tunes the row against fp32 on its synthetic
samples (`--finetune`, default budget), e.g. `w8a8-bns-tlat0.3-udfc-kd`, `w4a8-bns-p0-udfc-blocks`.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from dfc.errors import DfcError

PRECISIONS = ("w8a8", "w6a6", "w4a8", "w4a4")
CALIBS = ("gaussian", "bns", "bns+inception")
PRUNINGS = ("p0", "p0.3inner", "p0.5all")
COMPENSATIONS = ("none", "udfc")
ORT_BASELINES = ("ort-u8-gaussian", "ort-s8-gaussian", "ort-u8-real", "ort-s8-real")
TARGET_ROWS = ("float-tlat0.6-udfc", "float-tmacs0.5-udfc", "w8a8-bns-tlat0.3-udfc", "w8a8-bns-tsize0.25-udfc")
FINETUNED_ROWS = ("float-tlat0.6-udfc-kd", "w8a8-bns-tlat0.3-udfc-kd", "w4a8-bns-p0-udfc-blocks", "w4a4-bns-p0-udfc-kd")
TARGET_KEYS = {"lat": "target_latency", "size": "target_size", "macs": "target_macs"}

_DFC = re.compile(r"^(?:w(?P<w>[2-8])a(?P<a>[2-8])-(?P<calib>gaussian|pink|bns|inception|bns\+inception)|float)"
                  r"-(?:p(?P<ratio>0(?:\.\d+)?)(?P<scope>inner|all)?|t(?P<tkind>lat|size|macs)(?P<tval>(?:0\.\d+|1)))"
                  r"-(?P<comp>none|udfc)(?:-(?P<ft>kd|blocks))?$")
_ORT = re.compile(r"^ort-(?P<act>u8|s8)-(?P<calib>gaussian|real)$")


@dataclass(frozen=True)
class Config:
    name: str
    kind: str  # "reference" | "dfc" | "ort"
    wbits: int | None = None
    abits: int | None = None
    calib: str | None = None  # gaussian | bns | inception | bns+inception | real
    prune: float = 0.0
    scope: str = "inner"
    compensate: str = "udfc"
    activations: str | None = None  # ORT baseline: uint8 | int8
    target: tuple | None = None  # (dfc option, ratio), e.g. ("target_latency", 0.6)
    finetune: str | None = None  # kd | blocks: trained against fp32 on the row's synthetic samples

    @property
    def precision(self) -> str:
        if self.kind == "ort":
            return "W8A8"
        return "float" if self.wbits is None else f"W{self.wbits}A{self.abits}"

    def dfc_options(self) -> dict:
        """`dfc.optimize` options of a dfc row (calibration samples are passed separately)."""
        o: dict = {"prune": self.prune, "prune_scope": self.scope, "compensate": self.compensate}
        if self.target is not None:
            o[self.target[0]] = self.target[1]
        if self.compensate == "none":
            o["criterion"] = "l1-prebn"
        if self.finetune:
            o["finetune"] = self.finetune
        if self.wbits is None:
            o["no_quant"] = True
        else:
            o.update(wbits=self.wbits, abits=self.abits, first_last_bits=8)
        return o


def parse_config(name: str) -> Config:
    if name == "fp32":
        return Config(name, "reference", compensate="none")
    m = _ORT.match(name)
    if m:
        return Config(name, "ort", 8, 8, m["calib"], compensate="none", activations={"u8": "uint8", "s8": "int8"}[m["act"]])
    m = _DFC.match(name)
    if not m:
        raise DfcError(f"--configs: unknown configuration {name!r} (e.g. fp32, w4a4-bns-p0.3inner-udfc, "
                       f"float-p0.5all-none, ort-u8-gaussian)")
    if m["tkind"]:
        return Config(name, "dfc", int(m["w"]) if m["w"] else None, int(m["a"]) if m["a"] else None, m["calib"],
                      0.0, "all", m["comp"], target=(TARGET_KEYS[m["tkind"]], float(m["tval"])), finetune=m["ft"])
    ratio = float(m["ratio"])
    if ratio > 0 and not m["scope"]:
        raise DfcError(f"--configs: {name!r} prunes but names no scope (p{ratio}inner or p{ratio}all)")
    return Config(name, "dfc", int(m["w"]) if m["w"] else None, int(m["a"]) if m["a"] else None, m["calib"],
                  ratio, m["scope"] or "inner", m["comp"], finetune=m["ft"])


def full_matrix() -> list[str]:
    """fp32, the ORT baselines, pruning without quantization, and precision × calibration × pruning × compensation."""
    names = ["fp32", *ORT_BASELINES]
    names += [f"float-{p}-{c}" for p in PRUNINGS[1:] for c in COMPENSATIONS]
    names += [f"{q}-{cal}-{p}-{c}" for q in PRECISIONS for cal in CALIBS for p in PRUNINGS for c in COMPENSATIONS]
    return names + list(TARGET_ROWS) + list(FINETUNED_ROWS)


QUICK_MODELS = ("resnet20",)
QUICK_CONFIGS = (
    "fp32", *ORT_BASELINES,
    "w8a8-gaussian-p0-udfc", "w8a8-bns-p0-udfc",
    "w4a4-gaussian-p0-udfc", "w4a4-bns-p0-none", "w4a4-bns-p0-udfc",
    "float-p0.3inner-none", "float-p0.3inner-udfc",
    "w6a6-bns-p0.3inner-udfc", "w4a8-bns-p0.3inner-udfc",
    "w8a8-bns-p0.5all-none", "w8a8-bns-p0.5all-udfc",
)


def select(patterns: str | None, quick: bool) -> list[Config]:
    """Configurations by comma-separated names or shell patterns (`w4a4-*`), in matrix order; fp32 always first."""
    universe = list(QUICK_CONFIGS) if quick and patterns is None else full_matrix()
    if patterns is None:
        chosen = universe
    else:
        chosen = []
        for pat in (p.strip() for p in patterns.split(",") if p.strip()):
            hits = fnmatch.filter(full_matrix(), pat) if any(ch in pat for ch in "*?[") else [parse_config(pat).name]
            if not hits:
                raise DfcError(f"--configs: pattern {pat!r} matches no configuration")
            chosen += [h for h in hits if h not in chosen]
    if "fp32" in chosen:
        chosen.remove("fp32")
    return [parse_config(n) for n in ["fp32", *chosen]]
