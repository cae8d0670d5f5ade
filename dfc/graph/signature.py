"""The model's input/output signature: what dfc works on, and what it gives back.

dfc synthesizes, calibrates, probes and times a batch of samples of one fixed size. Exported models come in
two other forms, and the written model must keep the one it came in:
- symbolic spatial dims (`[N, 3, H, W]`, PP-OCR): the work needs a concrete shape (`--input-shape`, or the
  shape of `--calib-data`); it is set after `cleanup`'s constant folding, so no shape arithmetic is folded with
  it, and the written model gets the symbolic dims back (and runs at other sizes);
- a fixed batch (`[1, 3, 240, 320]`, UltraFace, whose exporter computed `Reshape` shapes from it): the work
  graph gets a symbolic batch, so that the shape arithmetic stays per batch, and `cleanup` rewrites a `Reshape`
  whose folded target starts with the fixed batch where its input's first dim is symbolic to read 0 ("copy")
  there (`dfc.graph.rewrite.batch_free_reshape`); the written model gets the fixed batch back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from dfc.errors import DfcError

BATCH = "N"


def _dims(vi: onnx.ValueInfoProto) -> list:
    """A value's dims: int where fixed (> 0), the name where symbolic, None where unknown."""
    out = []
    for d in vi.type.tensor_type.shape.dim:
        out.append(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0
                   else d.dim_param if d.HasField("dim_param") and d.dim_param else None)
    return out


def _set_dims(vi: onnx.ValueInfoProto, dims: list) -> None:
    shape = vi.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, (int, np.integer)):
            dim.dim_value = int(d)
        elif d:
            dim.dim_param = str(d)


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


@dataclass
class Signature:
    """The original model's input and output dims (see the module docstring)."""

    inputs: dict[str, list]
    outputs: dict[str, list]

    @classmethod
    def of(cls, model: onnx.ModelProto) -> "Signature":
        return cls({i.name: _dims(i) for i in _graph_inputs(model)}, {o.name: _dims(o) for o in model.graph.output})

    @property
    def input_dims(self) -> list:
        return next(iter(self.inputs.values()), [])

    @property
    def fixed_batch(self) -> int | None:
        d = self.input_dims
        return d[0] if d and isinstance(d[0], int) else None

    @property
    def free_dims(self) -> bool:
        """Whether a non-batch input dim is symbolic or unknown."""
        return any(not isinstance(d, int) for d in self.input_dims[1:])

    def work_shape(self, input_shape=None, calib_data=None) -> tuple[int, ...] | None:
        """The per-sample shape the work uses: the model's own where fixed; else --input-shape, else the shape of
        the calibration data; None when the model's is fixed and nothing else was given. Mismatches are errors."""
        dims, name = self.input_dims, next(iter(self.inputs), "input")
        given = None
        if input_shape is not None:
            given = tuple(int(v) for v in input_shape)
            if len(given) != len(dims):
                raise DfcError(f"--input-shape {','.join(map(str, given))}: input {name!r} has {len(dims)} dims")
            given = given[1:]
        elif calib_data is not None:
            given = tuple(np.shape(calib_data)[1:])
        fixed = [d for d in dims[1:]]
        if given is None:
            if self.free_dims:
                raise DfcError(f"input {name!r} has shape {dims}: give --input-shape N,C,H,W (the shape to synthesize, "
                               "calibrate and time at; the written model keeps the symbolic dims)")
            return None
        bad = [i + 1 for i, (f, g) in enumerate(zip(fixed, given)) if isinstance(f, int) and f != g]
        if bad or any(g < 1 for g in given):
            raise DfcError(f"--input-shape: {list(given)} does not fit input {name!r} of shape {dims} (dim {bad[0] if bad else '?'})")
        return given

    @property
    def reshaped(self) -> bool:
        """Whether the work model's input dims differ from the original's (and the written model's need restoring)."""
        d = self.input_dims
        return bool(d) and (not isinstance(d[0], str) or self.free_dims)

    def work_model(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A copy with a symbolic batch where the original fixes it (and the Reshapes that baked it in reading 0),
        every other free input dim named apart (exporters write '?' for all of them), intermediate shapes dropped;
        the model itself when its batch is symbolic and the rest fixed."""
        if not self.reshaped:
            return model
        work = onnx.ModelProto()
        work.CopyFrom(model)
        for i in _graph_inputs(work):
            dims = _dims(i)
            _set_dims(i, [BATCH] + [d if isinstance(d, int) else f"dfc_{i.name}_{k}" for k, d in enumerate(dims) if k])
        for o in work.graph.output:
            o.type.tensor_type.ClearField("shape")
        del work.graph.value_info[:]
        return work

    def fix_dims(self, graph, shape: tuple[int, ...] | None) -> None:
        """Set the work graph's input to [batch, *shape] (after cleanup; `shape` None: nothing to set)."""
        if shape is None:
            return
        t = graph.inputs[0]
        t.shape = [t.shape[0] if t.shape and not isinstance(t.shape[0], int) else BATCH] + list(shape)

    def restore(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """The written model with the original's input and output dims (intermediate shapes dropped: they hold the
        work's concrete sizes)."""
        if not self.reshaped:
            return model
        for i in _graph_inputs(model):
            if i.name in self.inputs:
                _set_dims(i, self.inputs[i.name])
        for o in model.graph.output:
            if o.name in self.outputs:
                _set_dims(o, self.outputs[o.name])
        del model.graph.value_info[:]
        return model


    def check_other_size(self, original: onnx.ModelProto, optimized: onnx.ModelProto, ctx) -> None:
        """The written model run at other sizes of its free dims (each doubled) where the original runs there; a
        note when it does not (something folded the work's size into the graph)."""
        from dfc.measure.runtime import make_session

        dims = self.input_dims
        shape = [1] + [2 * s if not isinstance(d, int) else s for d, s in zip(dims[1:], ctx.input_shape)]
        x = np.zeros(shape, np.float32)
        name = next(iter(self.inputs))
        try:
            make_session(original, optimize=False).run(None, {name: x})
        except Exception:  # noqa: BLE001  (the original does not run there either: nothing to check)
            return
        try:
            make_session(optimized).run(None, {name: x})
        except Exception as e:  # noqa: BLE001
            ctx.note(f"the written model runs at input shape {list(ctx.input_shape)} but not at {shape[1:]}, where the "
                     f"original does ({str(e).splitlines()[0][:160]})")


def at_shape(model: onnx.ModelProto, shape: tuple[int, ...] | None) -> onnx.ModelProto:
    """A copy whose first input has per-sample dims `shape` (the batch dim kept, intermediate shapes dropped), for
    counting MACs of a model with symbolic dims; the model itself when `shape` is None."""
    if shape is None:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    i = _graph_inputs(out)[0]
    _set_dims(i, (_dims(i) or [None])[:1] + list(shape))
    del out.graph.value_info[:]
    return out
