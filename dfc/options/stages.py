"""The options of each pipeline stage, declared once: name, default, CLI flag, help, the rule a value obeys.

`None` defaults are decided at run time from the model or the machine (the help says from what). Options marked
`advanced` are the rare knobs: `dfc optimize --help-all` shows them, `--help` does not.
"""

from __future__ import annotations

from dataclasses import dataclass

from dfc.compensate.compensation import LOSSES, METHODS as COMPENSATIONS, PARTNERS
from dfc.finetune.train import METHODS as FINETUNE_METHODS
from dfc.options.schema import opt
from dfc.prune.criteria import CRITERIA, SCOPES
from dfc.quant.activation_ranges import CALIBRATORS
from dfc.quant.weight_rounding import ROUNDINGS
from dfc.synth.sample_sources import CALIB_METHODS


@dataclass
class PruneOptions:
    title = "pruning"
    prune: float = opt(0.0, "fraction of the scope's channels to remove, in [0, 1)", rule="ratio_below_1", cli=float)
    prune_scope: str = opt("inner", "inner: block-private channels; all: residual streams too", choices=SCOPES, cli=str)
    target_latency: float | None = opt(
        None, "prune until the ORT latency ratio against the original (measured here, batch 64) is at most R; counts "
        "quantization when it is on", rule="ratio", cli=float, metavar="R")
    target_size: float | None = opt(None, "prune until the file is at most R times the original's", rule="ratio",
                                    cli=float, metavar="R")
    target_macs: float | None = opt(None, "prune until the MACs are at most R times the original's", rule="ratio",
                                    cli=float, metavar="R")
    criterion: str = opt(
        "udfc", "channel ranking: udfc (predicted consumer error after compensation), norms of the BN-folded filters "
        "(l1, l2), PAODING scale and pair-wise dense pruning (paoding), l1 of the filters before BN folding (l1-prebn)",
        choices=CRITERIA, cli=str, advanced=True)
    prune_step: float = opt(0.05, "progressive pruning step, re-ranking after each", rule="ratio", cli=float,
                            advanced=True)
    prune_rank: str = opt(
        "auto", "uniform: the same ratio in every layer; global: channels ranked across layers by the share of their "
        "layer's signal they carry; auto: both, the one closer to the model on the synthetic probe inputs kept",
        choices=("auto", "uniform", "global"), cli=str, advanced=True)
    channel_multiple: int | None = opt(
        None, "pruned Conv layers keep a multiple of K channels or stay whole (default: the channel block of ONNX "
        "Runtime's NCHWc conv kernels on this CPU, 16 with AVX-512, 8 with AVX2; 1: off)", rule="int_ge_1", cli=int,
        advanced=True, metavar="K")
    prune_depth: str = opt(
        "on", "toward a target, remove whole residual branches (least error on the synthetic probe per cost saved) "
        "before channels (needs calibration samples, synthesized also with --no-quant)", choices=("on", "off"),
        cli=str, advanced=True)


@dataclass
class CompensationOptions:
    title = "compensation (UDFC)"
    compensate: str = opt("udfc", "data-free compensation of pruned and quantized channels", choices=COMPENSATIONS,
                          cli=str, advanced=True)
    udfc_requant: bool = opt(True, "UDFC rescaling for quantized channels (pruned channels are compensated either way)",
                             rule="bool", switch=False, flag="--no-requant", advanced=True)
    udfc_check: bool = opt(
        True, "keep the pruning compensation only where it lowers the output error on synthetic probe inputs (the "
        "pruned model with and without it are compared and the closer kept)", rule="bool", switch=False,
        flag="--no-udfc-check", advanced=True)
    udfc_partners: str = opt("nnls", "rebuild a pruned channel from one kept channel (single) or a non-negative "
                             "combination (nnls)", choices=PARTNERS, cli=str, advanced=True)
    udfc_loss: str = opt("bn", "reconstruction error on the BN-moment model of the activations (bn) or on the folded "
                         "weights and biases (weights)", choices=LOSSES, cli=str, advanced=True)
    alpha_p: float = opt(0.0, "bias weight of the UDFC weights loss for pruned channels (from a sweep)",
                         rule="finite_ge_0", cli=float, advanced=True)
    alpha_q: float = opt(1000.0, "bias weight of the UDFC loss for quantized channels (from a sweep)",
                         rule="finite_ge_0", cli=float, advanced=True)


@dataclass
class QuantOptions:
    title = "quantization"
    wbits: int = opt(8, "weight bit width 2-8", rule="bits", cli=int)
    abits: int = opt(8, "activation bit width 2-8", rule="bits", cli=int)
    first_last_bits: int = opt(8, "bit width of the first and last layers", rule="bits", cli=int)
    no_quant: bool = opt(False, "no quantization (float output)", rule="bool", switch=True)
    calibrator: str = opt("mse", "activation range rule (mse: the range that minimises the quantization error)",
                          choices=CALIBRATORS, cli=str, advanced=True)
    bias_correction: bool = opt(
        True, "bias correction: each quantized layer's bias cancels the mean output shift its weight and input "
        "quantization cause, measured on the calibration samples", rule="bool", switch=False,
        flag="--no-bias-correction", advanced=True)
    weight_rounding: str = opt(
        "gptq", "weights below 8 bits: gptq (per-channel clipping and codes that minimise each layer's output error "
        "on the calibration samples: GPTQ error feedback), nearest (round to nearest at the max scale)",
        choices=ROUNDINGS, cli=str, advanced=True)


@dataclass
class CalibrationOptions:
    title = "calibration samples (synthesis)"
    calib: str | None = opt(None, "synthetic calibration data (default: bns with BatchNorm statistics; without them "
                            "inception for classifiers, else pink noise)", choices=CALIB_METHODS, cli=str)
    calib_data: object = opt(None, "calibrate on these inputs instead: .npz with `x` (float, as --save-calib writes) "
                             "or `images` (uint8 NHWC, with --input-mean/--input-std); the API also takes an array",
                             cli=str, metavar="NPZ")
    save_calib: str | None = opt(None, "save the synthesized calibration samples to this .npz (key `x`)", cli=str,
                                 metavar="NPZ")
    calib_samples: int | None = opt(None, "number of calibration samples (default: 256 Gaussian; BNS: as many as the "
                                    "inverter's work budget allows, 256 at most)", rule="int_ge_1", cli=int,
                                    advanced=True)
    inverter_steps: int | None = opt(None, "BNS inverter: Adam steps per batch (default: from the work budget, "
                                     "100-200)", rule="int_ge_1", cli=int, advanced=True)
    inverter_batch: int | None = opt(None, "BNS inverter: samples optimised together (default: all)", rule="int_ge_1",
                                     cli=int, advanced=True)
    inverter_size: int | None = opt(None, "BNS inverter: synthesize at this image side, then upsample (default: "
                                    "smaller only for inputs costing > 130 M MACs)", rule="int_ge_1", cli=int,
                                    advanced=True)
    inverter_refine_steps: int | None = opt(None, "BNS inverter: steps at full size after a smaller synthesis size "
                                            "(default: none at 8 bits; below 8 bits a share of the smaller "
                                            "phase's work that grows with the upsampling, in rounds of 5)",
                                            rule="int_ge_0", cli=int, advanced=True)
    inverter_lr: float = opt(0.1, "BNS inverter: Adam learning rate", rule="positive", cli=float, advanced=True)
    inverter_copies: int = opt(1, "BNS inverter: augmented copies per sample and step", rule="int_ge_1", cli=int,
                               advanced=True)


@dataclass
class FinetuneOptions:
    title = "fine-tuning"
    finetune: str | None = opt(None, "train the compressed model against the float one on the synthetic samples: kd "
                               "(knowledge distillation, The Knowledge Within Alg. 2) or blocks (block-wise "
                               "reconstruction, BRECQ/AdaRound)", choices=FINETUNE_METHODS, cli=str)
    finetune_time: float | None = opt(None, "seconds of fine-tuning: the default steps are planned from the graph and "
                                      "a few timed passes, then re-planned from the run's own step time (default "
                                      "480; not with --finetune-steps)",
                                      rule="positive", cli=float, metavar="S")
    finetune_steps: int | None = opt(None, "fine-tuning steps (kd: in all; blocks: per block; default: from the "
                                     "--finetune-time budget)", rule="int_ge_0", cli=int, advanced=True)
    finetune_batch: int = opt(32, "fine-tuning batch size", rule="int_ge_1", cli=int, advanced=True)
    finetune_lr: float | None = opt(None, "fine-tuning Adam learning rate (default: kd 3e-4 for float parameters, "
                                    "blocks 1e-2 for the roundings)", rule="positive", cli=float, advanced=True)
    finetune_step_lr: float | None = opt(None, "kd: Adam's step on quantized weights, in units of each channel's "
                                         "quantization step (default 0.01)", rule="positive", cli=float, advanced=True)
    finetune_disagreement: float | None = opt(None, "kd: share of each batch drawn from samples moved toward where "
                                              "the student disagrees with the teacher (default 0: off; measured "
                                              "level with kd alone, docs/methods.md)",
                                              rule="ratio_below_1", cli=float, advanced=True)
    finetune_size: int | None = opt(None, "train at this image side, then run at the input size (default: for a "
                                    "large input of a model that runs at any size, the side at which a sample costs "
                                    "about 1.3e8 MACs, as the inverter; 0: the input size)", rule="int_ge_0", cli=int,
                                    advanced=True)
    finetune_full_steps: int = opt(0, "kd: steps at the input size after training at a smaller --finetune-size",
                                   rule="int_ge_0", cli=int, advanced=True)


@dataclass
class InputOptions:
    title = "input"
    input_mean: object = opt(None, "per-channel mean of the input normalisation, e.g. 0.485,0.456,0.406", cli="floats")
    input_std: object = opt(None, "per-channel std of the input normalisation", cli="floats")
    input_shape: tuple | None = opt(None, "N,C,H,W to synthesize, calibrate and time at when the model's input dims "
                                    "are symbolic (default: the shape of --calib-data); the written model keeps them",
                                    rule="shape", cli="ints")


@dataclass
class RunOptions:
    title = "run and measurement"
    device: str | None = opt(None, "BNS inverter and fine-tuning device, e.g. cpu or cuda (default: cuda when "
                             "available)", cli=str)
    seed: int = opt(0, "random seed", rule="int_ge_0", cli=int, advanced=True)
    measure: bool = opt(True, "the fidelity probe and latency measurement in the report", rule="bool", switch=False,
                        flag="--no-measure", advanced=True)
    probe_samples: int = opt(64, "samples of the Gaussian fidelity probe, and the latency batch", rule="int_ge_1",
                             cli=int, advanced=True)
    latency_rounds: int = opt(10, "alternating timing rounds of the report's latency ratio, at least (more where they "
                              "take under 4 s: a small model's timing is noisier); 0: no timing",
                              rule="int_ge_0", cli=int, advanced=True)
    threads: int = opt(2, "ONNX Runtime threads of every timed session", rule="int_ge_1", cli=int, advanced=True)
    debug: bool = opt(False, "check validity after every pass; tracebacks on errors", rule="bool", switch=True,
                      advanced=True)


STAGES = (PruneOptions, CompensationOptions, QuantOptions, CalibrationOptions, FinetuneOptions, InputOptions,
          RunOptions)
ALIASES = {"prune_global": ("prune_rank", "global", "the same as --prune-rank global")}  # old name -> (option, value)
