"""`cleanup`: remove exporter junk so later passes see plain Conv/BN/Relu/Add/Slice/Pad/Pool/Gemm graphs.

Exact. Steps:
1. constant folding of shape arithmetic (Shape/Gather/Unsqueeze/Concat/ConstantOfShape/Cast/
   Reshape/Transpose chains feeding Pad/Reshape, Constant nodes) into initializers, evaluated by
   onnx-graphsurgeon's `fold_constants` (ORT underneath) - a well-kept implementation of exactly
   this, rather than a hand-written evaluator;
2. every unnamed node gets a unique name (`<Op>_<k>`), so errors and reports can name it;
3. the exporter idioms of `dfc.graph.rewrite.RULES` rewritten (Identity/Dropout bypassed, ReduceMean -> GlobalAveragePool,
   zero Pad folded into the Conv that reads it, the dynamic-batch flatten's shape arithmetic -> a constant shape,
   hard-swish/hard-sigmoid in one form, a Conv's bias Add into the Conv);
4. with a fixed-batch export worked on batch-free (`ctx.fixed_batch`, `dfc.graph.signature`) the Reshapes that baked the
   batch in read 0 there instead (`dfc.graph.rewrite.batch_free_reshape`);
5. the input's free dims set to the work's shape (`ctx.input_shape`, from `--input-shape`; `dfc.graph.signature`) after
   the folding, so that no shape arithmetic is folded with them.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from dfc.graph import ir, rewrite
from dfc.pipeline import Context, Pass, register


@register
class Cleanup(Pass):
    name = "cleanup"
    exact = True

    def run(self, graph: gs.Graph, ctx: Context) -> gs.Graph:
        before = len(graph.nodes)
        graph.fold_constants(fold_shapes=True, error_ok=True)
        ir.tidy(graph)
        graph = ir.infer_shapes(graph)
        graph.fold_constants(fold_shapes=True, error_ok=True)
        ir.tidy(graph)
        named = self._name_nodes(graph)
        rules = rewrite.RULES + ([rewrite.batch_free_reshape(ctx.fixed_batch)] if ctx.fixed_batch else [])
        rewrites = rewrite.apply_rules(graph, rules)
        if any(rewrites.values()):  # a rewrite can make shapes known that the next rules read (a freed Reshape)
            graph = ir.infer_shapes(graph)
            more = rewrite.apply_rules(graph, rules)
            rewrites = {k: v + more[k] for k, v in rewrites.items()}
        graph.fold_constants(fold_shapes=True, error_ok=True)
        ir.tidy(graph)
        if ctx.input_shape is not None:
            t = graph.inputs[0]
            t.shape = [t.shape[0] if t.shape else "N"] + list(ctx.input_shape)
            graph = ir.infer_shapes(graph)
        ctx.results["cleanup"] = {
            "nodes_before": before,
            "nodes_after": len(graph.nodes),
            "nodes_named": named,
            "rewrites": rewrites,
        }
        return graph

    @staticmethod
    def _name_nodes(graph: gs.Graph) -> int:
        taken = {n.name for n in graph.nodes if n.name}
        count = 0
        for n in graph.nodes:
            if not n.name:
                k = 0
                while f"{n.op}_{k}" in taken:
                    k += 1
                n.name = f"{n.op}_{k}"
                taken.add(n.name)
                count += 1
        return count
