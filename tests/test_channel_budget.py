"""Hardware-aligned pruning (`--channel-multiple`) and pruning to a target (`--target-macs/-size/-latency`):
the channel arithmetic, the cost models, the search and its report."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import DEMO, conv_bn_relu_cnn, make_model

from dfc.graph import ir
from dfc.api import optimize_with_report
from dfc.prune.channel_budget import aligned_keep, allowed_drop
from dfc.errors import DfcError
from dfc.prune.layer_cost import BytesCost, LatencyCost, LayerSpec, MacsCost, layer_model, spec_of


def _channels(model):
    g = ir.import_graph(model)
    return {n.name: ir.const_value(n.inputs[1]).shape[0] for n in ir.weighted_nodes(g)}


def _wide(seed=0):
    """conv1 (16) -> conv2 (32) -> conv3 (4): two prunable inner layers of different widths."""
    r = np.random.default_rng(seed)
    inits = {"w1": r.normal(0, 0.3, (16, 3, 3, 3)), "w2": r.normal(0, 0.2, (32, 16, 3, 3)), "w3": r.normal(0, 0.2, (4, 32, 3, 3))}
    from onnx import helper

    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["a"], ["ra"], name="relu1"),
             helper.make_node("Conv", ["ra", "w2"], ["b"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["b"], ["rb"], name="relu2"),
             helper.make_node("Conv", ["rb", "w3"], ["y"], pads=[1, 1, 1, 1], name="conv3")]
    return make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", ["N", 4, 8, 8])],
                      {k: v.astype(np.float32) for k, v in inits.items()})


def prune(model, **kw):
    return optimize_with_report(model, no_quant=True, measure=False, **kw)


def test_allowed_drop_and_aligned_keep():
    assert allowed_drop(64, 64, 16) == 16 and allowed_drop(48, 64, 16) == 16 and allowed_drop(16, 64, 16) == 0
    assert allowed_drop(24, 24, 16) == 8  # down to the next multiple
    assert allowed_drop(16, 16, 16) == 0 and allowed_drop(12, 12, 16) == 0  # one block or less: whole
    assert allowed_drop(5, 8, 1) == 1 and allowed_drop(1, 8, 1) == 0
    assert aligned_keep(64, 0.3, 16) == 48 and aligned_keep(32, 0.3, 16) == 16 and aligned_keep(16, 0.3, 16) == 16
    assert aligned_keep(64, 0.01, 16) == 64 and aligned_keep(64, 0.99, 16) == 16
    assert [aligned_keep(n, 0.3, 1) for n in (16, 32, 64)] == [11, 22, 45]  # multiple 1: today's uniform counts


@pytest.mark.parametrize("rank", ["uniform", "global"])
def test_pruned_conv_layers_keep_a_multiple_or_stay_whole(rank):
    out, rep = prune(_wide(), prune=0.4, prune_rank=rank, channel_multiple=8, compensate="none")
    ch = _channels(out)
    assert all(c % 8 == 0 for c in (ch["conv1"], ch["conv2"])) and ch["conv3"] == 4
    assert ch["conv1"] + ch["conv2"] < 48
    assert rep["passes"]["prune"]["multiple"] == 8


def test_channel_multiple_1_reproduces_unaligned_pruning():
    """--channel-multiple 1 is the pruning of before the option existed: 30 % of 16 and 32 leave 11 and 22."""
    out, _ = prune(_wide(), prune=0.3, prune_rank="uniform", channel_multiple=1, compensate="none")
    assert _channels(out) == {"conv1": 11, "conv2": 22, "conv3": 4}
    out8, _ = prune(_wide(), prune=0.3, prune_rank="uniform", channel_multiple=8, compensate="none")
    assert _channels(out8) == {"conv1": 8, "conv2": 24, "conv3": 4}


def test_default_multiple_is_the_cpu_block(monkeypatch):
    from dfc.measure import runtime

    monkeypatch.setattr(runtime, "nchwc_block", lambda: 8)
    _, rep = prune(_wide(), prune=0.3, compensate="none")
    assert rep["options"]["channel_multiple"] == 8 and rep["passes"]["prune"]["multiple"] == 8


def test_layer_costs_match_the_pruned_graph():
    """The cost models read off a spec agree with the model statistics of the graph they describe."""
    from dfc.graph.stats import layer_stats

    m = _wide()
    g = ir.infer_shapes(ir.import_graph(m))
    rows = {r.name: r for r in layer_stats(m)}
    for n in ir.weighted_nodes(g):
        spec = spec_of(n)
        assert MacsCost()(spec) == rows[n.name].macs
        assert BytesCost()(spec) == 4 * rows[n.name].params + 4 * spec.c_out  # zero bias counted as float
    spec = spec_of([n for n in g.nodes if n.name == "conv2"][0])
    assert spec.with_channels(c_in=8).macs == spec.macs // 2
    assert BytesCost()(LayerSpec("Conv", 16, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (8, 8), bits=8)) == 32 * 16 * 9 + 4 * 32 + 5 * 32


def test_target_macs_is_met_and_reported():
    out, rep = prune(_wide(), target_macs=0.6, channel_multiple=8, compensate="none")
    t = rep["passes"]["prune"]["target"]
    ratio = rep["after"]["macs"] / rep["before"]["macs"]
    assert t["kind"] == "macs" and t["met"] and ratio <= 0.6 and t["measured"] == pytest.approx(ratio, rel=1e-3)
    assert t["search"] and all(r["predicted"] == pytest.approx(r["measured"], rel=1e-3) for r in t["search"])
    # this toy's 8-channel chunks cannot land in [0.54, 0.6]: the search tried both sides and kept the closest met
    assert t["band"] == [0.54, 0.6] and not t["landed"]
    assert {r["verdict"] for r in t["search"]} == {"fast", "slow"}
    assert all(c % 8 == 0 for c in list(_channels(out).values())[:2])


@pytest.mark.parametrize("rank", ["uniform", "global"])
def test_both_rankings_search_toward_a_target(rank):
    """Uniform: the smallest ratio whose aligned counts meet the predicted target (bisection); global: chunks."""
    out, rep = prune(_wide(), target_macs=0.7, channel_multiple=8, compensate="none", prune_rank=rank)
    t = rep["passes"]["prune"]["target"]
    assert t["met"] and rep["after"]["macs"] <= 0.7 * rep["before"]["macs"]
    assert rep["passes"]["prune"]["global"] is (rank == "global")
    ch = _channels(out)
    assert ch["conv1"] % 8 == 0 and ch["conv2"] % 8 == 0 and ch["conv1"] + ch["conv2"] < 48


def test_unreachable_target_is_said_with_the_closest_result():
    out, rep = prune(_wide(), target_macs=0.01, channel_multiple=8, compensate="none")
    t = rep["passes"]["prune"]["target"]
    assert not t["met"] and t["measured"] > 0.01
    assert any("target macs 0.01x not met" in n and "closest" in n for n in rep["notes"])
    ch = _channels(out)
    assert ch["conv1"] == 8 and ch["conv2"] == 8  # everything that could go went


def test_target_size_counts_quantized_weights():
    """Quantized weights take a quarter of their float bytes: the same size target needs less pruning with W8A8."""
    kw = dict(target_size=0.45, channel_multiple=8, compensate="none", prune_scope="all", measure=False, calib="gaussian")
    _, rep_f = optimize_with_report(DEMO, no_quant=True, **kw)
    _, rep_q = optimize_with_report(DEMO, calib_samples=8, **kw)
    for rep, quantized in ((rep_f, False), (rep_q, True)):
        t = rep["passes"]["prune"]["target"]
        assert t["met"] and t["quantized"] is quantized and rep["target"]["met"]
        assert rep["after"]["size_bytes"] <= 0.45 * rep["before"]["size_bytes"]
        # the search sizes a candidate with its own metadata (the removed channels' BN statistics gone): what it
        # measured is what the written file measures
        assert t["measured"] == pytest.approx(rep["after"]["size_bytes"] / rep["before"]["size_bytes"], rel=0.01)
    assert rep_q["passes"]["prune"]["groups_removed"] < rep_f["passes"]["prune"]["groups_removed"]


def test_target_latency_searches_with_the_layer_model(tmp_path, monkeypatch):
    monkeypatch.setenv("DFC_CACHE_DIR", str(tmp_path))
    _, rep = prune(DEMO, target_latency=0.7, channel_multiple=8, compensate="none", prune_scope="all")
    t = rep["passes"]["prune"]["target"]
    assert t["kind"] == "latency" and t["cost_model"] == "ChainedLatency" and t["layers_timed"] > 0
    assert t["met"] == (t["measured"] <= 0.7) and t["search"]
    if not t["met"]:
        assert any("target latency 0.7x not met" in n for n in rep["notes"])
    cache = list(tmp_path.glob("layer_latency_*.json"))
    assert len(cache) == 1 and json.loads(cache[0].read_text())["times"]


def test_latency_cost_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("DFC_CACHE_DIR", str(tmp_path))
    spec = LayerSpec("Conv", 16, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (8, 8))
    a = LatencyCost(batch=4, threads=1, rounds=5)
    t = a(spec)
    assert t > 0 and a.measured == 1
    b = LatencyCost(batch=4, threads=1, rounds=5)
    assert b(spec) == t and b.measured == 0
    assert LatencyCost(batch=8, threads=1, rounds=5).table == {}  # another batch: another table


@pytest.mark.parametrize("depthwise", [False, True])
def test_quantized_layer_model_is_what_ort_fuses(depthwise):
    from dfc.measure.runtime import ort_optimized_ops

    spec = LayerSpec("Conv", 16, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (8, 8), depthwise=depthwise, bits=8)
    onnx.checker.check_model(layer_model(spec, 2, False))
    ops = ort_optimized_ops(layer_model(spec, 2, True))
    assert ops["QLinearConv"] == 1 and ops["Conv"] == 0


def test_target_options_are_checked():
    with pytest.raises(DfcError, match="exclusive"):
        prune(_wide(), prune=0.3, target_latency=0.5)
    with pytest.raises(DfcError, match="one target"):
        prune(_wide(), target_size=0.5, target_macs=0.5)
    with pytest.raises(DfcError, match="--target-macs must be a ratio"):
        prune(_wide(), target_macs=1.5)
    with pytest.raises(DfcError, match="--channel-multiple"):
        prune(_wide(), prune=0.3, channel_multiple=0)
