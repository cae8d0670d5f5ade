"""UDFC compensation: closed forms, the BN-aware exact merge, lossless requantization, and
"compensation is never worse than plain pruning" on small models with random inputs."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import calibrate_bn, cnn_nodes, make_model, rand, run
from onnx import helper
from scipy.optimize import minimize_scalar

from dfc.compensate import udfc
from dfc.api import optimize_with_report
from dfc.report import _compensation_lines


@pytest.mark.parametrize("seed", range(5))
def test_closed_form_scale_equals_numeric_minimum(seed):
    r = np.random.default_rng(seed)
    f_n, q_m = r.normal(size=27), r.normal(size=27)
    b_n, b_m, alpha = r.normal(), r.normal(), float(r.uniform(0, 3))
    s, loss = udfc.merge_scales(f_n[None], [b_n], q_m[None], [b_m], alpha)
    num = minimize_scalar(lambda v: udfc.merge_loss(v, f_n, b_n, q_m, b_m, alpha))
    assert s[0, 0] == pytest.approx(num.x, rel=1e-6, abs=1e-9)
    assert loss[0, 0] == pytest.approx(num.fun, rel=1e-6, abs=1e-9)


def test_gram_scales_match_the_pairwise_formula():
    r = np.random.default_rng(1)
    f, b = r.normal(size=(5, 12)), r.normal(size=5)
    s, _ = udfc.merge_scales(f[:2], b[:2], f[2:], b[2:], 0.5)
    n, m = 1, 2
    expected = (f[n] @ f[2 + m] + 0.5 * b[n] * b[2 + m]) / (f[2 + m] @ f[2 + m] + 0.5 * b[2 + m] ** 2)
    assert s[n, m] == pytest.approx(expected)


def test_requant_scale_is_one_when_quantization_is_lossless():
    r = np.random.default_rng(2)
    f, b = r.normal(size=(4, 9)), r.normal(size=4)
    cross, source, _ = udfc.weights_grams(f, b, f, b, 1.0)
    assert np.allclose(udfc.requant_scales(np.diag(cross), np.diag(source)), 1.0)
    g = udfc.moment_gram(np.concatenate([f, f]), np.concatenate([b, b]), np.ones(8))
    assert np.allclose(udfc.requant_scales(np.diag(g[:4, 4:]), np.diag(g[4:, 4:])), 1.0)


def test_nnls_from_gram_matches_scipy_nnls_on_the_samples():
    from scipy.optimize import nnls

    r = np.random.default_rng(3)
    a = np.maximum(r.normal(size=(500, 6)), 0)
    g = a.T @ a
    c, err = udfc.nnls_from_gram(g[1:, 1:], g[0, 1:], g[0, 0])
    c_ref, rnorm = nnls(a[:, 1:], a[:, 0])
    assert np.allclose(c, c_ref, atol=1e-6) and err == pytest.approx(rnorm ** 2, rel=1e-6)


# ------------------------------------------------------------------ graphs


def chain_cnn(seed=0, proportional=None, width=6, convs=2):
    """x[N,3,8,8] -> Conv BN Relu -> Conv BN Relu -> GAP -> Flatten -> Gemm(4) (convs=1: without the
    second conv block). With proportional=(n, m, k): conv1 channel n's BN output is exactly k × channel m's."""
    r = np.random.default_rng(seed)
    w1 = r.normal(0, 0.4, (width, 3, 3, 3)).astype(np.float32)
    g1, b1 = r.uniform(0.5, 1.5, width).astype(np.float32), r.uniform(0.3, 1.0, width).astype(np.float32)
    m1, v1 = r.normal(0, 0.3, width).astype(np.float32), r.uniform(0.5, 2, width).astype(np.float32)
    if proportional:
        # W_n = 2·W_m, so the running stats of a consistent network are μ_n = 2·μ_m, σ_n² = 4·σ_m²;
        # γ_n = k·γ_m and β_n = k·β_m then make BN_n(x) = k·BN_m(x) (up to ε)
        n, m, k = proportional
        w1[n], m1[n], v1[n], g1[n], b1[n] = 2 * w1[m], 2 * m1[m], 4 * v1[m], k * g1[m], k * b1[m]
    inits = {
        "w1": w1, "bn1_g": g1, "bn1_b": b1, "bn1_m": m1, "bn1_v": v1,
        "w2": r.normal(0, 0.3, (8, width, 3, 3)).astype(np.float32),
        "bn2_g": r.uniform(0.5, 1.5, 8).astype(np.float32), "bn2_b": r.normal(0, 0.3, 8).astype(np.float32),
        "bn2_m": r.normal(0, 0.3, 8).astype(np.float32), "bn2_v": r.uniform(0.5, 2, 8).astype(np.float32),
        "fc_w": r.normal(0, 0.5, (4, 8)).astype(np.float32), "fc_b": r.normal(0, 0.1, 4).astype(np.float32),
    }
    nodes = cnn_nodes(residual=False, convs=convs)
    if convs == 1:
        inits["fc_w"] = inits["fc_w"][:, :width]
        inits = {k: v for k, v in inits.items() if not k.startswith(("w2", "bn2"))}
    return make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", ["N", 4])], inits)


def _prune(model, **kw):
    return optimize_with_report(model, no_quant=True, measure=False, prune_scope="inner", channel_multiple=1, **kw)


def _channels(model, name):
    from onnx import numpy_helper

    w = next(n.input[1] for n in model.graph.node if n.name == name)
    return next(numpy_helper.to_array(i).shape[0] for i in model.graph.initializer if i.name == w)


@pytest.mark.parametrize("loss", ["bn", "weights"])
@pytest.mark.parametrize("partners", ["single", "nnls"])
def test_proportional_channel_is_merged_exactly(loss, partners):
    """conv1 channel 1's BN output is exactly 2.5 × channel 4's; its consumer is a Gemm behind a global
    average pool. With one channel of the 6 to remove, the udfc criterion picks one of the two (zero
    predicted error), the merge scale is 2.5 (or 0.4) and the outputs are unchanged to 1e-4 — the
    BN-aware exact case."""
    model = chain_cnn(seed=6, proportional=(1, 4, 2.5), convs=1)
    x = rand((32, 3, 8, 8), seed=7)
    out, rep = _prune(model, prune=1 / 6, prune_step=1.0, udfc_loss=loss, udfc_partners=partners)
    assert _channels(out, "conv1") == 5
    row = rep["passes"]["prune"]["compensation"]["layers"][0]
    assert row["layer"] == "conv1" and row["merged"] == 1
    scale = row["steps"][0]["scale_max"]  # channel 1 merged into 4 (×2.5) or 4 into 1 (×0.4)
    assert scale == pytest.approx(2.5, rel=1e-3) or scale == pytest.approx(0.4, rel=1e-3)
    assert np.abs(run(out, x) - run(model, x)).max() <= 1e-4
    # the same removal without compensation changes the output
    plain, _ = _prune(model, prune=1 / 6, prune_step=1.0, compensate="none")
    assert _channels(plain, "conv1") == 5
    assert np.abs(run(plain, x) - run(model, x)).max() > 1e-3


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("partners", ["single", "nnls"])
@pytest.mark.parametrize("loss", ["bn", "weights"])
def test_compensation_is_never_worse_than_plain_pruning(seed, partners, loss):
    x = rand((64, 3, 8, 8), seed=seed)
    model = calibrate_bn(chain_cnn(seed=10 + seed), rand((256, 3, 8, 8), seed=100 + seed))
    ref = run(model, x)
    errs = {}
    for comp in ("none", "udfc"):
        out, _ = _prune(model, prune=0.5, criterion="l1-prebn", compensate=comp, udfc_partners=partners)
        errs[comp] = float(np.mean((run(out, x) - ref) ** 2))
    assert errs["udfc"] <= errs["none"]


def test_requant_leaves_exactly_representable_weights_alone():
    from dfc.graph import ir
    from dfc.compensate.compensation import compensate_quantized
    from dfc.pipeline import Context, PassManager

    model = PassManager(["cleanup", "fold-bn"]).run(chain_cnn(seed=3), Context())
    g = ir.infer_shapes(ir.import_graph(model))
    for n in g.nodes:  # weights on a 4-bit grid per output channel: quantization is lossless
        if n.op in ("Conv", "Gemm"):
            w = ir.const_value(n.inputs[1])
            step = np.abs(w).reshape(w.shape[0], -1).max(1) / 7
            n.inputs[1] = ir.make_const(n.name + "_grid", (np.round(w / step.reshape(-1, *[1] * (w.ndim - 1))) *
                                                            step.reshape(-1, *[1] * (w.ndim - 1))).astype(np.float32))
    before = {n.name: ir.const_value(n.inputs[1]).copy() for n in g.nodes if n.op in ("Conv", "Gemm")}
    rows, _ = compensate_quantized(g, {k: 4 for k in before}, 1.0)
    assert rows and all(r["scale_min"] == pytest.approx(1.0, abs=1e-6) and r["scale_max"] == pytest.approx(1.0, abs=1e-6)
                        for r in rows)
    for n in g.nodes:
        if n.name in before:
            assert np.allclose(ir.const_value(n.inputs[1]), before[n.name], atol=1e-6)


def test_requant_reduces_the_quantization_error_of_the_next_layer():
    """W2[:, m] *= s′ moves the quantized network's pre-activations closer to the float ones."""
    model = calibrate_bn(chain_cnn(seed=8), rand((256, 3, 8, 8), seed=99))
    x = rand((64, 3, 8, 8), seed=9)
    ref = run(model, x)
    errs = {}
    for comp in ("none", "udfc"):
        out, rep = optimize_with_report(model, wbits=3, abits=8, first_last_bits=8, compensate=comp, measure=False,
                                         calib="gaussian")
        errs[comp] = float(np.mean((run(out, x) - ref) ** 2))
        if comp == "udfc":
            assert rep["passes"]["udfc-requant"]["layers_compensated"] >= 1
            line = next(s for s in _compensation_lines(rep["passes"]) if "quantized channels rescaled" in s)
            assert re.search(r"\(-\d[\d.e-]* %\)$", line), line  # the relative change of the predicted error, a decrease
    assert errs["udfc"] < errs["none"]
