"""QDQ emission: the QuantizeLinear/DequantizeLinear pairs of activations, per-channel weights with int32 biases
(bias-corrected), quantized constant operands of Adds, and zero Pads moved into the integer domain."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfc.graph import ir, rewrite
from dfc.quant import quant_math as qm
from dfc.quant.bias_correction import bias_shift
from dfc.quant.layers import int_bias_form, weight_axis


def insert_qdq(graph: gs.Graph, t: gs.Tensor, p: qm.ActQParams) -> None:
    """t → QuantizeLinear → DequantizeLinear (uint8, per tensor), shared by all of t's consumers. Below 8 bits the
    codes are clipped to the b-bit range [0, 2^b − 1] between the two (a Clip on uint8): the same values as clipping
    t to `p.representable_range()` in float, but the QuantizeLinear stays next to its producer, so ORT still fuses
    DQ → op → Q into its QLinear kernels (ResNet-20 W4A4: 0.48× fp32 latency, against 1.99× with a float Clip in front
    of the QuantizeLinear)."""
    base = t.name
    scale = ir.make_const(ir.unique_name(graph, base + "_scale"), np.array(p.scale, np.float32))
    zp = ir.make_const(ir.unique_name(graph, base + "_zp"), np.array(p.zero_point, np.uint8))
    dq_out = gs.Variable(ir.unique_name(graph, base + "_dq"), dtype=np.float32, shape=t.shape)
    ir.replace_uses(graph, t, dq_out, nodes_only=True)  # a graph output keeps its name and float values
    q_out = gs.Variable(ir.unique_name(graph, base + "_q"), dtype=np.uint8, shape=t.shape)
    graph.nodes.append(gs.Node("QuantizeLinear", name=base + "_Q", inputs=[t, scale, zp], outputs=[q_out]))
    codes = q_out
    if p.bits < 8:
        codes = gs.Variable(ir.unique_name(graph, base + "_clip"), dtype=np.uint8, shape=t.shape)
        graph.nodes.append(gs.Node("Clip", name=codes.name, outputs=[codes], inputs=[
            q_out, ir.make_const(ir.unique_name(graph, base + "_clip_lo"), np.array(0, np.uint8)),
            ir.make_const(ir.unique_name(graph, base + "_clip_hi"), np.array(p.qmax, np.uint8))]))
    graph.nodes.append(gs.Node("DequantizeLinear", name=base + "_DQ", inputs=[codes, scale, zp], outputs=[dq_out]))


def quantize_weights(graph: gs.Graph, n: gs.Node, bits: int, x_params: qm.ActQParams,
                      x_means: tuple[np.ndarray, np.ndarray] | None = None,
                      codes: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Per-channel weights and int32 bias of one layer; with `x_means` (E[x], E[Q(x)] per input channel) the
    bias is corrected first (`_bias_shift`). `codes`: (int8 codes, scales) rounded elsewhere
    (`dfc.quant.weight_rounding`), else nearest rounding (`quant_math.quantize_weight`)."""
    axis = weight_axis(n)
    w = ir.const_value(n.inputs[1])
    q, s = codes if codes is not None else qm.quantize_weight(w, bits, axis)
    w_hat = qm.dequantize_weight(q, s, axis)
    err = qm.relative_error(w, w_hat)
    n.inputs[1] = dq_const(graph, n.name + "_w", q, s, np.zeros(s.shape, np.int8), axis, w.shape)
    bias_int = False
    b_in = ir.input_at(n, 2)
    b = ir.const_value(b_in) if b_in is not None else None
    shift = None
    if b is not None and b.size == s.size and int_bias_form(n):
        shift = bias_shift(n, w, w_hat, *x_means) if x_means is not None else None
        if shift is not None:
            b = (b.astype(np.float64).ravel() + shift).astype(np.float32)
        qb, sb = qm.quantize_bias(b.ravel(), x_params.scale, s)
        n.inputs[2] = dq_const(graph, n.name + "_b", qb, sb, np.zeros(sb.shape, np.int32), 0, (b.size,))
        bias_int = True
    return {
        "node": n.name, "op": n.op, "wbits": bits, "input_bits": x_params.bits,
        "weight_rel_error": round(err, 6), "int32_bias": bias_int,
        "bias_shift": None if shift is None else round(float(np.abs(shift).mean()), 6),
    }


def quantize_add_constant(graph: gs.Graph, n: gs.Node, c: gs.Constant, shape: list[int]) -> None:
    """The constant operand of an Add as uint8 codes, per tensor (QLinearAdd reads one scale per input), 8 bits
    over [min(c, 0), max(c, 0)] (an error of at most half a step per channel), expanded to `shape` ([1, C, H, W])
    in front of its DequantizeLinear. ORT folds the Expand when it loads the model: its QLinearAdd then adds two
    tensors broadcast over the batch only, about 2x faster per Add than with a [1, C, 1, 1] operand (ResNet-56,
    18 branches removed, W8A8: 0.21x fp32 against 0.43x), and the file keeps C codes, not C·H·W."""
    p = qm.act_qparams(float(c.values.min()), float(c.values.max()), 8)
    q = qm.quantize_codes(c.values, p.scale, 0, 255, p.zero_point, dtype=np.uint8)
    base = n.name + "_c"
    codes = gs.Variable(ir.unique_name(graph, base + "_expanded"), dtype=np.uint8, shape=shape)
    graph.nodes.append(gs.Node("Expand", name=base + "_expand", outputs=[codes], inputs=[
        ir.make_const(ir.unique_name(graph, base + "_quant"), q),
        ir.make_const(ir.unique_name(graph, base + "_shape"), np.array(shape, np.int64))]))
    out = gs.Variable(ir.unique_name(graph, base + "_dq"), dtype=np.float32, shape=shape)
    graph.nodes.append(gs.Node("DequantizeLinear", name=base + "_DQ", outputs=[out], inputs=[
        codes, ir.make_const(ir.unique_name(graph, base + "_scale"), np.array(p.scale, np.float32)),
        ir.make_const(ir.unique_name(graph, base + "_zp"), np.array(p.zero_point, np.uint8))]))
    n.inputs[n.inputs.index(c)] = out


def dq_const(graph, base, q, scale, zp, axis, shape) -> gs.Variable:
    out = gs.Variable(ir.unique_name(graph, base + "_dq"), dtype=np.float32, shape=list(shape))
    attrs = {"axis": int(axis)} if scale.size > 1 else {}
    graph.nodes.append(
        gs.Node(
            "DequantizeLinear", name=base + "_DQ", attrs=attrs,
            inputs=[ir.make_const(ir.unique_name(graph, base + "_quant"), q.reshape(shape)),
                    ir.make_const(ir.unique_name(graph, base + "_scale"), scale if scale.size > 1 else scale.reshape(())),
                    ir.make_const(ir.unique_name(graph, base + "_zp"), zp if zp.size > 1 else zp.reshape(()))],
            outputs=[out],
        )
    )
    return out


def ensure_bias(n: gs.Node) -> None:
    """A zero bias on a Conv / plain Gemm that has none, so that bias correction has one to move."""
    if n.op == "MatMul" or ir.input_at(n, 2) is not None or not int_bias_form(n):
        return
    w = ir.const_value(n.inputs[1])
    n.inputs.append(ir.make_const(n.name + "_bias0", np.zeros(w.shape[weight_axis(n)], np.float32)))


def _integer_pad(graph: gs.Graph, pad: gs.Node) -> bool:
    """Rule `integer-pad`: DQ → [Slice …] → zero Pad → Q, where Q has the DQ's parameters (`shared_params`), becomes
    [Slice …] → Pad → DQ on the quantized tensor, the Pad filling with the zero point (the code of 0.0): the
    option-A shortcut of the CIFAR ResNets runs on uint8. Bit-exact; ORT has no fused Pad, so otherwise the Pad
    runs in float between a DequantizeLinear and a QuantizeLinear."""
    if not ir.is_zero_pad(pad):
        return False
    q = ir.single_consumer(pad.outputs[0], graph)
    if q is None or q.op != "QuantizeLinear" or ir.input_at(pad, 3) is not None:
        return False
    chain, t = [pad], pad.inputs[0]
    while ir.producer(t) is not None and ir.producer(t).op == "Slice" and ir.single_consumer(t, graph) is not None:
        chain.insert(0, ir.producer(t))
        t = chain[0].inputs[0]
    dq = ir.producer(t)
    if dq is None or dq.op != "DequantizeLinear" or any(
            not np.array_equal(ir.const_value(a), ir.const_value(b)) for a, b in zip(dq.inputs[1:3], q.inputs[1:3])):
        return False
    codes = dq.inputs[0]
    chain[0].inputs[0] = codes
    for n in chain:
        n.outputs[0].dtype = codes.dtype
    while len(pad.inputs) > 2:
        pad.inputs.pop()
    pad.inputs.append(ir.make_const(ir.unique_name(graph, pad.name + "_zp"), ir.const_value(q.inputs[2]).reshape(())))
    ir.replace_uses(graph, q.outputs[0], pad.outputs[0])
    q.inputs.clear()
    q.outputs.clear()
    graph.nodes.remove(q)
    return True


QDQ_RULES = [rewrite.Rule("integer-pad", ("Pad",), _integer_pad)]  # the one rule mechanism, on the QDQ form


def integer_pads(graph: gs.Graph) -> int:
    """Zero Pads moved into the integer domain after the Q/DQ pairs went in (`QDQ_RULES`); returns how many. The
    node order is kept (no tidy between rounds): the written model is the same as the pass wrote before the rule."""
    return rewrite.apply_rules(graph, QDQ_RULES, tidy=False)["integer-pad"]
