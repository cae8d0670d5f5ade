"""Error types that separate the user's mistakes from dfc's own failures.

`DfcError` is raised for bad input (a file, a node, an option): the CLI prints its message and
exits 2. Any other exception is an internal error: the CLI exits 1 with a one-line hint.
"""


class DfcError(Exception):
    """Bad input or usage; the message names the file, node or option at fault."""


class NotImplementedYetError(DfcError):
    """An option whose pass does not exist yet; never silently ignored."""

    def __init__(self, option: str, detail: str = ""):
        msg = f"{option} is not implemented yet"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)
