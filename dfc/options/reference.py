"""docs/options.md, generated from the schema (`python -m dfc.options > docs/options.md`; a test keeps it current)."""

from __future__ import annotations

from dfc.options.schema import all_options
from dfc.options.stages import ALIASES


def markdown() -> str:
    lines = ["# Options of `dfc optimize` / `dfc.optimize`", "",
             "Generated from `dfc/options/stages.py` by `python -m dfc.options`; do not edit by hand. Each option is "
             "a CLI flag and a keyword of `dfc.optimize` (the flag's name with underscores). Advanced options are "
             "shown by `dfc optimize --help-all`.", ""]
    stage = None
    for o in all_options():
        if o.stage != stage:
            stage = o.stage
            lines += ["", f"## {stage}", "", "| flag | keyword | default | |", "|---|---|---|---|"]
        default = f"`{o.default!r}`"
        choices = f" One of {', '.join(f'`{c}`' for c in o.spec.choices)}." if o.spec.choices else ""
        adv = " *(advanced)*" if o.spec.advanced else ""
        lines.append(f"| `{o.flag}` | `{o.name}` | {default} | {o.spec.help}.{choices}{adv} |")
    lines += ["", "## Aliases", ""]
    lines += [f"- `--{old.replace('_', '-')}` / `{old}=True`: {text}." for old, (_, _, text) in ALIASES.items()]
    return "\n".join(lines) + "\n"
