"""A torch executor of an ONNX graph, so that gradients flow to the input (for the BNS inverter).

`TorchGraph(model)` is a `torch.nn.Module` whose forward runs the graph node by node with torch
ops and returns the graph outputs plus any `watch`ed intermediate tensors. It is tested against
ONNX Runtime (the onnx2torch package mis-converts the option-A shortcut of the CIFAR ResNets, so
nothing is assumed). Ops: Conv (grouped/depthwise), BatchNormalization (inference), Relu, Clip,
LeakyRelu, Sigmoid, HardSigmoid, HardSwish, Tanh, Exp, Sqrt, Neg, Add, Mul, Sub, Div, Pow, Gemm, MatMul, ConvTranspose,
Pad, Slice, Concat, Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Expand, Resize, Upsample, GlobalAveragePool,
AveragePool, MaxPool, GlobalMaxPool, ReduceMean, ReduceSum, ReduceMax, Softmax, LogSoftmax, Identity, Dropout,
Constant, QuantizeLinear, DequantizeLinear, and the run-time shape arithmetic of exporters: Shape, Gather, Cast,
Range, ConstantOfShape, Floor, Ceil, Equal, Where (integer tensors stay integer). Any other op is a DfcError
naming the node.

QuantizeLinear gives its integer codes as float values (the rounding passes gradients straight through, the
saturation does not), so a QDQ graph runs with gradients to its input and to whatever `provide`s its weights
(`dfc.finetune.student`). `run` executes a contiguous range of the (topologically sorted) nodes from given tensors: a block.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch

from dfc.graph import ir
from dfc.errors import DfcError
from dfc.synth.torch_ops import _OPS, SUPPORTED_OPS, round_ste  # noqa: F401  (round_ste, SUPPORTED_OPS: re-exported)




class TorchGraph(torch.nn.Module):
    """Runs `model` (onnx.ModelProto or gs.Graph, shapes not needed) with torch; float32."""

    def __init__(self, model: onnx.ModelProto | gs.Graph, watch: list[str] | tuple = ()):
        super().__init__()
        graph = ir.import_graph(model) if isinstance(model, onnx.ModelProto) else model.copy()
        graph.toposort()
        self.opset = int(graph.opset)
        self.nodes = list(graph.nodes)
        self.input_names = [t.name for t in graph.inputs]
        self.output_names = [t.name for t in graph.outputs]
        self.watch = list(watch)
        self._const_names: dict[str, str] = {}
        consts = {}
        for t in graph.tensors().values():
            if isinstance(t, gs.Constant):
                consts[t.name] = np.asarray(t.values)
        for i, (name, v) in enumerate(sorted(consts.items())):
            key = f"c{i}"
            self._const_names[name] = key
            tensor = torch.from_numpy(np.array(v, dtype=np.float32 if v.dtype.kind == "f" else v.dtype, copy=True))
            self.register_buffer(key, tensor, persistent=False)
        known = set(consts) | set(self.input_names)
        for n in self.nodes:
            if n.op not in _OPS:
                raise DfcError(f"the torch executor does not support op {n.op} (node {n.name!r})")
            known.update(o.name for o in n.outputs)
        missing = [w for w in self.watch if w not in known]
        if missing:
            raise DfcError(f"tensor(s) {missing[:3]} are not in the graph")

    def const(self, name: str) -> torch.Tensor:
        return getattr(self, self._const_names[name])

    def provided(self) -> dict[str, torch.Tensor]:
        """Tensors computed outside the node list (a subclass's trainable weights); none here."""
        return {}

    def forward(self, *inputs: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        env = self.run(dict(zip(self.input_names, inputs)))
        return [env[o] for o in self.output_names], {w: env[w] for w in self.watch}

    def run(self, env: dict[str, torch.Tensor], start: int = 0, stop: int | None = None) -> dict[str, torch.Tensor]:
        """Nodes start..stop-1 on `env` (tensor name -> value, completed with the constants); returns env."""
        env = {**{name: self.const(name) for name in self._const_names}, **self.provided(), **env}
        for n in self.nodes[start:stop]:
            args = [env[t.name] if t is not None and t.name else None for t in n.inputs]
            try:
                outs = _OPS[n.op](self, n, args)
            except DfcError:
                raise
            except Exception as e:  # a torch error on a supported op: name the node
                raise DfcError(f"torch executor failed at node {n.name!r} ({n.op}): {e}") from e
            if not isinstance(outs, (list, tuple)):
                outs = [outs]
            for t, v in zip(n.outputs, outs):
                env[t.name] = v
        return env
