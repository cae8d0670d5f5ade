"""Models from other exporters: run-time shape arithmetic in the torch executor, hard-swish/SE forms, symbolic and
fixed-batch input signatures, per-output fidelity, and the two exported models of ../shared."""

from __future__ import annotations

import io
import json

import numpy as np
import onnx
import pytest
import torch
from conftest import make_model, rand, run, shared_file
from onnx import helper

from dfc.graph.modelio import load_model
from dfc.pipeline import Context, PassManager
from dfc.synth.torch_exec import TorchGraph


class _WildNet(torch.nn.Module):
    """A small BN net with what other exporters write: HardSwish, an SE gate (HardSigmoid · x), MaxPool, a
    ConvTranspose, a nearest Resize and a flatten by x.view(x.size(0), -1) (Shape → Gather → Concat → Reshape)."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.b1 = torch.nn.BatchNorm2d(8)
        self.se1 = torch.nn.Conv2d(8, 4, 1)
        self.se2 = torch.nn.Conv2d(4, 8, 1)
        self.up = torch.nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b2 = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        x = torch.nn.functional.hardswish(self.b1(self.c1(x)))
        g = torch.nn.functional.hardsigmoid(self.se2(torch.relu(self.se1(x.mean((2, 3), keepdim=True)))))
        x = torch.nn.functional.max_pool2d(x * g, 2)
        x = torch.nn.functional.interpolate(self.up(x), scale_factor=0.5, mode="nearest")
        x = torch.relu(self.b2(self.c2(x)))
        x = torch.nn.functional.adaptive_avg_pool2d(x, 1)
        return self.fc(x.view(x.size(0), -1))


def wild_model(batch: int | None = None, opset: int = 14) -> onnx.ModelProto:
    """_WildNet exported by torch's TorchScript exporter with BN kept (dfc.export); `batch`: fixed, else dynamic."""
    torch.manual_seed(0)
    net = _WildNet()
    for b in (net.b1, net.b2):
        b.running_mean.uniform_(-0.5, 0.5)
        b.running_var.uniform_(0.5, 2.0)
    net.eval()
    buf = io.BytesIO()
    torch.onnx.export(net, torch.randn(batch or 2, 3, 16, 16), buf, input_names=["x"], output_names=["y"],
                      opset_version=opset, training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                      dynamic_axes=None if batch else {"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def test_torch_executor_runs_run_time_shape_arithmetic():
    model = wild_model()
    ops = {n.op_type for n in model.graph.node}
    assert {"Shape", "Gather", "Concat", "Reshape", "ConvTranspose", "HardSwish", "HardSigmoid", "MaxPool"} <= ops
    x = rand((3, 3, 16, 16))
    with torch.no_grad():
        y = TorchGraph(model)(torch.from_numpy(x))[0][0].numpy()
    assert np.abs(y - run(model, x)).max() <= 1e-4


def _hswish_model(form: str) -> onnx.ModelProto:
    """x → Conv → hard-swish in `form` (op | div | mul) → SE gate Clip(g+3,0,6)/6 · x → Conv → y."""
    r = np.random.default_rng(0)
    inits = {"w1": r.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w2": r.normal(0, 0.5, (4, 4, 1, 1)).astype(np.float32),
             "three": np.array(3.0, np.float32), "zero": np.array(0.0, np.float32), "six": np.array(6.0, np.float32),
             "sixth": np.array(1 / 6, np.float32), "bias": r.normal(0, 0.5, (1, 4, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "bias"], ["cb"])]  # a Paddle-style conv bias
    if form == "op":
        nodes.append(helper.make_node("HardSwish", ["cb"], ["h"]))
    else:
        nodes += [helper.make_node("Add", ["cb", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["k"]),
                  helper.make_node("Mul", ["cb", "k"], ["m"]),
                  helper.make_node("Div", ["m", "six"], ["h"]) if form == "div" else helper.make_node("Mul", ["m", "sixth"], ["h"])]
    nodes += [helper.make_node("GlobalAveragePool", ["h"], ["p"]),
              helper.make_node("Add", ["p", "three"], ["pa"]), helper.make_node("Clip", ["pa", "zero", "six"], ["pk"]),
              helper.make_node("Div", ["pk", "six"], ["gate"]), helper.make_node("Mul", ["h", "gate"], ["se"]),
              helper.make_node("Conv", ["se", "w2"], ["y"])]
    return make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", ["N", 4, 8, 8])], inits)


@pytest.mark.parametrize("form", ["op", "div", "mul"])
def test_hard_swish_forms_become_one_form(form):
    model = _hswish_model(form)
    ctx = Context()
    out = PassManager(["cleanup"]).run(model, ctx)
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("HardSigmoid") == 2 and not {"Div", "Clip", "HardSwish"} & set(ops), ops
    assert ops.count("Add") == 0 and ctx.results["cleanup"]["rewrites"]["conv-bias-add"] == 1
    x = rand((2, 3, 8, 8), scale=3.0)
    assert np.abs(run(out, x) - run(model, x)).max() <= 1e-4


def test_paddle_dense_and_converted_softmax_become_gemm_and_softmax():
    """MatMul + bias Add (Paddle's fc) and the Flatten → Softmax → Reshape(Shape(x)) that onnx's version converter
    writes for an opset-11 Softmax whose input rank it does not know (PP-OCR)."""
    r = np.random.default_rng(1)
    inits = {"w": r.normal(0, 1, (6, 3)).astype(np.float32), "b": r.normal(0, 1, 3).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["z"]),
             helper.make_node("Flatten", ["z"], ["zf"], axis=1), helper.make_node("Softmax", ["zf"], ["s"], axis=1),
             helper.make_node("Shape", ["z"], ["zs"]), helper.make_node("Reshape", ["s", "zs"], ["y"])]
    model = make_model(nodes, [("x", ["N", 6])], [("y", ["N", 3])], inits, opset=13)
    out = PassManager(["cleanup"]).run(model, Context())
    assert sorted(n.op_type for n in out.graph.node) == ["Gemm", "Softmax"]
    x = rand((5, 6))
    assert np.abs(run(out, x) - run(model, x)).max() <= 1e-5


def _symbolic_hw(model: onnx.ModelProto) -> onnx.ModelProto:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d in dims[2:]:
        d.Clear()
        d.dim_param = "?"  # as Paddle2ONNX writes them: one name for both
    return model


FAST = dict(calib_samples=16, inverter_steps=3, inverter_size=16, latency_rounds=2, probe_samples=8, seed=0)


def test_symbolic_spatial_dims_need_input_shape_and_stay_symbolic():
    from dfc.api import optimize_with_report
    from dfc.errors import DfcError

    model = _symbolic_hw(wild_model())
    with pytest.raises(DfcError, match="--input-shape"):
        optimize_with_report(model, **FAST)
    q, report = optimize_with_report(model, input_shape=(1, 3, 16, 16), **FAST)
    assert not any("cannot run" in n or "Gaussian" in n for n in report["notes"]), report["notes"]
    assert report["passes"]["synthesize"]["samples"] == 16
    dims = q.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[2:]] == ["?", "?"]
    for hw in ((16, 16), (32, 48)):  # the written model runs at other sizes, close to the original there
        x = rand((2, 3) + hw)
        assert np.abs(run(q, x) - run(model, x)).max() < 0.5
    assert not any("runs at input shape" in n for n in report["notes"])


def test_fixed_batch_export_synthesizes_and_keeps_its_signature():
    """A batch of 1 baked into the Reshape shapes (torch's constant folding of x.view(x.size(0), -1))."""
    from dfc.api import optimize_with_report

    torch.manual_seed(0)
    model = wild_model(batch=1)
    shapes = [n for n in model.graph.node if n.op_type == "Reshape"]
    assert shapes
    q, report = optimize_with_report(model, **FAST)
    assert not any("cannot run" in n or "Gaussian" in n for n in report["notes"]), report["notes"]
    assert [d.dim_value for d in q.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 16, 16]
    x = rand((1, 3, 16, 16))
    assert run(q, x).shape == run(model, x).shape == (1, 5)
    assert report["latency"]["batch"] == 1


def test_unbaking_reads_zero_only_where_the_batch_is():
    from dfc.graph.signature import Signature

    r = np.random.default_rng(0)
    inits = {"w": r.normal(0, 1, (4, 3, 1, 1)).astype(np.float32), "s": np.array([1, -1], np.int64),
             "c": np.ones((1, 4, 1, 1), np.float32), "cs": np.array([1, 4, 1, 1], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["cv"]), helper.make_node("Reshape", ["c", "cs"], ["cr"]),
             helper.make_node("Mul", ["cv", "cr"], ["a"]), helper.make_node("Reshape", ["a", "s"], ["y"])]
    model = make_model(nodes, [("x", [1, 3, 4, 4])], [("y", [1, 64])], inits)
    sig = Signature.of(model)
    ctx = Context(fixed_batch=sig.fixed_batch)
    work = PassManager(["cleanup"]).run(sig.work_model(model), ctx)
    assert ctx.results["cleanup"]["rewrites"]["batch-free-reshape"] == 1  # the constant's Reshape keeps its 1
    x = rand((3, 3, 4, 4))
    assert run(work, x).shape == (3, 64)
    assert np.abs(run(work, x[:1]) - run(model, x[:1])).max() <= 1e-5
    assert [d.dim_value for d in sig.restore(work).graph.input[0].type.tensor_type.shape.dim] == [1, 3, 4, 4]


def test_output_fidelity_per_output():
    from dfc.measure.validation import output_fidelity

    ref = {"logits": np.array([[2.0, 1.0], [0.0, 1.0]]), "boxes": np.ones((2, 5, 4))}
    got = {"logits": np.array([[2.0, 1.0], [1.5, 1.0]]), "boxes": np.ones((2, 5, 4)) * 1.1}
    f = output_fidelity(ref, got)
    assert f["boxes"]["rel_l2"] == pytest.approx(0.1) and f["boxes"]["sqnr_db"] == pytest.approx(20.0)
    assert "agreement" not in f["boxes"] and f["logits"]["agreement"] == 0.5


def test_eval_without_labels_reports_every_output(tmp_path, capsys):
    from dfc.cli import main

    r = np.random.default_rng(0)
    inits = {"w": r.normal(0, 1, (4, 3, 3, 3)).astype(np.float32), "fc": r.normal(0, 1, (4, 2)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["map"], pads=[1, 1, 1, 1]), helper.make_node("GlobalAveragePool", ["map"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("MatMul", ["f", "fc"], ["cls"])]
    model = make_model(nodes, [("x", ["N", 3, 8, 8])], [("cls", ["N", 2]), ("map", ["N", 4, 8, 8])], inits)
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", images=r.integers(0, 255, (6, 8, 8, 3), dtype=np.uint8))
    rc = main(["eval", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"), "--mean", "0.5", "--std", "0.5",
               "--reference", str(tmp_path / "m.onnx"), "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and set(out["outputs"]) == {"cls", "map"} and "top1" not in out
    assert out["outputs"]["map"]["rel_l2"] == 0.0 and out["outputs"]["cls"]["agreement"] == 1.0
    rc = main(["eval", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"), "--mean", "0.5", "--std", "0.5"])
    assert rc == 2 and "labels" in capsys.readouterr().err


def test_float_layer_candidates_follow_the_graph():
    from dfc.graph import ir
    from dfc.quant.float_layers import candidates
    from dfc.quant.layers import quantizable_layers
    from conftest import conv_bn_relu_cnn

    g = ir.import_graph(PassManager(["cleanup", "fold-bn"]).run(conv_bn_relu_cnn(), Context()))
    assert [k for _, k in candidates(g, quantizable_layers(g))] == [()]  # ReLU only: nothing to measure
    g = ir.import_graph(PassManager(["cleanup"]).run(_hswish_model("div"), Context()))
    cands = dict(candidates(g, quantizable_layers(g)))
    assert len(cands) == 3 and cands["all int8"] == ()
    assert len(cands["float before float-only ops"]) == 1  # the first conv feeds the hard-swish
    assert len(cands["float around float-only ops"]) == 2  # the last reads the SE gate's Mul
    g = ir.import_graph(PassManager(["cleanup", "fold-bn"]).run(wild_model(), Context()))
    layers = quantizable_layers(g)
    prefixes = [k for name, k in candidates(g, layers) if name.startswith("float first")]
    assert prefixes and all(k == tuple(n.name for n in layers[:len(k)]) for k in prefixes)


@pytest.mark.parametrize("medians,expected", [
    ({"float": 1.0, "a": 1.25, "b": 0.76, "c": 0.75}, "b"),  # a tie within 3 %: fewer float layers
    ({"float": 1.0, "a": 0.5, "b": 0.76, "c": 0.75}, "a"),
    ({"float": 1.0, "a": 2.1, "b": 1.4, "c": 1.2}, None),  # never slower than float
])
def test_float_layer_choice_is_never_slower_than_float(monkeypatch, medians, expected):
    from dfc.quant import float_layers
    from dfc.graph import ir
    from dfc.measure import latency

    monkeypatch.setattr(latency, "median_latencies", lambda models, x, **kw: ({k: medians[k] for k in models}, len(x)))
    g = ir.import_graph(_hswish_model("div"))
    ctx = Context()
    pick, info = float_layers.choose(g, {k: g for k in "abc"}, {"a": (), "b": ("l1",), "c": ("l1", "l2")}, ctx,
                                     rand((4, 3, 8, 8)))
    assert pick == expected and info["chosen"] == expected
    assert (pick is None) == any("written in float" in n for n in ctx.notes)


@pytest.mark.slow
def test_ppocr_classifier_runs_end_to_end():
    """PP-OCR (Paddle2ONNX, opset 11, symbolic H/W, hard-swish as Clip/Div, Constant-node weights): BNS runs (no
    fallback), the written model keeps its symbolic dims and runs at 48×320."""
    from dfc.api import optimize_with_report

    model = load_model(shared_file("models/ppocr_mobile_cls.onnx"))
    q, report = optimize_with_report(model, input_shape=(1, 3, 48, 192), input_mean=[0.5] * 3, input_std=[0.5] * 3,
                                     calib_samples=8, inverter_steps=2, latency_rounds=2, probe_samples=4)
    assert not any("cannot run" in n or "Gaussian" in n for n in report["notes"]), report["notes"]
    rewrites = report["passes"]["cleanup"]["rewrites"]
    assert rewrites["hard-swish"] == rewrites["hard-sigmoid"] == 18  # its 18 hard-swishes (the SE gates are HardSigmoid ops)
    x = rand((2, 3, 48, 320))
    choice = report["passes"]["quantize"]["float_layers"]  # hard-swish: int8 or float was measured
    assert np.abs(run(q, x) - run(model, x)).max() < 0.05, choice


@pytest.mark.slow
def test_ultraface_detector_runs_end_to_end():
    """UltraFace (opset 9, batch 1 baked into its Reshapes, two outputs): BNS runs on batches, the signature is
    kept, every output is measured."""
    from dfc.api import optimize_with_report

    model = load_model(shared_file("models/ultraface_slim320.onnx"))
    q, report = optimize_with_report(model, input_mean=[0.498] * 3, input_std=[0.502] * 3, calib_samples=8,
                                     inverter_steps=2, latency_rounds=2, probe_samples=2)
    assert not any("cannot run" in n or "Gaussian" in n for n in report["notes"]), report["notes"]
    assert [d.dim_value for d in q.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 240, 320]
    assert set(report["fidelity"]["outputs"]) == {"scores", "boxes"}
    assert report["fidelity"]["outputs"]["scores"]["rel_l2"] < 0.05
    assert report["latency"]["batch"] == 1


def test_sink_moments_pass_through_hard_swish():
    """A pruned channel behind a hard-swish is replaced by E[hswish(z)], z ~ N(β, γ²) from its BN statistics."""
    from dfc.graph import ir
    from dfc.compensate.sink_moments import _activate, _source

    r = np.random.default_rng(0)
    inits = {"w1": r.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w2": r.normal(0, 0.5, (2, 4, 1, 1)).astype(np.float32),
             "g": r.uniform(0.5, 1.5, 4).astype(np.float32), "b": r.normal(0, 1, 4).astype(np.float32),
             "m": r.normal(0, 0.5, 4).astype(np.float32), "v": r.uniform(0.5, 2, 4).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["z"]),
             helper.make_node("HardSwish", ["z"], ["h"]), helper.make_node("Conv", ["h", "w2"], ["y"])]
    model = make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", ["N", 2, 8, 8])], inits)
    ctx = Context()
    g = ir.import_graph(PassManager(["cleanup", "fold-bn"]).run(model, ctx))
    sink = [n for n in g.nodes if n.op == "Conv"][-1]
    name, acts = _source(sink.inputs[0], ctx.bn_stats)
    assert [a.op for a in acts] == ["Mul"]
    z = np.random.default_rng(1).normal(0.3, 2.0, 200000)
    assert np.mean(_activate(z, acts[0])) == pytest.approx(np.mean(z * np.clip(z / 6 + 0.5, 0, 1)), rel=1e-6)
