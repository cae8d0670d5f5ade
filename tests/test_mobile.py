"""What mobile models (EfficientNet-Lite0 and its kind: ReLU6, depthwise convs, near-constant channels, large inputs)
need: ReLU6 absorbed by the quantizer, BN moments through a Clip, mean compensation of pruned channels behind a
Clip or a depthwise conv, the ε-floored J_KL, the inverter's work budget, notes per kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import bn_node, bn_params, make_model, rand, run
from onnx import helper

from dfc.api import optimize_with_report
from dfc.measure.runtime import ort_optimized_ops


def relu6_cnn(dead_beta: float | None = None, seed: int = 0, size: int = 8):
    """x[N,3,size,size] -> Conv3x3(8) BN Clip(0,6) -> depthwise Conv3x3 BN Clip(0,6) -> Conv1x1(6) BN -> GAP -> Flatten
    -> Gemm(4). With `dead_beta`, channel 0 of the depthwise conv is constant (zero filter, BN running var 0), so after
    its BN and Clip the project conv reads clip(dead_beta, 0, 6) there on every input."""
    r = np.random.default_rng(seed)
    inits = {"w1": r.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "wd": r.normal(0, 0.3, (8, 1, 3, 3)).astype(np.float32),
             "w2": r.normal(0, 0.3, (6, 8, 1, 1)).astype(np.float32), "fc_w": r.normal(0, 0.3, (4, 6)).astype(np.float32),
             "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32),
             **bn_params("bn1", 8, seed + 1), **bn_params("bnd", 8, seed + 2), **bn_params("bn2", 6, seed + 3)}
    if dead_beta is not None:
        inits["wd"][0] = 0.0
        inits["bnd_m"][0], inits["bnd_v"][0], inits["bnd_b"][0] = 0.0, 0.0, dead_beta
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"), bn_node("bn1", "c1", "b1"),
        helper.make_node("Clip", ["b1", "lo", "hi"], ["r1"], name="relu6_1"),
        helper.make_node("Conv", ["r1", "wd"], ["cd"], pads=[1, 1, 1, 1], group=8, name="dw"), bn_node("bnd", "cd", "bd"),
        helper.make_node("Clip", ["bd", "lo", "hi"], ["rd"], name="relu6_d"),
        helper.make_node("Conv", ["rd", "w2"], ["c2"], name="project"), bn_node("bn2", "c2", "b2"),
        helper.make_node("GlobalAveragePool", ["b2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w"], ["y"], transB=1, name="fc"),
    ]
    return make_model(nodes, [("x", ["N", 3, size, size])], [("y", ["N", 4])], inits)


def test_relu6_is_absorbed_into_the_output_quantizer_and_ort_fuses_everything():
    m = relu6_cnn()
    q, rep = optimize_with_report(m, calib="gaussian", calib_samples=64, measure=False)
    assert not [n for n in q.graph.node if n.op_type == "Clip"]
    assert rep["passes"]["quantize"]["activations_absorbed"] == {"Clip": 2}
    ops = ort_optimized_ops(q)
    assert ops["QLinearConv"] == 3 and ops["QuantizeLinear"] == 1, ops  # the depthwise conv too
    x = np.clip(rand((64, 3, 8, 8)), -3, 3)
    ref, out = run(m, x), run(q, x)
    assert (ref.argmax(1) == out.argmax(1)).mean() >= 0.9
    # the quantizer's range ends at or below 6: its saturation is the Clip's upper bound
    inits = {i.name: i for i in q.graph.initializer}
    from onnx import numpy_helper

    for n in q.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in ("b1", "bd"):
            scale = float(numpy_helper.to_array(inits[n.input[1]]))
            assert int(numpy_helper.to_array(inits[n.input[2]])) == 0 and 255 * scale <= 6.0 + 1e-5


def test_bn_moments_through_a_clip_match_monte_carlo():
    from dfc.prune.channels import ChannelAnalysis
    from dfc.pipeline import Context, PassManager
    from dfc.graph import ir
    from dfc.compensate.sink_moments import group_moments

    ctx = Context()
    g = ir.infer_shapes(ir.import_graph(PassManager(["cleanup", "fold-bn"]).run(relu6_cnn(), ctx)))
    groups = [grp for grp in ChannelAnalysis(g).groups if grp.sinks and grp.sinks[0][0].name == "project"]
    assert len(groups) == 8
    mean, second = group_moments(groups, ctx.bn_stats)
    mu, sd = ctx.bn_stats["bd"].output_mean_std()
    z = np.clip(mu[None] + sd[None] * np.random.default_rng(0).standard_normal((400_000, 8)), 0, 6)
    order = [grp.members["bd"][0] for grp in groups]
    np.testing.assert_allclose(mean, z.mean(0)[order], atol=5e-3)
    np.testing.assert_allclose(second, (z ** 2).mean(0)[order], atol=2e-2)


def test_pruning_a_constant_channel_behind_relu6_is_exact_with_mean_compensation():
    m = relu6_cnn(dead_beta=2.0)
    x = rand((16, 3, 8, 8))
    p, rep = optimize_with_report(m, prune=0.07, no_quant=True, measure=False, udfc_check=False, channel_multiple=1)
    layer = next(r for r in rep["passes"]["prune"]["layers"] if r["name"] == "conv1")
    assert (layer["channels_before"], layer["channels_after"]) == (8, 7)
    np.testing.assert_allclose(run(p, x), run(m, x), atol=1e-4)  # its constant went into the project conv's bias
    plain, _ = optimize_with_report(m, prune=0.07, no_quant=True, measure=False, compensate="none", criterion="udfc",
                                   channel_multiple=1)
    assert np.abs(run(plain, x) - run(m, x)).max() > 1e-2  # plain removal loses the constant


def test_eps_floor_bounds_the_kl_of_a_channel_constant_in_the_batch():
    from dfc.synth.inverter import kl_to_target

    y = torch.zeros(4, 1, 5, 5)  # the batch never moves this channel
    mean, std, mask = torch.zeros(1), torch.ones(1), torch.ones(1, dtype=torch.bool)
    assert float(kl_to_target(y, mean, std, mask)) > 1e6  # 1/(2·1e-8): the term that swamped J_KL on Lite0
    floored = float(kl_to_target(y, mean, std, mask, floor=torch.tensor([0.01])))
    assert floored == pytest.approx(0.5 * np.log(0.01) + 1 / (2 * 0.01) - 0.5, rel=1e-4)


def test_inverter_work_budget_shrinks_size_then_samples_for_costly_inputs():
    from dfc.synth.inverter import MAX_SAMPLES, MAX_STEPS, Inverter, InverterConfig
    from dfc.pipeline import Context, PassManager

    ctx = Context()
    folded = PassManager(["cleanup", "fold-bn"]).run(relu6_cnn(size=64), ctx)
    inv = Inverter(folded, ctx.bn_stats, None, InverterConfig())
    assert inv.synthesis_shape() == (3, 64, 64) and inv.plan() == (MAX_SAMPLES, MAX_STEPS, MAX_SAMPLES)  # cheap: as before
    inv.macs, inv.volume = 4e8, 1e7  # pretend the input is a costly one (EfficientNet-Lite0 at 224²: 385 M MACs)
    low = inv.synthesis_shape()
    assert low == (3, 36, 36)  # 64·√(1.3e8 / 4e8), the MACs per sample the first phase aims at
    samples, steps, batch = inv.plan()
    assert samples % 32 == 0 and samples < MAX_SAMPLES and 100 <= steps <= MAX_STEPS and batch == samples
    assert Inverter(folded, ctx.bn_stats, None, InverterConfig(samples=40, steps=7)).plan() == (40, 7, 40)
    inv.cfg = InverterConfig(samples=3, steps=2)
    trace: dict = {}
    x = inv.generate(progress=False, trace=trace)
    assert x.shape == (3, 3, 64, 64)  # synthesized at 36², handed over at the input size
    assert [p["shape"] for p in trace["phases"]] == [[3, 36, 36]]
    inv.cfg = InverterConfig(samples=3, steps=2, refine_steps=1)
    assert inv.generate(progress=False, trace=trace).shape == (3, 3, 64, 64)
    assert [p["shape"] for p in trace["phases"]] == [[3, 36, 36], [3, 64, 64]] and trace["phases"][1]["steps"] == 1
    inv.cfg = InverterConfig(samples=3, steps=12, refine_steps=None, refine_work=1.0)  # 36² upsampled to 64²
    a = 36 ** 2 / 64 ** 2
    assert inv.refine_steps(12) == round(12 * a * (1 - a)) == 3
    inv.generate(progress=False, trace=trace)
    assert [p["steps"] for p in trace["phases"]] == [12, 3]
    inv.cfg = InverterConfig(samples=3, steps=6, refine_steps=None, refine_work=0.0)
    assert inv.refine_steps(6) == 0


def test_samples_are_refined_at_full_size_below_8_bits_only():
    from dfc.api import REFINE_WORK_BELOW_8_BITS, refine_work
    from dfc.options.resolve import resolve

    assert refine_work(resolve({})) == 0.0  # W8A8: the upsampled samples calibrate as well as refined ones
    assert refine_work(resolve({"wbits": 4})) == REFINE_WORK_BELOW_8_BITS > 0
    assert refine_work(resolve({"abits": 4})) == REFINE_WORK_BELOW_8_BITS
    assert refine_work(resolve({"no_quant": True})) == 0.0


def test_notes_come_one_per_kind_with_counts():
    from dfc.compensate.compensation import skipped_notes

    lines = skipped_notes({"Clip node 'a' does not commute with rescaling": 3,
                           "Clip node 'b' does not commute with rescaling": 5,
                           "two channels of one layer feed the same group": 2}, "channel group(s)")
    assert lines[0] == "8 channel group(s) in 2 place(s) not compensated: Clip node does not commute with rescaling (e.g. 'a', 'b')"
    assert len(lines) == 2


def test_save_calib_is_refused_before_any_work(tmp_path):
    from dfc.cli import main

    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    import onnx

    onnx.save(relu6_cnn(), src)
    assert main(["optimize", str(src), "-o", str(out), "--calib", "gaussian", "--save-calib", str(tmp_path / "c.npz"), "-q"]) == 2
    assert not out.exists()


def test_depthwise_weights_keep_the_first_last_width():
    from dfc.quant.layers import weight_bit_plan
    from dfc.pipeline import Context, PassManager
    from dfc.graph import ir

    g = ir.import_graph(PassManager(["cleanup", "fold-bn"]).run(relu6_cnn(), Context()))
    assert weight_bit_plan(g, 4, 8) == {"conv1": 8, "dw": 8, "project": 4, "fc": 8}


def test_bias_correction_reads_input_means_from_bn_statistics_where_they_describe_the_tensor():
    from dfc.graph import ir
    from dfc.pipeline import Context, PassManager
    from dfc.quant.bias_correction import bn_input_means

    ctx = Context()
    tensors = ir.import_graph(PassManager(["cleanup", "fold-bn"]).run(relu6_cnn(), ctx)).tensors()
    mu, sd = ctx.bn_stats["bd"].output_mean_std()
    z = np.clip(mu[None] + sd[None] * np.random.default_rng(0).standard_normal((400_000, 8)), 0, 6)
    sampled = {"rd": (np.zeros(8), np.full(8, 0.01)), "x": (np.ones(3), np.full(3, 1.5))}
    means, used = bn_input_means(sampled, tensors, ctx.bn_stats)
    assert used == ["rd"]  # the network input has no BN behind it: its samples' means stay
    np.testing.assert_allclose(means["rd"][0], z.mean(0), atol=5e-3)  # E[clip(z, 0, 6)], z ~ N(β, γ²)
    np.testing.assert_allclose(means["rd"][1] - means["rd"][0], 0.01)  # the samples keep the quantization's offset
    np.testing.assert_array_equal(means["x"][1], sampled["x"][1])


def test_quantization_takes_bn_means_only_where_the_graph_is_the_one_the_statistics_describe():
    m = relu6_cnn()
    _, rep = optimize_with_report(m, wbits=4, calib="gaussian", calib_samples=32, measure=False)
    assert rep["passes"]["quantize"]["bias_means_from_bn"] >= 2  # the inputs of the depthwise and project convs
    from dfc.report import _bias_lines
    assert _bias_lines(rep["passes"])[0].startswith("bias correction: input means of")  # the summary says so
    _, rep = optimize_with_report(m, wbits=4, calib="gaussian", calib_samples=32, measure=False, prune=0.25,
                                  channel_multiple=1)
    assert rep["passes"]["quantize"]["bias_means_from_bn"] == 0  # pruning moved the statistics downstream
