"""The compiled graph as a trainable torch module (a *student*), and the way back to ONNX.

`Student(model)` runs a QDQ (or float) graph with the torch executor; its layers' weights become parameters:
- a weight DequantizeLinear (int8 codes q, per-channel scale s, zero point 0) becomes a latent float weight w with
  w_q = s·clamp(round(w/s), q_min, q_max), the rounding passed straight through (STE; Bengio et al. 2013); [q_min,
  q_max] is the code range of the narrowest width that holds the codes (`dfc.quant.quant_math.code_range_of`). With `rounding=
  "adaround"` the rounding itself is learned (AdaRound, Nagel et al. 2020, eq. 22-24): w_q = s·clamp(⌊w/s⌋ + h(V)),
  h(V) = clamp(σ(V)(ζ − γ) + γ, 0, 1), ζ = 1.1, γ = −0.1, V initialised so that h(V) is the fractional part of w/s;
- an int32 bias DequantizeLinear (scale s_x·s_w) becomes a float bias, rounded the same way (STE);
- in a float graph, the constant weights and biases of Conv/Gemm/MatMul are plain parameters.
Scales, zero points and activation ranges stay frozen (as in The Knowledge Within, Algorithm 2).

The latent weights start from the float weights the codes were rounded from when the caller has them (the graph
before `quantize`), else from the dequantized codes: either way the student reproduces the graph's outputs before
any step. `export(model)` writes the codes (or floats) back into the same initializers, so ORT fuses the result
exactly as before; an initializer whose values did not change is left as it was (byte-identical).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from onnx import numpy_helper

from dfc.errors import DfcError
from dfc.quant.quant_math import INT32_MAX, code_range_of, quantize_codes
from dfc.synth.torch_exec import TorchGraph, round_ste
from dfc.graph.ops import WEIGHTED

ZETA, GAMMA = 1.1, -0.1


def _axis_shape(ndim: int, axis: int) -> list[int]:
    shape = [1] * ndim
    if ndim:
        shape[axis % ndim] = -1
    return shape


class QuantizedTensor(torch.nn.Module):
    """One constant of a DequantizeLinear (codes, per-channel or per-tensor scale, zero point 0) as a trainable
    weight: STE rounding of a latent float, or AdaRound's learned rounding (`learn_rounding`)."""

    def __init__(self, codes: np.ndarray, scale: np.ndarray, axis: int, latent: np.ndarray | None = None,
                 learn_rounding: bool = False):
        super().__init__()
        self.dtype = codes.dtype
        lo, hi = code_range_of(codes) if codes.dtype == np.int8 else (-INT32_MAX, INT32_MAX)
        self.qmin, self.qmax = float(lo), float(hi)
        s = np.asarray(scale, np.float32)
        self.register_buffer("scale", torch.from_numpy(s.reshape(_axis_shape(codes.ndim, axis)) if s.size > 1 else s.reshape(())))
        s_b = s.reshape(_axis_shape(codes.ndim, axis) if s.size > 1 else ())
        w = codes.astype(np.float32) * s_b
        if latent is not None and latent.shape == codes.shape and np.array_equal(
                quantize_codes(np.asarray(latent, np.float32), s_b, self.qmin, self.qmax), codes):
            w = np.array(latent, np.float32)  # the float weights these codes were rounded from
        else:
            learn_rounding = False  # no float weights behind these codes: AdaRound has no fractional parts to learn
        self.learn_rounding = bool(learn_rounding)
        self.hard = True  # the codes as they are; `reconstruct_blocks` softens the rounding of the block it trains
        if self.learn_rounding:
            t = torch.from_numpy(w) / self.scale
            self.register_buffer("floor", torch.floor(t))
            frac = (t - self.floor).clamp(1e-4, 1 - 1e-4)
            self.v = torch.nn.Parameter(-torch.log((ZETA - GAMMA) / (frac - GAMMA) - 1))
            self.register_buffer("v0", self.v.detach().clone())
        else:
            self.w = torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(w, np.float32)))
            self.register_buffer("w0", self.w.detach().clone())
        self.codes0 = np.array(codes, copy=True)

    def h(self) -> torch.Tensor:
        """AdaRound's rectified sigmoid; 0/1 once the rounding is fixed (`hard`)."""
        if self.hard:
            return (self.v >= 0).to(self.v.dtype)
        return torch.clamp(torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    def rounding_regularizer(self, beta: float) -> torch.Tensor:
        """Σ 1 − |2h − 1|^β: pushes every h(V) to 0 or 1 (AdaRound eq. 24)."""
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()

    def codes(self) -> torch.Tensor:
        if self.learn_rounding:
            q = self.floor + self.h()
        else:
            q = round_ste(self.w / self.scale)
        return torch.clamp(q, self.qmin, self.qmax)

    def forward(self) -> torch.Tensor:
        return self.codes() * self.scale

    def export_codes(self) -> np.ndarray:
        """The integer codes, in float64 (int32 bias codes beyond 2^24 do not survive float32); an untrained latent
        gives back its original codes exactly."""
        with torch.no_grad():
            if torch.equal(*((self.v, self.v0) if self.learn_rounding else (self.w, self.w0))):
                return self.codes0.copy()
            if self.learn_rounding:  # floor + the learned rounding bit: codes already, clipped to the range
                q = (self.floor + (self.v >= 0).to(self.v.dtype)).cpu().numpy().astype(np.float64)
                return np.clip(q, self.qmin, self.qmax).astype(self.dtype)
            return quantize_codes(self.w.cpu().numpy().astype(np.float64), self.scale.cpu().numpy().astype(np.float64),
                                  self.qmin, self.qmax, dtype=self.dtype)


class FloatTensor(torch.nn.Module):
    """A float constant as a parameter."""

    def __init__(self, value: np.ndarray):
        super().__init__()
        self.w = torch.nn.Parameter(torch.from_numpy(np.array(value, np.float32, copy=True)))

    def forward(self) -> torch.Tensor:
        return self.w

    def export_codes(self) -> np.ndarray:
        return self.w.detach().cpu().numpy().astype(np.float32)


class ActScale(torch.nn.Module):
    """One activation quantizer's scale, learned (LSQ, Esser et al. 2020: the STE rounding gives its gradient):
    s = s₀·e^u, u = 0 at the start (exactly s₀). Every constant that holds s (the QuantizeLinear/DequantizeLinear
    pairs that share the tensor's parameters) reads it; the Clip a narrow width puts in front scales with it."""

    def __init__(self, s0: float):
        super().__init__()
        self.register_buffer("s0", torch.tensor(np.float32(s0)))
        self.u = torch.nn.Parameter(torch.zeros(()))

    def factor(self) -> torch.Tensor:
        return torch.exp(self.u)

    def forward(self) -> torch.Tensor:
        return self.s0 * self.factor()


class Student(TorchGraph):
    """A QDQ or float graph with its layers' weights as parameters (see the module doc).

    `float_weights`: layer node name -> (weight, bias or None) before quantization (latent init, AdaRound's base).
    `rounding`: "ste" or "adaround" (int8 weights only; biases always STE). `learn_act_scales`: the activation
    quantizers' scales become parameters too (`ActScale`); on export the int32 biases follow their new s_x·s_w."""

    def __init__(self, model: onnx.ModelProto, float_weights: dict | None = None, rounding: str = "ste",
                 watch: list[str] | tuple = (), learn_act_scales: bool = False):
        super().__init__(model, watch=watch)
        if rounding not in ("ste", "adaround"):
            raise DfcError(f"rounding must be ste or adaround, got {rounding!r}")
        float_weights = float_weights or {}
        self.tensors = torch.nn.ModuleDict()
        self.layer_of: dict[str, str] = {}  # key -> layer node name
        self.initializer_of: dict[str, str] = {}  # key -> initializer written back on export
        self._names: dict[str, str] = {}  # key -> tensor name the graph reads
        self._scale_const: dict[str, str] = {}  # key of a quantized tensor -> its DequantizeLinear's scale constant
        dropped = set()
        for n in self.nodes:
            for i, t in ((1, n.inputs[1] if len(n.inputs) > 1 else None), (2, n.inputs[2] if len(n.inputs) > 2 else None)):
                if n.op not in WEIGHTED or t is None:
                    continue
                # the bias keeps its codes: `quantize` moved it (bias correction) after the float snapshot
                latent = float_weights.get(n.name, (None, None))[0] if i == 1 else None
                if isinstance(t, gs.Constant) and t.values.dtype == np.float32:
                    self._add(f"t{len(self.tensors)}", n.name, t.name, t.name, FloatTensor(t.values))
                    continue
                dq = t.inputs[0] if len(t.inputs) == 1 else None
                if dq is None or dq.op != "DequantizeLinear" or not isinstance(dq.inputs[0], gs.Constant):
                    continue
                codes, scale = dq.inputs[0].values, np.asarray(dq.inputs[1].values)
                zp = dq.inputs[2].values if len(dq.inputs) > 2 and dq.inputs[2] is not None else np.zeros(1)
                if np.any(np.asarray(zp) != 0) or codes.dtype not in (np.int8, np.int32):
                    continue
                learn = rounding == "adaround" and codes.dtype == np.int8 and latent is not None
                q = QuantizedTensor(codes, scale, int(dq.attrs.get("axis", 1)), latent, learn_rounding=learn)
                self._add(f"t{len(self.tensors)}", n.name, t.name, dq.inputs[0].name, q)
                self._scale_const[f"t{len(self.tensors) - 1}"] = dq.inputs[1].name
                dropped.add(id(dq))
        self.nodes = [n for n in self.nodes if id(n) not in dropped]
        if not self.tensors:
            raise DfcError("the model has no Conv/Gemm/MatMul weights to fine-tune")
        self.act_scales = torch.nn.ModuleDict()
        self._scale_reads: dict[str, list[str]] = {}  # key -> constants holding a value proportional to s
        self.scale_nodes: dict[str, list[int]] = {}  # key -> indices of its QuantizeLinear nodes
        self._input_scale: dict[str, str] = {}  # layer -> scale constant of its input's DequantizeLinear
        if learn_act_scales:
            self._find_act_scales()

    def _find_act_scales(self) -> None:
        """Activation quantizers grouped by their (scale, zero point): equal parameters are one quantizer reused
        (reshapes, MaxPool, Slice/Pad keep their input's), so they stay equal."""
        groups: dict[tuple, str] = {}
        for i, n in enumerate(self.nodes):
            if n.op not in ("QuantizeLinear", "DequantizeLinear") or isinstance(n.inputs[0], gs.Constant):
                continue
            sc, zp = n.inputs[1], n.inputs[2] if len(n.inputs) > 2 else None
            if not isinstance(sc, gs.Constant) or sc.values.size != 1:
                continue
            ident = (np.float32(sc.values).tobytes(), None if zp is None else int(np.asarray(zp.values).ravel()[0]))
            key = groups.get(ident)
            if key is None:
                key = groups[ident] = f"a{len(groups)}"
                self.act_scales[key] = ActScale(float(np.asarray(sc.values).ravel()[0]))
                self._scale_reads[key], self.scale_nodes[key] = [], []
            reads = self._scale_reads[key]
            if sc.name not in reads:
                reads.append(sc.name)
            if n.op == "QuantizeLinear":
                self.scale_nodes[key].append(i)  # a narrow width's Clip acts on the codes: no scale in it
            else:
                for c in n.outputs[0].outputs:
                    if c.op in WEIGHTED and c.inputs[0] is n.outputs[0]:
                        self._input_scale[c.name] = sc.name

    def _add(self, key: str, layer: str, read_as: str, initializer: str, module: torch.nn.Module) -> None:
        self.tensors[key] = module
        self.layer_of[key], self._names[key], self.initializer_of[key] = layer, read_as, initializer

    def provided(self) -> dict[str, torch.Tensor]:
        out = {self._names[k]: m() for k, m in self.tensors.items()}
        for key, m in self.act_scales.items():
            f = m.factor()
            for name in self._scale_reads[key]:
                out[name] = self.const(name) * f  # every value held at s₀ scales with s (exact at u = 0)
        return out

    def act_scales_in(self, start: int, stop: int) -> list[ActScale]:
        """The activation scales whose QuantizeLinear lies in nodes [start, stop)."""
        return [self.act_scales[k] for k, idx in self.scale_nodes.items() if any(start <= i < stop for i in idx)]

    def modules_of(self, layers: set[str]) -> list[torch.nn.Module]:
        return [m for k, m in self.tensors.items() if self.layer_of[k] in layers]

    def export(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """`model` (the graph this student was built from) with the trained codes / floats written into its
        initializers; initializers whose values are unchanged are not touched."""
        out = onnx.ModelProto()
        out.CopyFrom(model)
        inits = {t.name: t for t in out.graph.initializer}
        values = {}
        for key, m in self.tensors.items():
            values[self.initializer_of[key]] = m.export_codes()
        with torch.no_grad():
            for key, m in self.act_scales.items():
                f = m.factor()
                for name in self._scale_reads[key]:
                    values[name] = (self.const(name) * f).cpu().numpy()
            values.update(self._rescaled_biases(values))
        for name, new in values.items():
            if name not in inits:
                raise DfcError(f"initializer {name!r} is not in the model")
            old = numpy_helper.to_array(inits[name])
            new = np.asarray(new).reshape(old.shape).astype(old.dtype)
            if not np.array_equal(old, new):
                inits[name].CopyFrom(numpy_helper.from_array(new, name))
        return out

    def _rescaled_biases(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """int32 biases whose input scale s_x moved: codes and scale again at s_x·s_w (the form ORT fuses)."""
        out = {}
        weights = {self.layer_of[k]: m for k, m in self.tensors.items()
                   if isinstance(m, QuantizedTensor) and m.dtype == np.int8}
        for key, m in self.tensors.items():
            layer = self.layer_of[key]
            if not isinstance(m, QuantizedTensor) or m.dtype != np.int32 or layer not in weights:
                continue
            sx_name = self._input_scale.get(layer)
            if sx_name is None or np.array_equal(values.get(sx_name, self.const(sx_name).cpu().numpy()), self.const(sx_name).cpu().numpy()):
                continue
            s_x = np.float32(np.asarray(values[sx_name]).ravel()[0])
            scale = (s_x * weights[layer].scale.cpu().numpy().ravel().astype(np.float32)).astype(np.float32)
            with torch.no_grad():
                b = m().cpu().numpy().astype(np.float64).ravel()
            out[self.initializer_of[key]] = quantize_codes(b, scale, -INT32_MAX, INT32_MAX, dtype=np.int32)
            out[self._scale_const[key]] = scale
        return out


def float_weights_of(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray | None, np.ndarray | None]]:
    """Layer node name -> (constant weight, constant bias or None) of a float graph's Conv/Gemm/MatMul."""
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type in WEIGHTED and len(n.input) > 1 and n.input[1] in inits:
            b = numpy_helper.to_array(inits[n.input[2]]) if len(n.input) > 2 and n.input[2] in inits else None
            out[n.name] = (numpy_helper.to_array(inits[n.input[1]]), b)
    return out
