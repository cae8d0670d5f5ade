"""Depth pruning: residual branches found from the graph, removed with their BN mean, chosen on the probe toward a
target (`dfc.prune.branches`, `prune --prune-depth`)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import bn_node, bn_params, make_model, rand, run
from onnx import helper

from dfc.graph import ir
from dfc.api import optimize_with_report
from dfc.options.resolve import prune_depth, resolve as resolve_options
from dfc.prune.branches import remove_branch, residual_branches
from dfc.errors import DfcError
from dfc.pipeline import PassManager, context_from_model, get_pass


def _resnet(blocks: int = 3, quiet: int | None = None, c: int = 8, seed: int = 0) -> onnx.ModelProto:
    """x[N,3,8,8] -> conv0 BN Relu -> `blocks` × (conv BN Relu conv BN, Add(identity), Relu) -> GAP -> Flatten -> Gemm.
    Block `quiet` has γ = 0 at its last BN: its branch outputs exactly β."""
    r = np.random.default_rng(seed)
    inits = {"w0": r.normal(0, 0.3, (c, 3, 3, 3)), "fc_w": r.normal(0, 0.3, (4, c)), "fc_b": r.normal(0, 0.1, 4),
             **bn_params("bn0", c, seed)}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"), bn_node("bn0", "c0", "b0"),
             helper.make_node("Relu", ["b0"], ["s0"], name="relu0")]
    for k in range(blocks):
        p, s = f"blk{k}", f"s{k}"
        inits.update({f"{p}_w1": r.normal(0, 0.2, (c, c, 3, 3)), f"{p}_w2": r.normal(0, 0.2, (c, c, 3, 3)),
                      **bn_params(f"{p}_bn1", c, seed + 10 * k + 1), **bn_params(f"{p}_bn2", c, seed + 10 * k + 2)})
        if k == quiet:
            inits[f"{p}_bn2_g"] = np.zeros(c)
        nodes += [helper.make_node("Conv", [s, f"{p}_w1"], [f"{p}_c1"], pads=[1, 1, 1, 1], name=f"{p}/conv1"),
                  bn_node(f"{p}_bn1", f"{p}_c1", f"{p}_b1"),
                  helper.make_node("Relu", [f"{p}_b1"], [f"{p}_r1"], name=f"{p}/relu1"),
                  helper.make_node("Conv", [f"{p}_r1", f"{p}_w2"], [f"{p}_c2"], pads=[1, 1, 1, 1], name=f"{p}/conv2"),
                  bn_node(f"{p}_bn2", f"{p}_c2", f"{p}_b2"),
                  helper.make_node("Add", [f"{p}_b2", s], [f"{p}_sum"], name=f"{p}/add"),
                  helper.make_node("Relu", [f"{p}_sum"], [f"s{k + 1}"], name=f"{p}/relu2")]
    nodes += [helper.make_node("GlobalAveragePool", [f"s{blocks}"], ["p"], name="gap"),
              helper.make_node("Flatten", ["p"], ["f"], axis=1, name="flatten"),
              helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1, name="fc")]
    return make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", ["N", 4])], {k: v.astype(np.float32) for k, v in inits.items()})


def _folded(model):
    ctx = context_from_model(model)
    folded = PassManager([get_pass("cleanup"), get_pass("fold-bn")]).run(model, ctx)
    return ir.infer_shapes(ir.import_graph(folded)), ctx


def test_branches_are_found_from_the_graph():
    g, ctx = _folded(_resnet(blocks=3))
    found = residual_branches(g, ctx.bn_stats)
    assert [b.add for b in found] == ["blk0/add", "blk1/add", "blk2/add"]
    assert all(b.layers == (f"blk{k}/conv1", f"blk{k}/conv2") for k, b in enumerate(found))
    assert found[1].source == "s1" and found[1].index == 0


def test_a_branch_read_outside_is_not_removable():
    m = _resnet(blocks=2)
    m.graph.output.append(helper.make_tensor_value_info("blk1_r1", onnx.TensorProto.FLOAT, None))  # inner tensor exposed
    g, ctx = _folded(m)
    assert [b.add for b in residual_branches(g, ctx.bn_stats)] == ["blk0/add"]


def test_removing_a_constant_branch_is_exact():
    """A branch whose last BN has γ = 0 outputs β everywhere: replacing it by its BN mean changes nothing."""
    model = _resnet(blocks=3, quiet=1)
    g, ctx = _folded(model)
    branch = next(b for b in residual_branches(g, ctx.bn_stats) if b.add == "blk1/add")
    out = ir.export_model(remove_branch(g, branch, ctx.bn_stats))
    onnx.checker.check_model(out, full_check=True)
    assert not any(n.name.startswith("blk1/conv") for n in out.graph.node)
    assert "blk1_b2" not in ctx.bn_stats  # the removed tensors' statistics go with them
    x = rand((16, 3, 8, 8), seed=3)
    np.testing.assert_allclose(run(out, x), run(model, x), atol=1e-4)


def test_a_target_search_removes_the_least_harmful_branch_first():
    """Toward a MACs target with depth on, the quiet branch (no effect on the outputs) goes first; the target is met
    and the report lists the removals with their probe error."""
    model = _resnet(blocks=3, quiet=2)
    out, rep = optimize_with_report(model, no_quant=True, measure=False, target_macs=0.75, prune_depth="on",
                                    channel_multiple=1, calib="gaussian")
    depth = rep["passes"]["prune"]["depth"]
    assert depth["candidates"] == 3 and depth["removed"][0]["add"] == "blk2/add"
    assert depth["removed"][0]["probe_error"] == pytest.approx(0.0, abs=1e-8)
    assert rep["passes"]["prune"]["target"]["met"] and rep["after"]["macs"] <= 0.75 * rep["before"]["macs"]
    assert not any(n.name.startswith("blk2/") and n.op_type == "Conv" for n in out.graph.node)
    onnx.checker.check_model(out)


def test_depth_pruned_model_quantizes_and_runs():
    out, rep = optimize_with_report(_resnet(blocks=3, quiet=0), measure=False, target_macs=0.75, prune_depth="on",
                                    channel_multiple=1, calib="gaussian", calib_samples=8)
    assert rep["passes"]["prune"]["depth"]["removed"]
    assert any(n.op_type == "QuantizeLinear" for n in out.graph.node)
    assert np.isfinite(run(out, rand((4, 3, 8, 8)))).all()


def test_removed_branches_quantize_to_qlinear_adds():
    """What a removed branch leaves, y = Relu(S + E[f(S)]), runs as a QLinearAdd: the constant's codes are stored per
    channel and expanded to the activation's shape (ORT folds the Expand), so no float Add and no extra
    Quantize/DequantizeLinear remain; the QDQ graph stays close to the float one, and the torch executor (the
    fine-tuning student's) reads the Expand as ORT does."""
    import torch

    from dfc.measure.runtime import make_session, ort_optimized_ops
    from dfc.synth.torch_exec import TorchGraph

    g, ctx = _folded(_resnet(blocks=3))
    for name in ("blk0/add", "blk1/add"):  # two in a row: the second reads the first's quantized output
        branch = next(b for b in residual_branches(g, ctx.bn_stats) if b.add == name)
        g = ir.infer_shapes(remove_branch(g, branch, ctx.bn_stats))
    pruned = ir.export_model(g)
    q = PassManager([get_pass("quantize", calib="gaussian", calib_samples=32)]).run(pruned, ctx)
    onnx.checker.check_model(q, full_check=True)
    ops = ort_optimized_ops(q)
    assert ops["QLinearAdd"] == 3 and ops["Add"] == 0 and ops["DequantizeLinear"] == 0, ops
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
    expands = [n for n in q.graph.node if n.op_type == "Expand"]
    assert len(expands) == 2 and all(inits[n.input[0]].dtype == np.uint8 and inits[n.input[0]].size == 8 for n in expands)
    x = rand((16, 3, 8, 8), seed=4)
    ref, out = run(pruned, x), run(q, x)
    assert np.abs(out - ref).mean() < 0.05 * np.abs(ref).mean()
    s = make_session(q, optimize=False)
    qdq = s.run(None, {s.get_inputs()[0].name: x})[0]
    torch_out = TorchGraph(q)(torch.from_numpy(x))[0][0].detach().numpy()
    np.testing.assert_allclose(torch_out, qdq, atol=1e-4)


def test_prune_depth_option():
    assert prune_depth(resolve_options({})) and not prune_depth(resolve_options({"prune_depth": "off"}))
    with pytest.raises(DfcError, match="--prune-depth must be one of"):
        resolve_options({"prune_depth": "auto"})
