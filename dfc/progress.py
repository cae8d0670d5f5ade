"""Progress bars on long work (tqdm on stderr), silenced globally with `set_enabled(False)`."""

from __future__ import annotations

from tqdm import tqdm

_enabled = True


def set_enabled(on: bool) -> None:
    global _enabled
    _enabled = on


def progress_bar(iterable, desc: str | None = None, total: int | None = None, **kw):
    """Wrap `iterable` in a bar when a description is given and bars are enabled."""
    if desc is None or not _enabled:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, **kw)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def manual_bar(desc: str | None, total: int | None = None, **kw):
    """A bar advanced by hand (`update`, `close`) for loops whose length is only estimated; a no-op when disabled."""
    if desc is None or not _enabled:
        return _NoBar()
    return tqdm(desc=desc, total=total, leave=False, dynamic_ncols=True, **kw)


def retotal(bar, total: int) -> None:
    """Set the length of a `manual_bar` whose loop was re-planned (`dfc.finetune.step_clock`)."""
    if isinstance(bar, tqdm) and bar.total != total:
        bar.total = total
        bar.refresh()
