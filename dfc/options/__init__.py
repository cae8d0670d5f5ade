"""The options of `dfc optimize` / `dfc.optimize`, declared once (`stages`) and everything derived from them: the
defaults, validation (`resolve`), the command line (`cli`) and the option reference in docs/ (`reference`)."""

from dfc.options.resolve import DEFAULTS, resolve  # noqa: F401
from dfc.options.schema import all_options  # noqa: F401
