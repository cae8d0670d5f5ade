"""Fine-tuning (dfc.finetune.student, dfc.finetune.train, the `finetune` pass): the student is the QDQ graph exactly, the way back
is lossless, training lowers the loss, and a seed fixes the bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DEMO, conv_bn_relu_cnn, rand, run

import dfc.api as api
from dfc.errors import DfcError
from dfc.finetune.train import FinetuneConfig, blocks_of, finetune
from dfc.graph.modelio import load_model
from dfc.pipeline import Context, PassManager
from dfc.finetune.student import Student, float_weights_of

# without udfc-requant and with nearest rounding the float graph before `quantize` is the teacher, whose weights
# the codes are rounded from
RESIDUAL_QDQ_OPTS = dict(wbits=4, abits=4, calib="gaussian", measure=False, udfc_requant=False,
                         weight_rounding="nearest")


@pytest.fixture(scope="module")
def residual():
    """The residual toy CNN, its BN-folded float graph (teacher) and a W4A4 QDQ graph of it."""
    model = conv_bn_relu_cnn()
    teacher = PassManager(["cleanup", "fold-bn"]).run(model, Context())
    qdq = api.optimize(model, **RESIDUAL_QDQ_OPTS)
    return model, teacher, qdq


@pytest.fixture(scope="module")
def demo_w2a4():
    """The demo digits CNN at W2A4 (first/last 4): far enough from its float teacher that training must show."""
    model = load_model(DEMO)
    teacher = PassManager(["cleanup", "fold-bn"]).run(model, Context())
    return model, teacher, api.optimize(model, wbits=2, abits=4, first_last_bits=4, calib="gaussian", measure=False,
                                        udfc_requant=False, weight_rounding="nearest")


def _student_out(student, x):
    with torch.no_grad():
        return student(torch.from_numpy(x))[0][0].numpy()


@pytest.mark.parametrize("rounding", ["ste", "adaround"])
def test_student_reproduces_the_qdq_graph_in_ort(residual, rounding):
    _, teacher, qdq = residual
    x = rand((16, 3, 8, 8), seed=3)
    student = Student(qdq, float_weights_of(teacher), rounding=rounding)
    assert len(student.tensors) == 6  # 3 layers: weight + bias each
    assert sum(getattr(m, "learn_rounding", False) for m in student.tensors.values()) == (3 if rounding == "adaround" else 0)
    assert np.abs(_student_out(student, x) - run(qdq, x)).max() <= 1e-4


def test_student_reproduces_the_w8a8_demo_model(digits_test):
    qdq = api.optimize(load_model(DEMO), calib="gaussian", measure=False)
    x = digits_test[0][:64]
    assert np.abs(_student_out(Student(qdq), x) - run(qdq, x)).max() <= 1e-4


def test_zero_steps_export_is_byte_identical(residual):
    _, teacher, qdq = residual
    x = rand((32, 3, 8, 8), seed=4)
    for method in ("kd", "blocks"):
        out, info = finetune(qdq, teacher, x, FinetuneConfig(method=method, steps=0), float_model=teacher)
        assert out.SerializeToString() == qdq.SerializeToString() and info["steps"] == 0


def test_blocks_follow_the_residual_structure(residual):
    _, teacher, qdq = residual
    blocks = blocks_of(Student(qdq), teacher)
    # conv1 -> r1 (a cut: the residual block reads only r1); conv2 + Add (conv2's output alone is no cut, the skip
    # keeps r1 alive); fc. Each block compares its quantized output with the teacher's ReLU output (fused in QDQ).
    assert [b.layers for b in blocks] == [["conv1"], ["conv2"], ["fc"]]
    assert [b.target for b in blocks] == ["r1", "r2", "y"] and blocks[0].input == "x" and blocks[1].input == blocks[0].output


@pytest.mark.parametrize("method", ["kd", "blocks"])
def test_finetuning_lowers_the_loss_and_stays_a_fused_qdq_graph(demo_w2a4, method):
    _, teacher, qdq = demo_w2a4
    x = rand((128, 1, 8, 8), seed=5)
    cfg = FinetuneConfig(method=method, steps=60, batch=16, lr=1e-3 if method == "kd" else None)
    out, info = finetune(qdq, teacher, x, cfg, float_model=teacher)
    assert info["kl_after"] < 0.5 * info["kl_before"]
    assert isinstance(info["blocks"], int) and len(info.get("block_trace", [None] * info["blocks"])) == info["blocks"]
    ops = sorted(n.op_type for n in out.graph.node)
    assert ops == sorted(n.op_type for n in qdq.graph.node)
    changed = [a.name for a, b in zip(out.graph.initializer, qdq.graph.initializer) if a.SerializeToString() != b.SerializeToString()]
    assert changed and all(a.data_type == b.data_type for a, b in zip(out.graph.initializer, qdq.graph.initializer))
    assert np.abs(run(out, x) - _student_out(Student(out), x)).max() <= 1e-4  # exported codes = the trained student


def test_same_seed_same_bytes(demo_w2a4):
    model = demo_w2a4[0]
    opts = dict(wbits=2, abits=4, first_last_bits=4, calib="gaussian", measure=False, finetune="kd", finetune_steps=20,
                finetune_batch=8, finetune_lr=1e-3)
    a, b = api.optimize(model, **opts), api.optimize(model, **opts)
    assert a.SerializeToString() == b.SerializeToString()
    c = api.optimize(model, **{**opts, "seed": 1})
    assert c.SerializeToString() != a.SerializeToString()


def test_trained_codes_stay_in_their_bit_range(demo_w2a4):
    """2-bit weights use the four codes {-2, -1, 0, 1} (first/last layers at 4 bits: [-8, 7]) before and after
    training: the student reads each tensor's width from its codes and never leaves it."""
    from onnx import numpy_helper

    from dfc.quant.quant_math import code_range_of

    _, teacher, qdq = demo_w2a4

    def weight_ranges(m):
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        return [(int(inits[n.input[0]].min()), int(inits[n.input[0]].max()), code_range_of(inits[n.input[0]]))
                for n in m.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
                and inits[n.input[0]].dtype == np.int8]

    before = weight_ranges(qdq)
    assert {r for *_, r in before} == {(-2, 1), (-8, 7)} and any(lo == -2 for lo, _, _ in before)
    out, _ = finetune(qdq, teacher, rand((64, 1, 8, 8), seed=5), FinetuneConfig(method="kd", steps=30, batch=16, lr=3e-2,
                                                                                     step_lr=3.0))
    after = weight_ranges(out)
    assert [r for *_, r in after] == [r for *_, r in before]
    assert all(r[0] <= lo and hi <= r[1] for lo, hi, r in after)


@pytest.mark.parametrize("method", ["kd", "blocks"])
def test_float_student_after_pruning(demo_w2a4, digits_test, method):
    """--no-quant: the pruned float graph is the student, the unpruned one the teacher (here on unlabelled digits)."""
    model = demo_w2a4[0]
    opts = dict(prune=0.5, no_quant=True, calib_data=digits_test[0][:256], measure=False, finetune=method,
                finetune_steps=60)
    out, rep = api.optimize_with_report(model, **opts)
    ft = rep["passes"]["finetune"]
    assert rep["after"]["weight_params"] < rep["before"]["weight_params"]
    assert ft["kl_after"] < ft["kl_before"] and not any(n.op_type == "QuantizeLinear" for n in out.graph.node)


@pytest.mark.parametrize("bad, msg", [
    (dict(finetune="sgd"), "--finetune must be one of"),
    (dict(finetune="kd", finetune_steps=-1), "--finetune-steps"),
    (dict(finetune="kd", finetune_batch=0), "--finetune-batch"),
    (dict(finetune="kd", finetune_lr=0.0), "--finetune-lr"),
    (dict(finetune="kd", finetune_step_lr=-0.01), "--finetune-step-lr must be a positive number"),
    (dict(finetune_step_lr=0.01), "--finetune-step-lr is a fine-tuning option: give --finetune"),
    (dict(finetune="blocks", finetune_step_lr=0.01), "--finetune-step-lr is a kd option"),
    (dict(finetune="kd", finetune_disagreement=1.0), "--finetune-disagreement must be a ratio"),
    (dict(finetune="blocks", finetune_disagreement=0.5), "--finetune-disagreement is a kd option"),
    (dict(finetune="kd", finetune_time=-5), "--finetune-time must be a positive number"),
    (dict(finetune_steps=10), "--finetune-steps is a fine-tuning option: give --finetune"),
])
def test_bad_options_are_named(residual, bad, msg):
    with pytest.raises(DfcError, match=msg):
        api.optimize(residual[0], **bad)


def test_learned_activation_scales_are_written_back_with_their_biases(demo_w2a4):
    """LSQ option: activation scales move, every constant holding them follows (Q/DQ pairs, the narrow-width Clip,
    int32 bias scales s_x·s_w), and ORT runs the exported graph as the student computes it."""
    from onnx import numpy_helper

    _, teacher, qdq = demo_w2a4
    x = rand((128, 1, 8, 8), seed=6)
    out, info = finetune(qdq, teacher, x, FinetuneConfig(method="kd", steps=40, batch=16, lr=1e-3, act_scales=True,
                                                         scale_lr=1e-2), float_model=teacher)
    assert info["learned_act_scales"] > 0
    before = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    moved = [k for k in before if k.endswith("_scale") and before[k].size == 1 and not np.array_equal(before[k], after[k])]
    assert moved
    for n in out.graph.node:  # every bias DequantizeLinear keeps scale = s_x · s_w
        if n.op_type == "Conv" and len(n.input) > 2:
            b_dq = next(m for m in out.graph.node if m.output[0] == n.input[2])
            w_dq = next(m for m in out.graph.node if m.output[0] == n.input[1])
            x_dq = next(m for m in out.graph.node if m.output[0] == n.input[0])
            assert np.allclose(after[b_dq.input[1]], after[x_dq.input[1]] * after[w_dq.input[1]], rtol=1e-6)
    assert np.abs(run(out, x) - _student_out(Student(out), x)).max() <= 1e-4


def test_teacher_targets_block_by_block_equal_full_forward_passes(residual):
    from dfc.finetune.block_reconstruction import TeacherTargets
    from dfc.synth.torch_exec import TorchGraph

    _, teacher, qdq = residual
    blocks = blocks_of(Student(qdq), teacher)
    x = torch.from_numpy(rand((8, 3, 8, 8), seed=7))
    targets = TeacherTargets(TorchGraph(teacher), x)
    full = TorchGraph(teacher, watch=[b.target for b in blocks[:-1]])
    with torch.no_grad():
        (y,), watched = full(x)
    for b in blocks:
        expected = y if b is blocks[-1] else watched[b.target]
        assert torch.allclose(targets.at(b.target), expected, atol=1e-5)


def test_block_reconstruction_tops_few_samples_up_with_augmented_copies(residual):
    """Fewer samples than BLOCK_INPUTS are reconstructed on with augmented copies (kd augments each batch itself);
    the report and the summary say how many."""
    from dfc.finetune.train import BLOCK_INPUTS, block_copies
    from dfc.report import summary_table

    assert block_copies(FinetuneConfig(method="blocks"), BLOCK_INPUTS // 4) == 4
    assert block_copies(FinetuneConfig(method="blocks"), BLOCK_INPUTS // 4 + 1) == 4
    assert block_copies(FinetuneConfig(method="blocks"), BLOCK_INPUTS) == 1
    assert block_copies(FinetuneConfig(method="blocks"), BLOCK_INPUTS - BLOCK_INPUTS // 8) == 1  # near enough
    assert block_copies(FinetuneConfig(method="kd"), 8) == 1
    assert block_copies(FinetuneConfig(method="blocks", copies=2), 8) == 2
    with pytest.raises(DfcError, match="copies"):
        block_copies(FinetuneConfig(method="blocks", copies=0), 8)
    opts = dict(RESIDUAL_QDQ_OPTS, finetune="blocks", finetune_steps=3, calib_samples=BLOCK_INPUTS // 2)
    _, report = api.optimize_with_report(residual[0], **opts)
    assert report["passes"]["finetune"]["copies"] == 2
    assert f"{BLOCK_INPUTS // 2} gaussian samples and 1 augmented copy of each" in summary_table(report)


def test_finetune_time_sets_the_default_steps(residual):
    """--finetune-time is the budget the default steps fill at the predicted step time (the reference model's, times
    the speed each run measures on this machine)."""
    from dfc.finetune.train import MAX_STEPS, MIN_STEPS

    opts = dict(RESIDUAL_QDQ_OPTS, finetune="kd")
    floor = api.optimize_with_report(residual[0], **opts, finetune_time=1e-3)[1]["passes"]["finetune"]
    assert floor["planned_steps"] == floor["steps"] == MIN_STEPS["kd"]  # re-planning never goes below the floor
    step = floor["predicted_seconds"] / floor["steps"] / floor["speed"]  # seconds a step at the reference speed
    budget = 150 * step * floor["speed"]
    ft = api.optimize_with_report(residual[0], **opts, finetune_time=budget)[1]["passes"]["finetune"]
    expected = int(np.clip(budget / (step * ft["speed"]), MIN_STEPS["kd"], MAX_STEPS["kd"]))
    assert abs(ft["planned_steps"] - expected) <= 1  # the plan; the steps run follow the measured step time
    assert ft["predicted_seconds"] <= budget * 1.01 or ft["planned_steps"] == MIN_STEPS["kd"]


@pytest.mark.parametrize("knob", ["finetune_lr", "finetune_step_lr"])
def test_training_that_raises_the_kl_is_not_kept(residual, knob):
    """A student that ends farther from the teacher on the samples than it started is not written: the QDQ graph
    before fine-tuning is (same weights), and the report says so."""
    plain = api.optimize(residual[0], **RESIDUAL_QDQ_OPTS)
    out, rep = api.optimize_with_report(residual[0], **RESIDUAL_QDQ_OPTS, finetune="kd", finetune_steps=20,
                                        **{knob: 50.0})
    ft = rep["passes"]["finetune"]
    assert ft["kl_after"] > ft["kl_before"] and ft["kept"] == "input"
    assert {i.name: i.raw_data for i in out.graph.initializer} == {i.name: i.raw_data for i in plain.graph.initializer}
    assert any("the model before fine-tuning is kept" in n for n in rep["notes"])


def test_kd_moves_quantized_weights_in_quantization_steps():
    """Adam's first step moves every element by ~lr; counted in quantization steps, a channel moves by c·s_channel
    (4-bit and 8-bit channels alike), and the optimizer's own state is untouched."""
    from dfc.finetune.train import adam_step_in_quant_steps
    from dfc.finetune.student import QuantizedTensor

    scale = np.array([0.5, 0.01, 0.002], np.float32)  # three channels, scales 250x apart
    codes = np.array([[3, -2], [100, -7], [-120, 5]], np.int8)
    q = QuantizedTensor(codes, scale, axis=0)
    w0 = q.w.detach().clone()
    opt = torch.optim.Adam([q.w], lr=0.01)
    (q() * torch.tensor([[1.0, -2.0]])).sum().backward()
    adam_step_in_quant_steps(opt, [q])
    moved = (q.w.detach() - w0).abs() / torch.from_numpy(scale)[:, None]
    assert torch.allclose(moved, torch.full_like(moved, 0.01), rtol=1e-3)
    assert q.export_codes().tolist() == codes.tolist()  # a hundredth of a step changes no code


def test_pruned_kd_student_trains_in_float_before_quantization(demo_w2a4, digits_test):
    """kd of a pruned model quantized to 8 bits trains the pruned float graph and quantizes the result (the pass after
    `quantize` has nothing left to do and leaves the time and numbers as they were); without pruning, or below 8
    bits, the QDQ student trains after quantization."""
    from dfc.report import summary_table

    opts = dict(calib_data=digits_test[0][:64], measure=False, finetune="kd", finetune_steps=60)
    out, pruned = api.optimize_with_report(demo_w2a4[0], prune=0.5, **opts)
    ft = pruned["passes"]["finetune"]
    assert ft["stage"] == "pruned-float" and ft["kl_after"] < ft["kl_before"] and ft["seconds"] > 0.0
    assert ft["step_lr"] is None and ft["learned_act_scales"] == 0
    assert list(pruned["passes"]).index("finetune") < list(pruned["passes"]).index("quantize")
    assert "of the pruned float graph, before quantization" in summary_table(pruned)
    assert any(n.op_type == "QuantizeLinear" for n in out.graph.node)
    for extra in ({}, {"prune": 0.5, "wbits": 4, "abits": 4, "first_last_bits": 4}):  # unpruned; pruned below 8 bits
        _, after = api.optimize_with_report(demo_w2a4[0], **extra, **opts)
        assert after["passes"]["finetune"]["stage"] is None
        assert list(after["passes"]).index("finetune") > list(after["passes"]).index("quantize")


def test_kd_steps_in_quantization_steps_only_where_rounding_is_the_gap(demo_w2a4, digits_test):
    """A quantized student of the teacher's architecture moves its codes' latents in quantization steps; a pruned one
    (fewer weights: further from the teacher than rounding) moves every parameter at the absolute lr."""
    from dfc.finetune.train import DEFAULT_STEP_LR
    from dfc.report import summary_table

    opts = dict(calib_data=digits_test[0][:64], measure=False, finetune="kd", finetune_steps=2)
    _, plain = api.optimize_with_report(demo_w2a4[0], **opts)
    _, pruned = api.optimize_with_report(demo_w2a4[0], prune=0.5, finetune_step_lr=0.05, **opts)
    assert plain["passes"]["finetune"]["step_lr"] == DEFAULT_STEP_LR and pruned["passes"]["finetune"]["step_lr"] is None
    assert any("trained every parameter at --finetune-lr" in n for n in pruned["notes"])
    assert f"lr {DEFAULT_STEP_LR:g} quantization steps" in summary_table(plain)


def test_training_at_a_smaller_size_then_at_the_input_size(residual):
    """--finetune-size trains a model that runs at any size (convs + global pooling) on smaller samples; the KL the
    keep-or-not check compares is measured at the input size; --finetune-full-steps adds a phase at the input size."""
    _, rep = api.optimize_with_report(residual[0], **RESIDUAL_QDQ_OPTS, finetune="kd", finetune_steps=10,
                                      finetune_size=4, finetune_full_steps=5)
    ft = rep["passes"]["finetune"]
    assert [p["shape"] for p in ft["phases"]] == [[3, 4, 4], [3, 8, 8]]
    assert [p["steps"] for p in ft["phases"]] == [10, 5] and ft["kl_after"] == ft["phases"][-1]["kl_after"]
    _, rep = api.optimize_with_report(residual[0], **RESIDUAL_QDQ_OPTS, finetune="kd", finetune_steps=10)
    assert [p["shape"] for p in rep["passes"]["finetune"]["phases"]] == [[3, 8, 8]]  # small input: its own size


def test_a_model_that_runs_at_one_size_trains_at_it():
    """A dense layer reading the flattened 8×8 map (no global pooling) runs at one size only: asked for a smaller
    one, fine-tuning trains at the input size."""
    from onnx import helper

    from conftest import make_model

    r = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["a"], name="relu"),
             helper.make_node("Flatten", ["a"], ["f"], axis=1, name="flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1, name="fc")]
    inits = {"w": r.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "fc_w": r.normal(0, 0.1, (5, 256)).astype(np.float32),
             "fc_b": np.zeros(5, np.float32)}
    model = make_model(nodes, [("x", [1, 3, 8, 8])], [("y", [1, 5])], inits)
    qdq = api.optimize(model, calib="gaussian", measure=False, udfc_requant=False)
    _, info = finetune(qdq, model, rand((16, 3, 8, 8)), FinetuneConfig(method="kd", steps=3, size=4))
    assert info["phases"][0]["shape"] == [3, 8, 8]


def test_disagreement_pool_moves_samples_up_the_loss_within_their_range():
    from dfc.finetune.hard_samples import DisagreementPool

    x = torch.from_numpy(rand((8, 2, 4, 4), seed=3))
    pool = DisagreementPool(x, share=0.5, step=0.1, gen=torch.Generator().manual_seed(0), updates=2)
    low, high = x.amin(dim=(0, 2, 3), keepdim=True), x.amax(dim=(0, 2, 3), keepdim=True)
    assert pool.split(12) == (12, 0)  # empty: the whole batch is fresh

    def step(xb, hard):
        xb = xb.clone().requires_grad_(True)
        xb.pow(2).sum().backward()  # a loss that grows away from 0
        pool.push(xb, xb.grad, hard)

    step(x[:6], 0)  # 0.5 * 6 / 2 updates: 2 enter, moved outward within the range
    assert pool.filled == 2 and torch.all(pool.buffer[:2].abs() >= x[:2].abs() - 1e-6)
    assert not torch.equal(pool.buffer[:2], x[:2])
    assert torch.all(pool.buffer[:2] >= low) and torch.all(pool.buffer[:2] <= high)
    assert pool.split(12) == (10, 2)  # half the batch, at most what the pool holds
    before = pool.buffer[:2].clone()
    drawn = pool.draw(2)
    step(torch.cat([x[2:5], drawn]), 2)  # the drawn go back moved again; 2 more enter
    assert pool.filled == 4 and torch.all(pool.buffer[:2].abs() >= before.abs() - 1e-6)
    for _ in range(3):
        step(torch.cat([x[:6], pool.draw(3)]), 3)
    assert pool.filled == 8 and 0 <= pool.next < 8  # full: new inputs replace the oldest


def test_kd_with_a_disagreement_pool_trains_and_is_seeded(demo_w2a4):
    _, teacher, qdq = demo_w2a4
    x = rand((64, 1, 8, 8), seed=5)
    cfg = FinetuneConfig(method="kd", steps=40, batch=16, lr=1e-3, hard_share=0.5)
    out, info = finetune(qdq, teacher, x, cfg, float_model=teacher)
    again, _ = finetune(qdq, teacher, x, cfg, float_model=teacher)
    assert info["kl_after"] < info["kl_before"]
    assert out.SerializeToString() == again.SerializeToString()
    plain, _ = finetune(qdq, teacher, x, FinetuneConfig(method="kd", steps=40, batch=16, lr=1e-3), float_model=teacher)
    assert plain.SerializeToString() != out.SerializeToString()


def test_output_loss_is_kl_for_class_logits_and_relative_l2_elsewhere():
    from dfc.finetune.train import _kl, output_loss

    t, s = torch.randn(4, 10), torch.randn(4, 10)
    assert float(output_loss([t], [s])) == pytest.approx(float(_kl(t, s)))
    boxes_t, boxes_s = torch.randn(4, 50, 4), torch.randn(4, 50, 4)
    rel = float((boxes_s - boxes_t).pow(2).sum() / boxes_t.pow(2).sum())
    assert float(output_loss([t, boxes_t], [s, boxes_s])) == pytest.approx(float(_kl(t, s)) + rel, rel=1e-5)
    assert float(output_loss([boxes_t], [boxes_t])) == 0.0


def test_kd_trains_a_model_with_a_second_output():
    """A detector-like graph (two outputs, one of them not class logits) is distilled on all its outputs; it used to
    stop with an internal error (one output assumed)."""
    from robustness_cases import cnn_nodes, small_cnn

    model = small_cnn(nodes=cnn_nodes(residual=False), outputs=[("r1", ["N", 8, 8, 8])])
    _, rep = api.optimize_with_report(model, calib="gaussian", measure=False, finetune="kd", finetune_steps=5)
    ft = rep["passes"]["finetune"]
    assert ft["steps"] == 5 and ft["loss"] == "KL + rel. L2²" and np.isfinite(ft["kl_after"])
    assert ft["kl_before"] > 0  # the inner output's quantization error counts, not only the logits'


def test_kd_compares_softmax_outputs_as_the_class_distributions_they_are():
    """A Softmax output (PP-OCR's classifier) is compared as p itself, not as softmax(p) (which flattens it)."""
    from dfc.finetune.train import _kl, output_loss

    logit_t, logit_s = torch.randn(4, 2) * 3, torch.randn(4, 2) * 3
    p_t, p_s = logit_t.softmax(1), logit_s.softmax(1)
    assert float(output_loss([p_t], [p_s], [True])) == pytest.approx(float(_kl(logit_t, logit_s)), rel=1e-4)
    assert float(output_loss([p_t], [p_s], [False])) < float(output_loss([p_t], [p_s], [True]))
