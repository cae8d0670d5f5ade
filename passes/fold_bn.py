"""`fold-bn`: fold inference BatchNormalization into the preceding Conv / Gemm / MatMul. Exact.

BN(y) = γ·(y − μ)/√(σ² + ε) + β = k·y + (β − k·μ), with k = γ/√(σ² + ε) per channel.
- Conv:  W'[o] = k[o]·W[o],   b'[o] = k[o]·(b[o] − μ[o]) + β[o].
- Gemm:  y = α·A·B + β_g·C  ->  B' scaled by k along the output axis, C' = k·(β_g·C − μ) + β, β_g' = 1.
- MatMul (2-D output, constant [in, out] weight): W' = W·diag(k), followed by Add(β − k·μ).
- Any other BN (pre-activation style, BN after Add, ...): Mul(k) + Add(β − k·μ) on its channel axis.
The statistics (μ, σ², γ, β, ε) of every folded BN are kept in `ctx.bn_stats`, keyed by the name
of the BN's output tensor, which the folded node now writes (its name is preserved).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfc.graph import ir
from dfc.graph.bn_stats import BNStats
from dfc.errors import DfcError
from dfc.pipeline import Context, Pass, register


NO_BN_NOTE = (
    "no BatchNormalization statistics (no BN nodes, no dfc metadata: a BN-folded export?): synthetic samples come from "
    "the inception scheme (classifiers) or pink noise instead of BNS, and pruning reads each layer's channel moments "
    "as measured on the synthesized samples (on Gaussian noise where none are synthesized). Exported with BatchNorm "
    "kept, dfc synthesizes from the statistics and does better: "
    "dfc.export(module, example_input, path), or torch.onnx.export(..., dynamo=False, "
    "training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)"
)


@register
class FoldBN(Pass):
    name = "fold-bn"
    exact = True

    def run(self, graph: gs.Graph, ctx: Context) -> gs.Graph:
        bns = ir.nodes_by_op(graph, "BatchNormalization")
        if bns:
            ctx.bn_stats_found = True
            graph = ir.infer_shapes(graph)
            bns = ir.nodes_by_op(graph, "BatchNormalization")
        elif not ctx.bn_stats_found:
            ctx.note(NO_BN_NOTE)
        folded = {"Conv": 0, "Gemm": 0, "MatMul": 0, "affine": 0}
        for bn in bns:
            stats = self._stats(bn)
            y = bn.outputs[0]
            kind = self._fold(graph, bn, stats)
            folded[kind] += 1
            ctx.bn_stats[y.name] = stats
        ir.tidy(graph)
        ctx.results["fold-bn"] = {"folded": folded, "bn_stats_kept": len(ctx.bn_stats)}
        return graph

    @staticmethod
    def _stats(bn: gs.Node) -> BNStats:
        if int(bn.attrs.get("training_mode", 0)) or len([o for o in bn.outputs if o.outputs]) > 1:
            raise DfcError(f"node {bn.name!r}: BatchNormalization in training mode cannot be folded; export the model in eval mode")
        vals = [ir.const_value(ir.input_at(bn, i)) for i in range(1, 5)]
        if any(v is None for v in vals):
            raise DfcError(f"node {bn.name!r}: BatchNormalization parameters are not constants")
        gamma, beta, mean, var = (np.asarray(v, np.float64).ravel() for v in vals)
        return BNStats(mean, var, gamma, beta, float(bn.attrs.get("epsilon", 1e-5)), bn.name)

    def _fold(self, graph: gs.Graph, bn: gs.Node, s: BNStats) -> str:
        k = s.gamma / np.sqrt(s.var + s.eps)
        shift = s.beta - k * s.mean
        x = bn.inputs[0]
        prod = ir.producer(x)
        sole = prod is not None and ir.single_consumer(x, graph) is bn
        if sole and prod.op == "Conv" and self._fold_conv(prod, k, shift, s):
            kind = "Conv"
        elif sole and prod.op == "Gemm" and ir.rank_of(x) == 2 and self._fold_gemm(prod, k, s):
            kind = "Gemm"
        elif sole and prod.op == "MatMul" and ir.rank_of(x) == 2 and self._fold_matmul(graph, prod, k, shift, bn):
            return "MatMul"
        else:
            self._to_affine(graph, bn, k, shift)
            return "affine"
        ir.bypass_node(graph, bn)
        return kind

    @staticmethod
    def _fold_conv(conv: gs.Node, k: np.ndarray, shift: np.ndarray, s: BNStats) -> bool:
        w = ir.const_value(ir.input_at(conv, 1))
        if w is None or w.shape[0] != k.shape[0]:
            return False
        b_in = ir.input_at(conv, 2)
        b = np.zeros(w.shape[0]) if b_in is None else ir.const_value(b_in)
        if b is None:
            return False
        kk = k.reshape((-1,) + (1,) * (w.ndim - 1))
        new_w = (w.astype(np.float64) * kk).astype(w.dtype)
        new_b = (k * (b.astype(np.float64) - s.mean) + s.beta).astype(w.dtype)
        _set_weight_and_bias(conv, new_w, new_b)
        return True

    @staticmethod
    def _fold_gemm(gemm: gs.Node, k: np.ndarray, s: BNStats) -> bool:
        w = ir.const_value(ir.input_at(gemm, 1))
        if w is None or w.ndim != 2 or int(gemm.attrs.get("transA", 0)):
            return False
        trans_b = int(gemm.attrs.get("transB", 0))
        n_out = w.shape[0] if trans_b else w.shape[1]
        if n_out != k.shape[0]:
            return False
        c_in = ir.input_at(gemm, 2)
        c = np.zeros(n_out) if c_in is None else ir.const_value(c_in)
        if c is None or c.size not in (1, n_out):
            return False
        c = np.broadcast_to(np.ravel(c).astype(np.float64), (n_out,))
        beta_g = float(gemm.attrs.get("beta", 1.0))
        scale = k[:, None] if trans_b else k[None, :]
        new_w = (w.astype(np.float64) * scale).astype(w.dtype)
        new_c = (k * (beta_g * c - s.mean) + s.beta).astype(w.dtype)
        _set_weight_and_bias(gemm, new_w, new_c)
        gemm.attrs["beta"] = 1.0
        return True

    @staticmethod
    def _fold_matmul(graph: gs.Graph, mm: gs.Node, k: np.ndarray, shift: np.ndarray, bn: gs.Node) -> bool:
        w = ir.const_value(ir.input_at(mm, 1))
        if w is None or w.ndim != 2 or w.shape[1] != k.shape[0]:
            return False
        mm.inputs[1] = ir.make_const(mm.name + "_w_bnfold", (w.astype(np.float64) * k[None, :]).astype(w.dtype))
        y = bn.outputs[0]
        mid = mm.outputs[0]
        bn.inputs.clear()
        bn.outputs.clear()
        bias = ir.make_const(mm.name + "_b_bnfold", shift.astype(w.dtype))
        graph.nodes.append(gs.Node("Add", name=bn.name + "_bias", inputs=[mid, bias], outputs=[y]))
        return True

    @staticmethod
    def _to_affine(graph: gs.Graph, bn: gs.Node, k: np.ndarray, shift: np.ndarray) -> None:
        x, y = bn.inputs[0], bn.outputs[0]
        rank = ir.rank_of(x)
        if rank is None:
            raise DfcError(f"node {bn.name!r}: cannot fold a BatchNormalization whose input rank is unknown")
        dtype = np.float32 if x.dtype is None else np.dtype(x.dtype)
        shape = (-1,) + (1,) * (rank - 2)
        mul_out = gs.Variable(ir.unique_name(graph, y.name + "_scaled"), dtype=x.dtype)
        bn.inputs.clear()
        bn.outputs.clear()
        graph.nodes.append(
            gs.Node("Mul", name=bn.name + "_scale", inputs=[x, ir.make_const(bn.name + "_k", k.reshape(shape).astype(dtype))], outputs=[mul_out])
        )
        graph.nodes.append(
            gs.Node("Add", name=bn.name + "_shift", inputs=[mul_out, ir.make_const(bn.name + "_shift_c", shift.reshape(shape).astype(dtype))], outputs=[y])
        )


def _set_weight_and_bias(node: gs.Node, w: np.ndarray, b: np.ndarray) -> None:
    """Give a Conv/Gemm new constant inputs 1 (weight) and 2 (bias, appended when absent)."""
    node.inputs[1] = ir.make_const(node.name + "_w_bnfold", w)
    bias = ir.make_const(node.name + "_b_bnfold", b)
    if len(node.inputs) > 2:
        node.inputs[2] = bias
    else:
        node.inputs.append(bias)
