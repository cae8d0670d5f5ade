"""`cleanup`: remove exporter junk so later passes see plain Conv/BN/Relu/Add/Slice/Pad/Pool/Gemm graphs.

Exact. Steps:
1. constant folding of shape arithmetic (Shape/Gather/Unsqueeze/Concat/ConstantOfShape/Cast/
   Reshape/Transpose chains feeding Pad/Reshape, Constant nodes) into initializers, evaluated by
   onnx-graphsurgeon's `fold_constants` (ORT underneath) - a well-kept implementation of exactly
   this, rather than a hand-written evaluator;
2. Identity and inference-mode Dropout nodes bypassed;
3. every unnamed node gets a unique name (`<Op>_<k>`), so errors and reports can name it;
4. ReduceMean over all spatial axes of a 4-D tensor rewritten as GlobalAveragePool (+ Flatten when
   keepdims=0), the form ONNX Runtime's quantized kernels recognise.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfc import ir
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
        removed = self._bypass_noops(graph)
        pools = self._reduce_mean_to_gap(graph)
        ir.tidy(graph)
        ctx.results["cleanup"] = {
            "nodes_before": before,
            "nodes_after": len(graph.nodes),
            "noops_removed": removed,
            "nodes_named": named,
            "reducemean_to_gap": pools,
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

    @staticmethod
    def _bypass_noops(graph: gs.Graph) -> int:
        count = 0
        for node in list(graph.nodes):
            if node.op == "Identity" or (node.op == "Dropout" and len([o for o in node.outputs if o.outputs or ir.is_graph_output(graph, o)]) <= 1):
                if node.op == "Dropout":
                    del node.outputs[1:]
                if ir.is_graph_output(graph, node.inputs[0]) and ir.is_graph_output(graph, node.outputs[0]):
                    continue
                ir.bypass_node(graph, node)
                count += 1
        return count

    @staticmethod
    def _reduce_mean_to_gap(graph: gs.Graph) -> int:
        count = 0
        for node in list(graph.nodes):
            if node.op != "ReduceMean" or ir.rank_of(node.inputs[0]) != 4:
                continue
            axes = node.attrs.get("axes")
            if axes is None and ir.input_at(node, 1) is not None:
                axes = ir.const_value(node.inputs[1])
                if axes is None:
                    continue
            if axes is None or sorted(int(a) % 4 for a in np.ravel(axes)) != [2, 3]:
                continue
            keep = int(node.attrs.get("keepdims", 1))
            x, y = node.inputs[0], node.outputs[0]
            node.inputs.clear()
            node.outputs.clear()
            if keep:
                graph.nodes.append(gs.Node("GlobalAveragePool", name=node.name, inputs=[x], outputs=[y]))
            else:
                pooled = gs.Variable(ir.unique_name(graph, y.name + "_gap"), dtype=y.dtype)
                graph.nodes.append(gs.Node("GlobalAveragePool", name=node.name, inputs=[x], outputs=[pooled]))
                graph.nodes.append(gs.Node("Flatten", name=node.name + "_flatten", attrs={"axis": 1}, inputs=[pooled], outputs=[y]))
            count += 1
        return count
