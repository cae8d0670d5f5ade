"""The prune pass: dead-channel removal (exact), ratios per scope, progressive schedule, criteria,
report, and pair-wise dense pruning on an MLP trained here on scikit-learn's digits."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import CIFAR_MEAN, CIFAR_STD, conv_bn_relu_cnn, rand, run, shared_file

from dfc.graph import ir
from dfc.api import optimize_with_report
from dfc.prune.channels import ChannelAnalysis
from dfc.pipeline import Context, PassManager
from dfc.measure.runtime import make_session


def folded(model):
    return PassManager(["cleanup", "fold-bn"]).run(model, Context())


def make_dead(model, pick):
    """Zero the weights and bias of every origin of the groups `pick(groups)` returns."""
    g = ir.infer_shapes(ir.import_graph(model))
    groups = pick(ChannelAnalysis(g).groups)
    for grp in groups:
        for node, c in grp.origins:
            for i in (1, 2):
                v = ir.const_value(ir.input_at(node, i)).copy()
                if i == 1 and node.op != "Conv" and not int(node.attrs.get("transB", 0)):
                    v[:, c] = 0
                else:
                    v[c] = 0
                node.inputs[i] = ir.make_const(f"{node.name}_dead{i}_{c}", v)
    return ir.export_model(g, like=model), len(groups)


def prune(model, **kw):
    """Unaligned channel counts (channel multiple 1) unless a test asks for a multiple: the machine's NCHWc block
    (8 or 16) must not decide what these tests see."""
    return optimize_with_report(model, no_quant=True, measure=False, **{"channel_multiple": 1, **kw})


def test_dead_channels_are_removed_exactly_on_a_small_cnn():
    m = folded(conv_bn_relu_cnn())
    dead, n = make_dead(m, lambda gs: [g for g in gs if not g.blocked][:2])
    out, rep = prune(dead)
    assert rep["passes"]["prune"]["dead_groups_removed"] == n == 2
    assert rep["after"]["weight_params"] < rep["before"]["weight_params"]
    x = rand((8, 3, 8, 8))
    assert np.abs(run(out, x) - run(dead, x)).max() <= 1e-5


@pytest.mark.parametrize("name", ["resnet20", "resnet56"])
def test_dead_channels_are_removed_exactly_on_real_resnets(name, cifar_exact):
    """Inner channels of several blocks and whole residual streams (across stages and the shortcut
    pads) made dead beforehand: all removed, logits reproduced to 1e-5."""
    m = folded(onnx.load(shared_file(f"models/{name}_cifar10.onnx")))

    def pick(groups):
        inner = [g for g in groups if not g.blocked and not g.residual]
        residual = [g for g in groups if not g.blocked and g.residual]
        fams = sorted({g.family for g in residual}, key=len)
        res = [next(g for g in residual if g.family == f) for f in fams]  # one stream per family
        return inner[::41] + res

    dead, n = make_dead(m, pick)
    out, rep = prune(dead)
    assert rep["passes"]["prune"]["dead_groups_removed"] == n >= 10
    x = cifar_exact[0][:256]
    # ORT's reference kernels: the only difference left is float32 summation order
    plain = {k: make_session(v, optimize=False).run(None, {"input": x})[0] for k, v in (("out", out), ("dead", dead))}
    assert np.abs(plain["out"] - plain["dead"]).max() <= 1e-5
    # optimized ORT picks other conv kernels for the narrower layers: 1e-5 relative to the logit scale
    y_out, y_dead = run(out, x), run(dead, x)
    assert np.abs(y_out - y_dead).max() <= 1e-5 * max(1.0, float(np.abs(y_dead).max()))
    assert rep["after"]["weight_params"] < rep["before"]["weight_params"]


def test_nothing_dead_nothing_removed_and_outputs_identical():
    m = folded(conv_bn_relu_cnn())
    out, rep = prune(m)
    assert rep["passes"]["prune"]["dead_groups_removed"] == 0
    assert rep["after"]["weight_params"] == rep["before"]["weight_params"]
    x = rand((4, 3, 8, 8))
    assert np.abs(run(out, x) - run(m, x)).max() <= 1e-4


def _channels(model):
    g = ir.import_graph(model)
    return {n.name: ir.const_value(n.inputs[1]).shape[0] for n in ir.weighted_nodes(g)}


def test_inner_scope_prunes_only_block_private_channels():
    out, rep = prune(conv_bn_relu_cnn(), prune=0.5, prune_scope="inner")
    assert _channels(out) == {"conv1": 8, "conv2": 8, "fc": 4}  # conv1 feeds the residual Add: not inner
    assert rep["passes"]["prune"]["groups_in_scope"] == 0 and any("nothing was pruned" in n for n in rep["notes"])


def test_all_scope_prunes_residual_streams_jointly():
    out, rep = prune(conv_bn_relu_cnn(), prune=0.5, prune_scope="all")
    assert _channels(out) == {"conv1": 4, "conv2": 4, "fc": 4}
    r = rep["passes"]["prune"]
    assert r["groups_in_scope"] == 8 and r["groups_removed"] == 4 and r["steps"] == 10
    rows = {row["name"]: row for row in r["layers"]}
    assert rows["conv2"]["channels_before"] == 8 and rows["conv2"]["channels_after"] == 4
    assert rows["conv2"]["params_after"] == 4 * 4 * 9 + 4 and rows["fc"]["macs_after"] == 4 * 4
    assert {b["reason"] for b in r["blocked"]} == {"graph input 'x'", "graph output 'y'"}


def _resnet_like(seed=0):
    """Two inner layers of different widths (8 and 16), for per-layer vs global ratios."""
    from conftest import make_model
    from onnx import helper

    r = np.random.default_rng(seed)
    inits = {"w1": r.normal(0, 0.3, (8, 3, 3, 3)), "w2": r.normal(0, 1.0, (16, 8, 3, 3)), "w3": r.normal(0, 0.3, (4, 16, 3, 3))}
    inits = {k: v.astype(np.float32) for k, v in inits.items()}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["a"], ["ra"], name="relu1"),
        helper.make_node("Conv", ["ra", "w2"], ["b"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["b"], ["rb"], name="relu2"),
        helper.make_node("Conv", ["rb", "w3"], ["y"], pads=[1, 1, 1, 1], name="conv3"),
    ]
    return make_model(nodes, [("x", ["N", 3, 6, 6])], [("y", ["N", 4, 6, 6])], inits)


@pytest.mark.parametrize("criterion", ["l1", "l2", "paoding"])
def test_uniform_ratio_per_layer_and_criterion_order(criterion):
    m = _resnet_like()
    out, rep = prune(m, prune=0.25, criterion=criterion, prune_step=0.1)
    assert _channels(out) == {"conv1": 6, "conv2": 12, "conv3": 4}
    assert rep["passes"]["prune"]["steps"] == 3
    # the kept filters of conv1 are the 6 highest-scoring ones of the original
    from dfc.prune.criteria import filter_scores

    g = ir.import_graph(m)
    scores = filter_scores([n for n in g.nodes if n.name == "conv1"][0], criterion)
    kept = ir.const_value([n for n in ir.import_graph(out).nodes if n.name == "conv1"][0].inputs[1])
    orig = ir.const_value(g.nodes[0].inputs[1])
    expect = orig[np.sort(np.argsort(scores)[2:])]
    assert np.allclose(kept, expect)


def test_global_ranking_compares_layers_and_keeps_one_channel_each():
    out, rep = prune(_resnet_like(), prune=0.5, criterion="l1", prune_global=True)
    ch = _channels(out)
    assert ch["conv1"] + ch["conv2"] == 12 and ch["conv1"] != 4  # not uniform: 24 channels ranked together
    assert min(ch["conv1"], ch["conv2"]) >= 1


def test_prebn_criterion_uses_the_kept_bn_statistics():
    from dfc.prune.criteria import filter_scores
    from dfc.pipeline import Context

    ctx = Context()
    m = PassManager(["cleanup", "fold-bn"]).run(conv_bn_relu_cnn(), ctx)
    conv1 = [n for n in ir.import_graph(m).nodes if n.name == "conv1"][0]
    raw = onnx.numpy_helper.to_array([i for i in conv_bn_relu_cnn().graph.initializer if i.name == "w1"][0])
    assert np.allclose(filter_scores(conv1, "l1-prebn", ctx.bn_stats), np.abs(raw).reshape(8, -1).sum(1), rtol=1e-5)


def test_prebn_criterion_without_bn_statistics_says_it_falls_back():
    _, rep = prune(_resnet_like(), prune=0.25, criterion="l1-prebn")
    assert any("l1-prebn needs BN statistics" in n for n in rep["notes"])


def test_real_resnet56_all_scope_half_channels(cifar_exact):
    m = onnx.load(shared_file("models/resnet56_cifar10.onnx"))
    out, rep = prune(m, prune=0.5, prune_scope="all", criterion="l1-prebn", compensate="none", prune_rank="uniform")
    assert rep["after"]["weight_params"] <= 0.3 * rep["before"]["weight_params"]
    widths = sorted(set(_channels(out).values()))
    assert widths == [8, 10, 16, 32]  # stage widths halved, logits kept
    logits = run(out, cifar_exact[0][:64])
    assert logits.shape == (64, 10) and np.isfinite(logits).all()


# ---------------------------------------------------------------- dense pair-wise (PAODING)


@pytest.fixture(scope="module")
def digits_mlp(tmp_path_factory):
    """64-64-64-10 MLP trained here on the digits split (about 4 s on 2 cores)."""
    import torch
    import torch.nn as nn

    from dfc.models.digits_cnn import MEAN, STD, load_digits_split
    from dfc.models.export import export_keep_bn

    d = load_digits_split()

    def prep(im):
        return ((im.reshape(len(im), -1).astype(np.float32) / 255 - MEAN[0]) / STD[0]).astype(np.float32)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x, y = torch.from_numpy(prep(d["train_images"])), torch.from_numpy(d["train_labels"])
    for _ in range(60):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    export_keep_bn(net, torch.zeros(1, 64), str(path), mean=MEAN, std=STD)
    return onnx.load(path), prep(d["test_images"]), d["test_labels"]


def test_pairwise_dense_pruning_beats_l1_removal(digits_mlp):
    model, x, y = digits_mlp
    acc = lambda m: float((run(m, x).argmax(1) == y).mean())  # noqa: E731
    paired, rep = prune(model, prune=0.5, criterion="paoding", prune_rank="uniform")
    plain, _ = prune(model, prune=0.5, criterion="l1", prune_rank="uniform", compensate="none")
    # UDFC on this BN-less MLP reads the channel moments measured on synthetic samples (passes/moments.py)
    compensated, crep = prune(model, prune=0.5, criterion="l1", prune_rank="uniform")
    assert "estimate-moments" in crep["passes"]
    r = rep["passes"]["prune"]
    assert r["pairs_merged"] == 64 and r["pairwise_layers"] == 2
    hidden = {row["name"]: (row["channels_before"], row["channels_after"]) for row in r["layers"]}
    assert sorted(hidden.values()) == [(10, 10), (64, 32), (64, 32)]
    assert not any("saliency only" in n for n in rep["notes"])  # interval impact terms were used
    before, after_pair, after_l1, after_udfc = acc(model), acc(paired), acc(plain), acc(compensated)
    print(f"digits MLP 50 % of hidden neurons: fp32 {before:.4f}, pair-wise {after_pair:.4f}, lowest-L1 removal "
          f"{after_l1:.4f}, lowest-L1 + UDFC on measured moments {after_udfc:.4f}")
    assert after_pair > after_l1 and after_udfc > after_l1


def test_pair_merge_moves_the_outgoing_weights():
    from dfc.prune.pairwise import saliency_matrix

    w_in = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 5.0]])
    b_in = np.zeros(3)
    w_out = np.array([[1.0], [2.0], [1.0]])
    s = saliency_matrix(w_in, b_in, w_out)
    # removing neuron 1 into 0 costs ‖w0 − w1‖²·‖a1‖² = 0.01·4, removing 0 into 1 costs 0.01·1
    assert s[1, 0] == pytest.approx(0.01) and s[0, 1] == pytest.approx(0.04) and np.isinf(s[0, 0])


@pytest.mark.parametrize("block", [16, 8])
def test_note_when_pruned_channels_break_the_cpu_conv_blocks(monkeypatch, block):
    """The demo CNN has 16/32-channel convs: pruning 25 % leaves 12 and 24, which are not multiples of 16 (note) but
    24 is one of 8 (the note names only the layers that break the block); no note without pruning."""
    from dfc.models import DEMO_MODEL
    from dfc.passes import prune

    monkeypatch.setattr(prune, "nchwc_block", lambda: block)
    _, rep = optimize_with_report(str(DEMO_MODEL), prune=0.25, prune_scope="all", no_quant=True, compensate="none",
                                  measure=False, channel_multiple=1)
    notes = [n for n in rep["notes"] if "blocked conv kernels" in n]
    layers = [r for r in rep["passes"]["prune"]["layers"] if r["op"] == "Conv" and r["channels_after"] % block]
    assert layers and len(notes) == 1 and f"{len(layers)} pruned Conv layer(s)" in notes[0] and f"of {block}" in notes[0]
    _, rep = optimize_with_report(str(DEMO_MODEL), no_quant=True, measure=False)
    assert not any("blocked conv kernels" in n for n in rep["notes"])


def test_probe_error_is_the_class_kl_for_classifier_outputs_and_mse_otherwise():
    from dfc.measure import probe
    from dfc.measure.validation import softmax

    rng = np.random.default_rng(0)
    logits, other = rng.standard_normal((16, 10)), rng.standard_normal((16, 10))
    assert probe.error([logits], [logits + 5.0]) == pytest.approx(0.0, abs=1e-12)  # a shift changes no class belief
    p, q = softmax(logits), softmax(other)
    kl = np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
    assert probe.error([logits], [other]) == pytest.approx(kl, rel=1e-6)
    assert probe.error([p], [q]) == pytest.approx(kl, rel=1e-6)  # a Softmax output: its rows are the distributions
    boxes, moved = rng.standard_normal((1, 40, 4)), rng.standard_normal((1, 40, 4))
    assert probe.error([boxes], [moved]) == pytest.approx(np.mean((boxes - moved) ** 2))
    assert probe.error([logits, boxes], [other, moved]) == pytest.approx(kl + np.mean((boxes - moved) ** 2))
    assert (probe.metric([logits]), probe.metric([boxes]), probe.metric([logits, boxes])) == ("KL", "MSE", "KL + MSE")
