"""Benchmark suite: models × configurations with ONNX Runtime's quantize_static beside dfc (same as `dfc bench`).

    python tools/bench.py --quick --out bench-quick
    python tools/bench.py --out bench-full

See `dfc.bench` for what every row measures.
"""

import sys

from dfc.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
