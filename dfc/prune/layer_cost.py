"""What a weighted layer costs at a given channel count: MACs, bytes on disk, or measured ORT latency.

A layer is described by a `LayerSpec` (op, input/output channels, kernel geometry, input H×W, depthwise or not);
`spec_of(node)` reads it off a shape-inferred Conv/Gemm/MatMul and `with_channels` changes its channel counts, so a
pruning search can ask what a layer would cost after losing channels without building the pruned graph.

- `MacsCost`: MACs per sample, H_out·W_out·C_out·(C_in/groups)·k_h·k_w (Gemm: C_in·C_out).
- `BytesCost`: weights at `bits`/8 bytes each (+ 5 bytes of per-channel scale and zero point when quantized), bias
  at 4 bytes (float32, or int32 when quantized).
- `LatencyCost`: the median ORT time of the layer alone, as a one-layer model (float Conv/Gemm, or the QDQ form
  ORT fuses into QLinearConv / QGemm when quantized), batch and threads as the whole-model measurement, no spinning;
  measured once per spec (20th percentile of 40 runs: sub-millisecond timings scatter by ±30 % between runs, the
  lower quantile by a few %) and cached on disk (keyed by CPU, ORT version, batch and threads), so a search over channel
  counts times each shape once on a machine.
A graph's predicted cost is the sum over its layers plus the part of the whole model no layer accounts for
(`Prediction`), held fixed while channels go.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper, numpy_helper

from dfc.graph import ir
from dfc.quant import quant_math as qm
from dfc.graph.ops import layer_macs


@dataclass(frozen=True)
class LayerSpec:
    """One Conv/Gemm/MatMul as far as its cost goes. `hw`: input height, width (Conv); `depthwise`: group = c_in."""

    op: str
    c_in: int
    c_out: int
    kernel: tuple = ()
    strides: tuple = ()
    pads: tuple = ()
    dilations: tuple = ()
    hw: tuple = ()
    depthwise: bool = False
    bits: int = 32  # weight bits (32: float)

    def with_channels(self, c_in: int | None = None, c_out: int | None = None) -> "LayerSpec":
        c_in = self.c_in if c_in is None else int(c_in)
        c_out = self.c_out if c_out is None else int(c_out)
        if self.depthwise:  # channel multiplier 1: input and output channels are the same channels
            c_in = c_out = c_in if c_in != self.c_in else c_out
        return replace(self, c_in=c_in, c_out=c_out)

    @property
    def out_hw(self) -> tuple:
        if self.op != "Conv":
            return ()
        return tuple((self.hw[i] + self.pads[i] + self.pads[i + 2] - self.dilations[i] * (self.kernel[i] - 1) - 1)
                     // self.strides[i] + 1 for i in range(2))

    @property
    def macs(self) -> int:
        if self.op != "Conv":
            return layer_macs("Gemm", self.c_out, (self.c_in, self.c_out))
        weight_shape = (self.c_out, 1 if self.depthwise else self.c_in, *self.kernel)
        return layer_macs("Conv", int(np.prod(self.out_hw)) * self.c_out, weight_shape)

    @property
    def weights(self) -> int:
        if self.op != "Conv":
            return self.c_in * self.c_out
        return self.c_out * (1 if self.depthwise else self.c_in) * int(np.prod(self.kernel))


def spec_of(node: gs.Node, bits: int = 32) -> LayerSpec | None:
    """The spec of a shape-inferred Conv (2-D, group 1 or depthwise with multiplier 1) / Gemm / MatMul, else None."""
    w = ir.const_value(ir.input_at(node, 1))
    x = node.inputs[0]
    if w is None or x.shape is None:
        return None
    if node.op == "Conv":
        if w.ndim != 4 or len(x.shape) != 4 or not all(isinstance(d, (int, np.integer)) for d in x.shape[1:]):
            return None
        group = int(node.attrs.get("group", 1))
        depthwise = group > 1 and group == w.shape[0] == x.shape[1] and w.shape[1] == 1
        if group > 1 and not depthwise:
            return None
        k = tuple(int(v) for v in w.shape[2:])
        pads = tuple(int(v) for v in node.attrs.get("pads", (0, 0, 0, 0)))
        if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return None
        return LayerSpec("Conv", int(x.shape[1]), int(w.shape[0]), k,
                         tuple(int(v) for v in node.attrs.get("strides", (1, 1))), pads,
                         tuple(int(v) for v in node.attrs.get("dilations", (1, 1))),
                         (int(x.shape[2]), int(x.shape[3])), depthwise, bits)
    if node.op in ("Gemm", "MatMul") and w.ndim == 2:
        trans = node.op == "Gemm" and int(node.attrs.get("transB", 0))
        c_in, c_out = (w.shape[1], w.shape[0]) if trans else (w.shape[0], w.shape[1])
        return LayerSpec("Gemm", int(c_in), int(c_out), bits=bits)
    return None


class MacsCost:
    unit = "MACs"

    def __call__(self, spec: LayerSpec) -> float:
        return float(spec.macs)


class BytesCost:
    unit = "bytes"

    def __call__(self, spec: LayerSpec) -> float:
        per_weight = spec.bits / 8
        qparams = 5 * spec.c_out if spec.bits < 32 else 0
        return spec.weights * per_weight + 4 * spec.c_out + qparams


def cache_dir() -> str:
    return os.environ.get("DFC_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "dfc")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class LatencyCost:
    """Median seconds of one `session.run` of the layer alone on a batch of `batch` (see the module docstring)."""

    unit = "s"

    def __init__(self, batch: int = 64, threads: int = 2, rounds: int = 40, quantized: bool = False,
                 cache: bool = True):
        import onnxruntime as ort

        self.batch, self.threads, self.rounds, self.quantized = int(batch), int(threads), int(rounds), bool(quantized)
        self.measured = 0  # specs timed by this instance (not read from the cache)
        key = f"{_cpu_name()}|ort {ort.__version__}|batch {self.batch}|threads {self.threads}|v2"
        self.path = os.path.join(cache_dir(), f"layer_latency_{hashlib.sha1(key.encode()).hexdigest()[:12]}.json") if cache else None
        self.table: dict[str, float] = {}
        if self.path and os.path.exists(self.path):
            try:
                with open(self.path) as f:
                    self.table = json.load(f).get("times", {})
            except (OSError, ValueError):
                self.table = {}
        self.key = key

    def __call__(self, spec: LayerSpec) -> float:
        q = self.quantized and spec.bits < 32
        k = json.dumps({**asdict(spec), "bits": 8 if q else 32})
        if k not in self.table:
            self.table[k] = self._time(spec, q)
            self.measured += 1
            self._save()
        return self.table[k]

    def _save(self) -> None:
        if not self.path:
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump({"key": self.key, "times": self.table}, f)
            os.replace(tmp, self.path)
        except OSError:  # a read-only home: the model still works, only not cached
            self.path = None

    def _time(self, spec: LayerSpec, quantized: bool) -> float:
        from dfc.measure.runtime import make_session

        model = layer_model(spec, self.batch, quantized)
        sess = make_session(model, threads=self.threads, spinning=False)
        shape = [self.batch, spec.c_in, *spec.hw] if spec.op == "Conv" else [self.batch, spec.c_in]
        feed = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        for _ in range(2):
            sess.run(None, feed)
        times = []
        for _ in range(self.rounds):
            t0 = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - t0)
        return float(np.percentile(times, 20))  # sub-millisecond runs: the lower quantile is the repeatable one


def layer_model(spec: LayerSpec, batch: int, quantized: bool) -> onnx.ModelProto:
    """A one-layer model of `spec` with random weights: float, or QDQ (uint8 activations, int8 per-channel weights,
    int32 bias) as `dfc quantize` writes it, which ORT fuses into QLinearConv / QGemm."""
    rng = np.random.default_rng(0)
    conv = spec.op == "Conv"
    c_per = 1 if spec.depthwise else spec.c_in
    wshape = [spec.c_out, c_per, *spec.kernel] if conv else [spec.c_out, spec.c_in]
    w = (rng.standard_normal(wshape) * 0.1).astype(np.float32)
    b = np.zeros(spec.c_out, np.float32)
    xshape = [batch, spec.c_in, *spec.hw] if conv else [batch, spec.c_in]
    yshape = [batch, spec.c_out, *spec.out_hw] if conv else [batch, spec.c_out]
    attrs = {"kernel_shape": list(spec.kernel), "strides": list(spec.strides), "pads": list(spec.pads),
             "dilations": list(spec.dilations), "group": spec.c_in if spec.depthwise else 1} if conv else {"transB": 1}
    inits, nodes = [], []
    if not quantized:
        inits += [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
        nodes.append(helper.make_node(spec.op, ["x", "w", "b"], ["y"], **attrs))
    else:
        wq, ws = qm.quantize_weight(w, 8, 0)  # as `quantize` writes 8-bit weights
        sx = np.float32(0.05)
        inits += [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(ws, "ws"),
                  numpy_helper.from_array(np.zeros(spec.c_out, np.int8), "wz"),
                  numpy_helper.from_array(np.zeros(spec.c_out, np.int32), "bq"),
                  numpy_helper.from_array((ws * sx).astype(np.float32), "bs"),
                  numpy_helper.from_array(np.zeros(spec.c_out, np.int32), "bz"),
                  numpy_helper.from_array(np.array(sx, np.float32), "sx"), numpy_helper.from_array(np.array(128, np.uint8), "zx"),
                  numpy_helper.from_array(np.array(0.1, np.float32), "sy"), numpy_helper.from_array(np.array(128, np.uint8), "zy")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
                  helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
                  helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["bd"], axis=0),
                  helper.make_node(spec.op, ["xd", "wd", "bd"], ["yf"], **attrs),
                  helper.make_node("QuantizeLinear", ["yf", "sy", "zy"], ["yq"]),
                  helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["y"])]
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, xshape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, yshape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
