"""The optimize options on the command line, generated from the schema: one argparse group per stage, the advanced
knobs hidden from `--help` (shown by `--help-all`), and the parsed namespace turned back into API keywords."""

from __future__ import annotations

import argparse

from dfc.options.schema import all_options
from dfc.options.stages import ALIASES

HELP_ALL = "--help-all"


def _default_text(o) -> str:
    if o.default is None or o.spec.switch is not None:
        return ""
    return f" (default {o.default:g})" if isinstance(o.default, float) else f" (default {o.default})"


def add_arguments(parser: argparse.ArgumentParser, show_advanced: bool = False) -> None:
    """Every option of `all_options()` as a flag of `parser` (dest = the option's name, default None = not given)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    hidden = 0
    for o in all_options():
        group = groups.get(o.stage) or groups.setdefault(o.stage, parser.add_argument_group(o.stage))
        shown = show_advanced or not o.spec.advanced
        hidden += not shown
        text = (o.spec.help + _default_text(o)) if shown else argparse.SUPPRESS
        if o.spec.switch is not None:
            group.add_argument(o.flag, dest=o.name, action="store_const", const=o.spec.switch, default=None, help=text)
        else:
            kind = {"floats": str, "ints": str}.get(o.spec.cli, o.spec.cli)
            group.add_argument(o.flag, dest=o.name, type=kind, choices=o.spec.choices, default=None, help=text,
                               metavar=o.spec.metavar)
    for old, (name, value, text) in ALIASES.items():
        parser.add_argument("--" + old.replace("_", "-"), dest=name, action="store_const", const=value, default=None,
                            help=text if show_advanced else argparse.SUPPRESS)
    parser.add_argument(HELP_ALL, action="store_true", help=f"also show the {hidden} advanced options" if hidden
                        else "show every option")


def from_args(args: argparse.Namespace) -> dict:
    """API keywords from the parsed flags (None where not given); comma lists parsed, naming the flag on errors."""
    from dfc.measure.validation import parse_floats, parse_ints

    out = {}
    for o in all_options():
        v = getattr(args, o.name, None)
        if v is not None and o.spec.cli == "floats":
            v = parse_floats(v, o.flag)
        elif v is not None and o.spec.cli == "ints":
            v = parse_ints(v, o.flag)
        out[o.name] = v
    return out
