"""`python -m dfc.options`: print the option reference (docs/options.md)."""

from dfc.options.reference import markdown

print(markdown(), end="")
