"""Options as the pipeline reads them: defaults filled in and every value checked, in one place for the CLI and the
API alike (the messages name the CLI flag, which is the option's name with dashes)."""

from __future__ import annotations

from typing import Any

from dfc.errors import DfcError
from dfc.options.schema import by_name, check_value, all_options
from dfc.options.stages import ALIASES



def defaults() -> dict[str, Any]:
    """Option name -> default, from the schema."""
    return {o.name: o.default for o in all_options()}


DEFAULTS = defaults()
TARGETS = ("target_latency", "target_size", "target_macs")
FINETUNE_ONLY = ("finetune_steps", "finetune_time", "finetune_lr", "finetune_step_lr", "finetune_disagreement")


def prune_target(o: dict) -> tuple[str, float] | None:
    """(kind, ratio) of the run's --target-* option, or None."""
    for key in TARGETS:
        if o[key] is not None:
            return key[len("target_"):], float(o[key])
    return None


def prune_depth(o: dict) -> bool:
    """Whether a target search removes whole residual branches before channels (`--prune-depth on`, the default):
    at one latency a model without some of its blocks keeps more accuracy than one with thinner layers."""
    return o["prune_depth"] == "on"


def uses_samples(o: dict) -> bool:
    """Whether the run needs calibration samples (synthesized, or --calib-data): to quantize, to fine-tune, or as
    the probe that ranks residual branches for depth pruning (Gaussian noise would rank them by noise)."""
    return not o["no_quant"] or o["finetune"] is not None or (prune_depth(o) and prune_target(o) is not None)


def flag(name: str) -> str:
    return by_name()[name].flag


def resolve(options: dict) -> dict:
    """`options` (API keywords; None = the default) with the defaults filled in, every value and every combination
    checked, run-time defaults decided (channel_multiple from the CPU), `calib_data` loaded when it is a path."""
    given = {k: v for k, v in options.items() if v is not None}
    for old, (name, value, _) in ALIASES.items():
        if given.pop(old, False):
            given[name] = value
    base = defaults()
    unknown = set(given) - set(base)
    if unknown:
        raise DfcError(f"unknown option(s): {', '.join(sorted(unknown))}")
    o = {**base, **given}
    schema = by_name()
    for name, value in o.items():
        if value is not None and name not in ("calib_data", "save_calib", "input_mean", "input_std", "device"):
            check_value(schema[name], value)
    _check_together(given, o)
    if o["channel_multiple"] is None:
        from dfc.measure.runtime import nchwc_block

        o["channel_multiple"] = nchwc_block() or 1
    if o["device"] is not None:
        from dfc.synth.inverter import pick_device

        try:
            pick_device(str(o["device"]))
        except RuntimeError as e:  # torch's own parse error for a device string it does not know
            raise DfcError(f"--device {o['device']}: {e}") from e
    if isinstance(o["calib_data"], (str, bytes)) or hasattr(o["calib_data"], "__fspath__"):
        from dfc.synth.sample_files import load_calibration

        o["calib_data"] = load_calibration(o["calib_data"], o["input_mean"], o["input_std"])
    return o


def _check_together(given: dict, o: dict) -> None:
    """The rules between options (each value alone is checked by its own rule)."""
    targets = [k for k in TARGETS if o[k] is not None]
    if len(targets) > 1:
        raise DfcError(f"give one target, not {' and '.join(flag(k) for k in targets)}")
    if targets and float(o["prune"]) > 0:
        raise DfcError(f"--prune and {flag(targets[0])} are exclusive: the target decides how much is pruned")
    if o["no_quant"] and any(k in given for k in ("wbits", "abits", "first_last_bits")):
        raise DfcError("--no-quant conflicts with --wbits/--abits/--first-last-bits")
    if o["first_last_bits"] < max(o["wbits"], o["abits"]):
        raise DfcError(f"--first-last-bits {o['first_last_bits']} is below the body's width (W{o['wbits']}A{o['abits']}); "
                       "the first and last layers are the most sensitive")
    if not uses_samples(o) and any(k in given for k in ("calib", "calib_data", "save_calib")):
        raise DfcError("--no-quant without --finetune (or --prune-depth on with a target) uses no samples: "
                       "--calib/--calib-data/--save-calib do not apply")
    if "calib_data" in given and "calib" in given:
        raise DfcError("--calib-data and --calib are exclusive (the data replaces the generator)")
    tuned = [k for k in FINETUNE_ONLY if o[k] is not None]
    if o["finetune"] is None and tuned:
        raise DfcError(f"{flag(tuned[0])} is a fine-tuning option: give --finetune kd|blocks too")
    if o["finetune"] == "blocks" and o["finetune_step_lr"] is not None:
        raise DfcError("--finetune-step-lr is a kd option (blocks learns roundings at --finetune-lr)")
    if o["finetune"] == "blocks" and o["finetune_disagreement"] is not None:
        raise DfcError("--finetune-disagreement is a kd option (blocks reconstructs each block on the samples)")
    if o["finetune_time"] is not None and o["finetune_steps"] is not None:
        raise DfcError("--finetune-time sets the default steps; it cannot be combined with --finetune-steps")
