"""Property tests (hypothesis): random small CNN/MLP graphs of Conv, BatchNormalization, Relu, Add, Concat, Gemm,
Flatten through the passes.

- fold-bn (with cleanup) reproduces the outputs to 1e-4 (relative to the output scale);
- prune (any ratio, scope, criterion, compensation) gives a valid model that ORT runs, with the same output shape
  and no more weights than before;
- quantize (any bit widths 2-8) gives a valid model that ORT runs, with finite outputs;
- UDFC compensation (with its probe check, the default) is never worse than plain removal of the same channels.

Derandomized, so that CI sees the same examples on every run.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from conftest import calibrate_bn, run
from dfc.api import optimize, optimize_with_report
from dfc.measure import probe
from dfc.prune.criteria import CRITERIA

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(autouse=True)
def unaligned_channels(monkeypatch):
    """The properties are stated for any channel count: the default channel multiple is 1 here, not the machine's
    NCHWc block (the random models have 2-16 channels); aligned pruning is drawn explicitly where it is tested."""
    from dfc.measure import runtime

    monkeypatch.setattr(runtime, "nchwc_block", lambda: None)


class _Builder:
    def __init__(self, seed: int):
        self.r = np.random.default_rng(seed)
        self.nodes, self.inits, self.k = [], {}, 0

    def name(self, p: str) -> str:
        self.k += 1
        return f"{p}{self.k}"

    def const(self, p: str, v: np.ndarray) -> str:
        n = self.name(p)
        self.inits[n] = v.astype(np.float32)
        return n

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out + "_node", **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int) -> str:
        w = self.const("w", self.r.normal(0, 1.0 / np.sqrt(cin * k * k), (cout, cin, k, k)))
        inputs = [x, w] + ([self.const("b", self.r.normal(0, 0.1, cout))] if self.r.random() < 0.5 else [])
        return self.node("Conv", inputs, pads=[k // 2] * 4)

    def gemm(self, x: str, fin: int, fout: int) -> str:
        w = self.const("fw", self.r.normal(0, 1.0 / np.sqrt(fin), (fout, fin)))
        return self.node("Gemm", [x, w, self.const("fb", self.r.normal(0, 0.1, fout))], transB=1)

    def bn(self, x: str, c: int) -> str:
        r = self.r
        params = [self.const("g", r.uniform(0.5, 1.5, c)), self.const("be", r.normal(0, 0.3, c)),
                  self.const("m", r.normal(0, 0.3, c)), self.const("v", r.uniform(0.5, 2.0, c))]
        return self.node("BatchNormalization", [x, *params], epsilon=1e-5)

    def unit(self, x: str, cin: int, cout: int, k: int, with_bn: bool, relu: bool) -> str:
        y = self.conv(x, cin, cout, k)
        y = self.bn(y, cout) if with_bn else y
        return self.node("Relu", [y]) if relu else y

    def model(self, x_shape: list, out: str, out_shape: list) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, "random", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(v, k) for k, v in self.inits.items()])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.checker.check_model(m, full_check=True)
        return m


@st.composite
def random_cnn(draw, bn: bool | None = None) -> onnx.ModelProto:
    """`bn`: True = every Conv has a BN, None = drawn per layer."""
    b = _Builder(draw(st.integers(0, 2**31 - 1)))
    cin, hw = draw(st.integers(1, 3)), draw(st.sampled_from([4, 6, 8]))
    x, c = "x", cin
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["conv", "residual", "concat"]))
        width = draw(st.integers(2, 8))
        with_bn = bn or draw(st.booleans()) or kind == "residual"
        relu, k = draw(st.booleans()), draw(st.sampled_from([1, 3]))
        if kind == "conv":
            x, c = b.unit(x, c, width, k, with_bn, relu), width
        elif kind == "residual":  # x -> conv BN relu conv BN (+ x, after a 1x1 projection when widths differ) -> relu
            skip = x if c == width else b.unit(x, c, width, 1, True, False)
            y = b.unit(b.unit(x, c, width, k, True, True), width, width, k, True, False)
            x, c = b.node("Relu", [b.node("Add", [y, skip])]), width
        else:  # two branches concatenated on the channel axis
            other = draw(st.integers(2, 8))
            x = b.node("Concat", [b.unit(x, c, width, k, with_bn, relu), b.unit(x, c, other, 1, with_bn, relu)], axis=1)
            c = width + other
    classes = draw(st.integers(2, 6))
    if draw(st.booleans()):
        f, fin = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1), c
    else:
        f, fin = b.node("Flatten", [x], axis=1), c * hw * hw
    y = b.gemm(f, fin, classes)
    return b.model(["N", cin, hw, hw], y, ["N", classes])


@st.composite
def random_mlp(draw, bn: bool | None = None) -> onnx.ModelProto:
    b = _Builder(draw(st.integers(0, 2**31 - 1)))
    fin = draw(st.integers(3, 10))
    x, f = "x", fin
    for _ in range(draw(st.integers(1, 3))):
        width = draw(st.integers(2, 12))
        x = b.gemm(x, f, width)
        x = b.bn(x, width) if bn or draw(st.booleans()) else x
        x, f = b.node("Relu", [x]), width
    classes = draw(st.integers(2, 6))
    return b.model(["N", fin], b.gemm(x, f, classes), ["N", classes])


random_model = st.one_of(random_cnn(), random_mlp())
random_model_with_bn = st.one_of(random_cnn(bn=True), random_mlp(bn=True))


def _inputs(model: onnx.ModelProto, n: int, seed: int) -> np.ndarray:
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    return np.random.default_rng(seed).standard_normal((n, *dims)).astype(np.float32)


def _weights(model: onnx.ModelProto) -> int:
    from dfc.graph.stats import model_summary

    return model_summary(model)["weight_params"]


def setup_module():
    logging.getLogger("dfc").setLevel(logging.ERROR)
    from dfc import progress

    progress.set_enabled(False)


@settings(max_examples=120, **SETTINGS)
@given(random_model)
def test_fold_bn_is_exact(model):
    folded = optimize(model, no_quant=True)
    assert not any(n.op_type == "BatchNormalization" for n in folded.graph.node)
    x = _inputs(model, 8, 0)
    ref = run(model, x)
    assert np.abs(run(folded, x) - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


@settings(max_examples=120, **SETTINGS)
@given(random_model, st.floats(0.05, 0.7), st.sampled_from(["inner", "all"]), st.sampled_from(CRITERIA),
       st.sampled_from(["udfc", "none"]), st.sampled_from([1, 2, 4]))
def test_prune_gives_a_valid_smaller_model(model, ratio, scope, criterion, compensate, multiple):
    pruned = optimize(model, no_quant=True, prune=ratio, prune_scope=scope, criterion=criterion, compensate=compensate,
                      channel_multiple=multiple)
    x = _inputs(model, 4, 1)  # optimize already checked it (onnx checker + an ORT run); the outputs line up too
    y = run(pruned, x)
    assert y.shape == run(model, x).shape and np.isfinite(y).all()
    assert _weights(pruned) <= _weights(optimize(model, no_quant=True))  # folding BN adds biases: compare folded


@settings(max_examples=100, **SETTINGS)
@given(random_model, st.integers(2, 8), st.integers(2, 8), st.floats(0.0, 0.5))
def test_quantize_gives_a_valid_model(model, wbits, abits, ratio):
    q, report = optimize_with_report(model, wbits=wbits, abits=abits, first_last_bits=8, prune=ratio, calib="gaussian",
                                     calib_samples=16, measure=False)
    if not any(n.op_type == "DequantizeLinear" for n in q.graph.node):  # only where ORT measured every candidate slower
        assert report["passes"]["quantize"]["left_in_float"]
        assert any("written in float" in n or "left float" in n and "by measurement" in n for n in report["notes"])
        assert not any("accuracy simulation" in n for n in report["notes"])
        assert "dfc.quantization" not in {p.key for p in q.metadata_props}
    y = run(q, _inputs(model, 4, 2))
    assert np.isfinite(y).all()


def test_compensation_never_worse_than_none_on_bn_models():
    """UDFC vs plain removal of the same channels (l1-prebn), output error (`probe.error`: the class KL of these
    classifiers) on inputs like those the (calibrated) BN
    statistics describe, over 150 drawn models whose pruned layers have BN. The BN-moment model alone is not never
    worse (its channel correlations come from filter cosines, exact only for uncorrelated layer inputs; see
    test_compensation_check_falls_back_when_udfc_is_worse), so the prune pass checks the result on synthetic probe
    inputs and keeps plain removal where UDFC does not help. Asserted: never worse than plain removal beyond the
    sampling noise between the probe draw and this evaluation draw (5 %: the class KL of a near-tie varies more
    between two draws of 256 than the MSE did, which held within 2 %; measured max 1.041), and better on most models."""
    ratios = []

    @settings(max_examples=150, **SETTINGS)
    @given(random_model_with_bn, st.floats(0.1, 0.6))
    def one(model, ratio):
        model = calibrate_bn(model, _inputs(model, 256, 3))  # BN statistics that describe the inputs below
        x = _inputs(model, 256, 4)
        ref = run(model, x)
        common = dict(no_quant=True, prune=ratio, prune_scope="inner", criterion="l1-prebn")
        err = {c: probe.error([ref], [run(optimize(model, compensate=c, **common), x)]) for c in ("udfc", "none")}
        if err["none"] > 1e-9:
            ratios.append(err["udfc"] / err["none"])

    one()
    r = np.array(ratios)
    assert len(r) >= 100
    assert r.max() <= 1.05, sorted(r.round(3))[-5:]
    assert np.median(r) < 0.9 and (r < 0.99).mean() > 0.6, np.median(r)


def _linear_stack(seed: int) -> onnx.ModelProto:
    """Conv-BN, Conv-BN, two Conv-BN branches concatenated, Conv-BN, GAP, Gemm; no ReLU: the layer inputs are
    strongly correlated, which the BN-moment model of UDFC does not see."""
    b = _Builder(seed)
    x = b.unit("x", 3, 6, 3, True, False)
    x = b.unit(x, 6, 6, 3, True, False)
    x = b.node("Concat", [b.unit(x, 6, 6, 3, True, False), b.unit(x, 6, 4, 1, True, False)], axis=1)
    x = b.unit(x, 10, 8, 3, True, False)
    f = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
    return b.model(["N", 3, 6, 6], b.gemm(f, 8, 4), ["N", 4])


def test_compensation_check_falls_back_when_udfc_is_worse():
    """A model where unchecked UDFC is 3.7x worse than plain removal (class KL; 2.6x in MSE): the check keeps plain
    removal, says so in a
    note and in the report; on a model where UDFC helps it is kept."""
    from dfc.api import optimize_with_report

    common = dict(no_quant=True, prune=0.5, prune_scope="inner", criterion="l1-prebn", measure=False)
    for seed, udfc_wins in ((12, False), (5, True)):
        model = _linear_stack(seed)
        model = calibrate_bn(model, _inputs(model, 256, 3))
        x = _inputs(model, 512, 4)
        ref = run(model, x)
        err = lambda m: probe.error([ref], [run(m, x)])  # noqa: E731  (the check's own measure)
        unchecked = err(optimize(model, compensate="udfc", udfc_check=False, **common))
        plain = err(optimize(model, compensate="none", **common))
        checked_model, report = optimize_with_report(model, compensate="udfc", **common)
        assert (unchecked < plain) == udfc_wins, (seed, unchecked, plain)  # the situation this test is about
        comp = report["passes"]["prune"]["compensation"]
        assert comp["used"] == udfc_wins and comp["check"]["probe"] == "gaussian" and comp["check"]["samples"] == 256
        # the check also ranks uniform/global: never worse than the better of the two, and better where a global ranking wins
        assert err(checked_model) <= min(unchecked, plain) * (1 + 1e-6)
        fell_back = any("UDFC compensation did not reduce the output error" in n for n in report["notes"])
        assert fell_back == (not udfc_wins)
