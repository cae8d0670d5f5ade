"""`dfc bench --ray`: the benchmark's rows as Ray tasks (`dfc.distributed`).

Per model, one task prepares the `ModelBench` (preprocessed sets, the fp32 model's reference outputs) from the files
this machine read, one task per data-free method synthesizes the calibration set every row of that method shares
(as the serial run does once), and one task per row compresses and measures. Every task reserves the CPUs its ORT
timing uses (`--threads`), so timings never share cores with other tasks; each row says where it ran (`ran_on`).
"""

from __future__ import annotations

from collections.abc import Callable

from dfc.bench.matrix import Config
from dfc.bench.suite import ModelBench, ModelData, ModelSpec, Settings, base_row, load_data


def prepare(spec: ModelSpec, settings: Settings, data: ModelData) -> ModelBench:
    return ModelBench(spec, settings, data)


def calibrate(bench: ModelBench, method: str) -> tuple:
    return bench.calibration(method)


def measure_row(bench: ModelBench, cfg: Config, calibration: tuple | None) -> dict:
    if calibration is not None:
        bench._calib[bench.calibration_method(cfg)] = calibration
    return {**bench.row(cfg), "setup_seconds": bench.setup_seconds}


def run_rows(specs: list[ModelSpec], configs: list[Config], settings: Settings, address: str,
             model_ready: Callable[[ModelSpec, float], None], record: Callable[[dict], None]) -> str:
    """Submit every model's setup, calibration and row tasks, then record rows as they finish (a row whose task
    failed is an error row). Returns the description of the Ray cluster the rows ran on."""
    from dfc.distributed import Cluster

    cpus = settings.threads
    with Cluster(address) as cluster:
        runner = cluster.describe()
        print(f"dfc bench: rows as tasks of {cpus} CPUs on {runner}", flush=True)
        tasks = []  # (spec, cfg, ref)
        for spec in specs:  # the files are read here, before any task runs: workers need not have them
            bench = cluster.submit(prepare, spec, settings, cluster.put(load_data(spec)), cpus=cpus)
            methods = {m for m in map(ModelBench.calibration_method, configs) if m and m != "real"}
            calib = {m: cluster.submit(calibrate, bench, m, cpus=cpus) for m in sorted(methods)}
            for cfg in configs:
                method = ModelBench.calibration_method(cfg)
                tasks.append((spec, cfg, cluster.submit(measure_row, bench, cfg, calib.get(method), cpus=cpus)))
        ready = set()
        for i, row, error in cluster.completed([ref for _, _, ref in tasks]):
            spec, cfg = tasks[i][0], tasks[i][1]
            if error is not None:
                row = {**base_row(spec.name, cfg), "top1": None, "wall_seconds": 0.0, "ran_on": None,
                       "error": f"Ray task failed: {error}"}
            setup = row.pop("setup_seconds", None)
            if spec.name not in ready:
                ready.add(spec.name)
                model_ready(spec, setup)
            record(row)
    return runner
