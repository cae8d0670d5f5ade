"""Ray for `dfc batch --ray` and `dfc bench --ray` (the optional extra `dfc[distributed]`); only this module imports it.

Every unit of work is a Ray task that reserves `cpus` logical CPUs, and dfc's work in it stays within them: torch runs
that many threads (`dfc.measure.runtime.cpu_threads` reads the reservation) and ORT timings use as many intra-op threads. Ray
admits tasks on a node only while their reservations fit its CPUs, so timed sessions never share cores with other
tasks' threads (Ray does not pin tasks to cores: the OS spreads the threads, as it does for one process).

Where the reservation equals the cores a serial run would use (e.g. 2 on a 2-core machine) the work is the same as
in one process: the same models, byte for byte.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator

from dfc.errors import DfcError

INSTALL_HINT = "pip install -e '.[distributed]' (or: pip install 'dfc[distributed]')"


def require_ray():
    """The ray module, or a DfcError that names the extra that installs it."""
    try:
        import ray
    except ImportError as e:
        raise DfcError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from e
    return ray


def where() -> str:
    """Which machine and process a piece of work ran in (host and pid: on one machine the pid tells the Ray worker
    from the driver)."""
    return f"{socket.gethostname()} pid {os.getpid()}"


def _in_task(fn: Callable, cpus: int, *args):
    """Runs in the Ray worker: keep dfc's torch threads within the task's reservation; no progress bars, and dfc's
    log at the CLI's level (its notes are in the reports)."""
    import logging

    from dfc import progress
    from dfc.measure.runtime import CPUS_ENV

    os.environ[CPUS_ENV] = str(cpus)
    import torch

    torch.set_num_threads(cpus)
    progress.set_enabled(False)
    logging.getLogger("dfc").setLevel(logging.ERROR)
    return fn(*args)


class Cluster:
    """One command's Ray connection. `auto`: the Ray already running on this machine (`ray start --head`), else a
    new local one for this command; any other value is a cluster's address (`HOST:6379`, or `ray://HOST:10001` for
    Ray Client). Leaving the block disconnects, and stops a local Ray it started."""

    def __init__(self, address: str):
        self.address = address
        self.ray = require_ray()
        self._connected_here = False

    def __enter__(self) -> "Cluster":
        import logging

        ray = self.ray
        if not ray.is_initialized():  # (a caller that already called ray.init, e.g. a test, keeps its session)
            try:
                ray.init(address=None if self.address == "auto" else self.address, include_dashboard=False,
                         logging_level=logging.ERROR, log_to_driver=True)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise DfcError(f"--ray {self.address}: could not start or join Ray ({e})") from e
            self._connected_here = True
        self._remote = ray.remote(_in_task)
        return self

    def __exit__(self, *exc) -> None:
        if self._connected_here:
            self.ray.shutdown()

    def describe(self) -> str:
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        cpus = int(self.ray.cluster_resources().get("CPU", 0))
        return f"Ray ({self.address}): {len(nodes)} node(s), {cpus} CPUs"

    def put(self, value):
        return self.ray.put(value)

    def submit(self, fn: Callable, *args, cpus: int):
        """Run fn(*args) as a task reserving `cpus` CPUs; arguments may be references of other tasks (it starts when
        they are done). fn must be importable on the workers (a module-level function of dfc)."""
        return self._remote.options(num_cpus=cpus, max_retries=0).remote(fn, cpus, *args)

    def completed(self, refs: list) -> Iterator[tuple[int, object, str | None]]:
        """(index in `refs`, value, None) as each task finishes, or (index, None, error) for a task that raised or
        whose worker died: one task's failure does not stop the others."""
        index = {ref: i for i, ref in enumerate(refs)}
        pending = list(refs)
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    yield index[ref], self.ray.get(ref), None
                except self.ray.exceptions.RayError as e:
                    cause = getattr(e, "cause", None) or e
                    msg = str(cause).strip().splitlines()
                    yield index[ref], None, f"{type(cause).__name__}: {msg[-1] if msg else ''}"
