"""How an option is declared: a dataclass field with a `Spec` in its metadata (help, CLI flag, choices, the rule its
value obeys, whether it is an advanced knob). Every consumer iterates `all_options()`; nothing else lists options."""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from dfc.errors import DfcError


@dataclass(frozen=True)
class Spec:
    help: str
    rule: str | None = None  # a key of RULES: what a given value must be
    choices: tuple | None = None
    cli: Any = None  # argparse type: float, int, str, "floats", "ints"; None: a switch (see `switch`)
    switch: bool | None = None  # a flag without value: sets the option to this (e.g. --no-quant: True, --no-requant: False)
    flag: str | None = None  # the CLI flag when it is not --name-with-dashes
    advanced: bool = False  # shown by `--help-all` only
    metavar: str | None = None


def opt(default, help: str, **spec) -> Any:
    """A dataclass field that is a dfc option."""
    return dataclasses.field(default=default, metadata={"dfc": Spec(help=help, **spec)})


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    spec: Spec
    stage: str  # the stage dataclass's title (the --help group)

    @property
    def flag(self) -> str:
        return self.spec.flag or "--" + self.name.replace("_", "-")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "ratio_below_1": (lambda v: _is_num(v) and 0.0 <= float(v) < 1.0, "a ratio in [0, 1)"),
    "ratio": (lambda v: _is_num(v) and 0.0 < float(v) <= 1.0, "a ratio in (0, 1]"),
    "int_ge_1": (lambda v: _is_int(v) and int(v) >= 1, "an integer >= 1"),
    "int_ge_0": (lambda v: _is_int(v) and int(v) >= 0, "an integer >= 0"),
    "positive": (lambda v: _is_num(v) and 0.0 < float(v) < float("inf"), "a positive number"),
    "finite_ge_0": (lambda v: _is_num(v) and 0.0 <= float(v) < float("inf"), "a finite number >= 0"),
    "bits": (lambda v: _is_int(v) and 2 <= int(v) <= 8, "an integer bit width in 2..8"),
    "shape": (lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(_is_int(d) and d >= 1 for d in v),
              "integers >= 1 (N,C,H,W)"),
    "bool": (lambda v: isinstance(v, (bool, np.bool_)), "True or False"),
}


def check_value(option: Option, value, label: str | None = None) -> None:
    """Raise DfcError, naming `label` (default: the option's flag), unless `value` obeys the option's rule."""
    label = label or option.flag
    if option.spec.choices is not None and value not in option.spec.choices:
        raise DfcError(f"{label} must be one of {', '.join(map(str, option.spec.choices))}, got {value!r}")
    if option.spec.rule is not None:
        ok, phrase = RULES[option.spec.rule]
        if not ok(value):
            raise DfcError(f"{label} must be {phrase}, got {value!r}")


def all_options() -> list[Option]:
    """Every option of every stage, in declaration order."""
    from dfc.options.stages import STAGES

    return [Option(f.name, f.default, f.metadata["dfc"], stage.title) for stage in STAGES
            for f in dataclasses.fields(stage)]


def by_name() -> dict[str, Option]:
    return {o.name: o for o in all_options()}
