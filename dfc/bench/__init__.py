"""The benchmark: a tool of the project around the compiler, not part of it (`dfc bench`, `tools/bench.py`).

`suite` runs models × configurations and times them, `matrix` names the configurations, `report` writes the tables
and plots, `baselines` runs ONNX Runtime's own `quantize_static` beside dfc.
"""

from dfc.bench.suite import ModelSpec, Settings, main, run  # noqa: F401
