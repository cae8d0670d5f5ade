import collections

import numpy as np
import onnx
import pytest
from onnx import helper

from conftest import DEMO, conv_bn_relu_cnn, make_model, rand, run, shared_file
from dfc.errors import DfcError
from dfc.graph.modelio import check_model, load_model
from dfc.pipeline import Context, PassManager, context_from_model, get_pass
from dfc.measure.runtime import ort_optimized_ops


def _quantize(m, ctx=None, **opts):
    ctx = ctx or context_from_model(m)
    return PassManager(["cleanup", "fold-bn", get_pass("quantize", **opts)], debug=True).run(m, ctx), ctx


def test_w8a8_graph_form_is_fused_by_ort(tmp_path):
    q, ctx = _quantize(conv_bn_relu_cnn())
    ops = collections.Counter(n.op_type for n in q.graph.node)
    assert ops["Relu"] == 0  # both Relus absorbed into output quantizers
    assert ctx.results["quantize"]["activations_absorbed"] == {"Relu": 2}
    fused = ort_optimized_ops(q)
    assert fused["QLinearConv"] == 2 and fused["QLinearAdd"] == 1 and fused["QGemm"] == 1
    assert fused["Conv"] == 0


def test_weights_are_int8_per_channel_and_bias_int32():
    q, _ = _quantize(conv_bn_relu_cnn())
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
    dq_weight_inputs = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None]
    kinds = collections.Counter(inits[n.input[0]].dtype.name for n in dq_weight_inputs)
    assert kinds["int8"] == 3 and kinds["int32"] == 3
    for n in dq_weight_inputs:
        codes = inits[n.input[0]]
        if codes.dtype == np.int8:
            assert codes.min() >= -127 and inits[n.input[1]].size == codes.shape[0]  # one scale per output channel


def test_demo_model_w8a8_keeps_accuracy(digits_test):
    x, y = digits_test
    m = load_model(DEMO)
    q, ctx = _quantize(m)
    fp = (run(m, x).argmax(1) == y).mean()
    qa = (run(q, x).argmax(1) == y).mean()
    assert fp > 0.95
    assert qa >= fp - 0.01, (fp, qa)
    assert ctx.results["quantize"]["simulated_in_8bit"] is False


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_every_bit_width_gives_a_valid_model_with_error_shrinking_in_bits(bits):
    m = conv_bn_relu_cnn()
    x = rand((32, 3, 8, 8), seed=3)
    ref = run(m, x)
    # nearest rounding: the width alone decides (GPTQ's rounding can beat 8-bit nearest at 6 bits on this small net)
    q, ctx = _quantize(m, wbits=bits, abits=bits, first_last_bits=8, weight_rounding="nearest")
    check_model(q)
    err = np.abs(run(q, x) - ref).mean()
    q8, _ = _quantize(m)
    err8 = np.abs(run(q8, x) - ref).mean()
    assert err >= err8 * 0.999
    if bits < 8:
        assert ctx.results["quantize"]["simulated_in_8bit"] is True
        assert any("accuracy simulation" in n for n in ctx.notes)
    bits_of = {l["node"]: l["wbits"] for l in ctx.results["quantize"]["layers"]}
    assert bits_of["conv1"] == 8 and bits_of["fc"] == 8 and bits_of["conv2"] == bits


def test_low_bit_activations_are_clipped_to_their_range():
    m = conv_bn_relu_cnn()
    q, _ = _quantize(m, wbits=4, abits=3, first_last_bits=8)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
    prods = {o: n for n in q.graph.node for o in n.output}
    dqs = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in inits]
    clipped = [n for n in dqs if prods[n.input[0]].op_type == "Clip"]
    assert clipped, "3-bit activations need their codes clipped between QuantizeLinear and DequantizeLinear"
    for n in clipped:
        clip = prods[n.input[0]]
        assert prods[clip.input[0]].op_type == "QuantizeLinear"
        assert (int(inits[clip.input[1]]), int(inits[clip.input[2]])) == (0, 7)
    # the narrow range costs no fusion: ORT still runs the middle conv as an integer kernel
    ops = ort_optimized_ops(q)
    assert ops["QLinearConv"] >= 1 and ops["Conv"] == 0 and ops["FusedConv"] == 0


def test_calibration_modes_and_user_data():
    m = conv_bn_relu_cnn()
    x = rand((8, 3, 8, 8))
    for calibrator in ("minmax", "percentile", "mse"):
        q, ctx = _quantize(m, calibrator=calibrator, calib_samples=16)
        assert ctx.results["quantize"]["calibrator"] == calibrator
        check_model(q)
    _, ctx = _quantize(m, calib_data=x)
    assert ctx.results["quantize"]["calibration"] == "user data" and ctx.results["quantize"]["calibration_samples"] == 8
    with pytest.raises(DfcError, match="sample shape"):
        _quantize(m, calib_data=rand((4, 3, 9, 9)))


def test_already_quantized_model_is_refused():
    q, _ = _quantize(conv_bn_relu_cnn())
    with pytest.raises(DfcError, match="already quantized"):
        _quantize(q, ctx=Context())


def test_same_seed_same_bytes_different_seed_different_calibration():
    m = conv_bn_relu_cnn()
    a, _ = _quantize(m, ctx=Context(seed=1))
    b, _ = _quantize(m, ctx=Context(seed=1))
    c, _ = _quantize(m, ctx=Context(seed=2))
    assert a.SerializeToString() == b.SerializeToString()
    assert a.SerializeToString() != c.SerializeToString()


def _grouped_conv_gemm(k: int, seed: int = 0) -> onnx.ModelProto:
    """x[N,4,6,6] -> grouped Conv kxk (2 groups, no padding, no bias) -> Flatten -> Gemm(3): both layers'
    outputs are graph outputs, so their means can be compared."""
    from conftest import make_model

    r = np.random.default_rng(seed)
    side = 7 - k
    inits = {"w": r.normal(0, 0.4, (6, 2, k, k)).astype(np.float32),
             "fw": r.normal(0, 0.3, (3, 6 * side * side)).astype(np.float32),
             "fb": r.normal(0, 0.1, 3).astype(np.float32)}
    nodes = [onnx.helper.make_node("Conv", ["x", "w"], ["c"], group=2, name="conv"),
             onnx.helper.make_node("Flatten", ["c"], ["f"], axis=1, name="flat"),
             onnx.helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1, name="fc")]
    return make_model(nodes, [("x", ["N", 4, 6, 6])], [("y", ["N", 3]), ("c", ["N", 6, side, side])], inits)


@pytest.mark.parametrize("bits,k", [(3, 1), (8, 1), (4, 3)])
def test_bias_correction_restores_each_layers_mean_output(bits, k):
    """Bias correction (default) moves each layer's mean output per channel back to float's on the calibration
    samples. For a 1x1 Conv on the graph input (grouped, no bias of its own: it gets one) that is exact up to half
    the int32 bias step s_x·s_w; a 3x3 kernel without padding weighs border pixels less than the channel mean the
    correction uses, which leaves sampling noise. Without it the shift of the rounding stays."""
    m = _grouped_conv_gemm(k)
    x = rand((256, 4, 6, 6), seed=1) + 0.5  # a non-zero input mean: weight rounding shifts the output mean
    ref_y, ref_c = run_all(m, x)
    shift, residual = {}, {}
    for bc in (True, False):
        q, ctx = _quantize(m, wbits=bits, abits=bits, first_last_bits=bits, calib_data=x, bias_correction=bc,
                           weight_rounding="nearest")  # GPTQ's H holds E[x]: it cancels part of the shift itself
        y, c = run_all(q, x)
        residual[bc] = np.abs(c.mean((0, 2, 3)) - ref_c.mean((0, 2, 3)))
        shift[bc] = (residual[bc].mean(), np.abs(y.mean(0) - ref_y.mean(0)).mean())
        assert ctx.results["quantize"]["bias_correction"] is bc
        assert all((r["bias_shift"] is not None) is bc for r in ctx.results["quantize"]["layers"])
        if bc:
            inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
            step = inits["conv_b_scale"]
    if k == 1:
        assert np.all(residual[True] <= 0.5 * step + 1e-5), (residual, step)
        assert residual[True].sum() <= residual[False].sum(), residual  # equal where the shift is below the step
    else:
        assert shift[True][0] < 0.25 * shift[False][0], shift
    assert shift[True][1] < 0.5 * shift[False][1], shift


def run_all(model, x):
    from dfc.measure.runtime import make_session

    s = make_session(model)
    return s.run(None, {s.get_inputs()[0].name: x})


# what may be left after ORT's optimizer on a W8A8 dfc model: the fused kernels, one QuantizeLinear at the input, at most
# one DequantizeLinear at the output, and shape ops that run on the uint8 tensor between two fused kernels (a float op
# there would need a DequantizeLinear/QuantizeLinear pair of its own)
FUSED_FORM = {"QLinearConv", "QLinearAdd", "QGemm", "QLinearGlobalAveragePool", "QuantizeLinear", "DequantizeLinear",
              "Reshape", "Flatten", "Slice", "Pad"}


@pytest.mark.parametrize("name", ["resnet20_cifar10.onnx", "resnet56_cifar10.onnx", "efficientnet_lite0_imagenet.onnx"])
def test_real_models_run_fully_fused_in_ort(name):
    from dfc.api import optimize

    m = load_model(shared_file(f"models/{name}"))
    q = optimize(m, calib="gaussian", calib_samples=8, udfc_requant=False)  # the graph form does not depend on them
    ops = ort_optimized_ops(q)
    assert set(ops) <= FUSED_FORM, ops
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] <= 1, ops


def test_shortcut_pad_runs_on_the_quantized_tensor_bit_exactly(monkeypatch):
    # the option-A shortcut (Slice + channel Pad) between two quantized tensors with the same parameters
    from dfc.api import optimize, optimize_with_report

    m = load_model(shared_file("models/resnet20_cifar10.onnx"))
    ctx_opts = dict(calib="gaussian", calib_samples=8, udfc_requant=False)
    q, rep = optimize_with_report(m, measure=False, **ctx_opts)
    assert rep["passes"]["quantize"]["integer_pads"] == 2
    pads = [n for n in q.graph.node if n.op_type == "Pad"]
    assert len(pads) == 2 and all(n.input[0] != "" for n in pads)
    # the same graph with the Pads in float between DequantizeLinear/QuantizeLinear: same outputs, bit for bit
    monkeypatch.setattr("dfc.passes.quantize.integer_pads", lambda graph: 0)
    ref = optimize(m, **ctx_opts)
    x = rand((4, 3, 32, 32))
    np.testing.assert_array_equal(run(q, x), run(ref, x))


@pytest.mark.parametrize("case", ["per-channel", "scalar", "graph-output"])
def test_only_a_per_channel_constant_add_read_quantized_becomes_a_qlinear_add(case):
    """conv -> Relu -> Add(constant) -> Relu -> conv: a per-channel constant is quantized with its activation (QLinearAdd,
    codes expanded to the activation's shape); a scalar (the x + 3 of a hard-swish), or an Add whose result leaves the
    graph in float, keeps its float constant."""
    r = np.random.default_rng(0)
    c = {"scalar": np.array(0.5), "per-channel": r.normal(0, 1, (1, 4, 1, 1)), "graph-output": r.normal(0, 1, (1, 4, 1, 1))}[case]
    # the Relu keeps the Add off the Conv (cleanup folds a Conv's own constant Add into its bias)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["y0"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["y0"], ["y"]),
             helper.make_node("Add", ["y", "c"], ["s"])]
    if case == "graph-output":
        outputs = [("s", ["N", 4, 6, 6])]
    else:
        nodes += [helper.make_node("Relu", ["s"], ["a"]), helper.make_node("Conv", ["a", "w2"], ["z"])]
        outputs = [("z", ["N", 2, 4, 4])]
    inits = {"w1": r.normal(0, 0.3, (4, 3, 3, 3)), "w2": r.normal(0, 0.3, (2, 4, 3, 3)), "c": c}
    m = make_model(nodes, [("x", ["N", 3, 6, 6])], outputs, {k: np.asarray(v, np.float32) for k, v in inits.items()})
    q, _ = _quantize(m, calib="gaussian", calib_samples=16)
    check_model(q)
    expands = [n for n in q.graph.node if n.op_type == "Expand"]
    float_adds = ort_optimized_ops(q)["Add"]
    assert (len(expands), float_adds) == ((1, 0) if case == "per-channel" else (0, 1))
    x = rand((8, 3, 6, 6), seed=1)
    ref = run(m, x)
    assert np.abs(run(q, x) - ref).mean() < 0.05 * np.abs(ref).mean()
