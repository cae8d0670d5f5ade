"""The robustness cases of `dfc optimize` / `dfc eval`: each builds its input files in a directory and gives the
command line, the exit code it must end with and a fragment its message (stderr for errors, the JSON report's
notes for successes) must contain. tests/test_robustness.py runs them; tools/robustness_table.py writes
docs/robustness.md from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from conftest import DEMO, bn_node, bn_params, cnn_nodes, make_model

FAST = ["--calib-samples", "16", "--inverter-steps", "3", "--no-measure", "-q"]


def cnn_inits(seed: int = 0, c: int = 8) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    return {"w1": r.normal(0, 0.3, (c, 3, 3, 3)).astype(np.float32), "w2": r.normal(0, 0.3, (c, c, 3, 3)).astype(np.float32),
            "fc_w": r.normal(0, 0.3, (4, c)).astype(np.float32), "fc_b": r.normal(0, 0.1, 4).astype(np.float32),
            **bn_params("bn1", c, seed + 1), **bn_params("bn2", c, seed + 2)}


def small_cnn(opset: int = 17, batch="N", inits=None, nodes=None, outputs=(), inputs=None, domains=()) -> onnx.ModelProto:
    """x[batch,3,8,8] -> Conv BN Relu -> Conv BN -> Add(skip) Relu -> GAP -> Flatten -> Gemm(4), or `nodes`."""
    graph = helper.make_graph(
        nodes or cnn_nodes(residual=True), "robustness",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in (inputs or [("x", [batch, 3, 8, 8])])],
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in [("y", [batch, 4]), *outputs]],
        [numpy_helper.from_array(v, k) for k, v in (inits or cnn_inits()).items()],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)])
    m.ir_version = 8
    return m


def with_node_after_relu1(node: onnx.NodeProto, extra_inits=None, domains=()) -> onnx.ModelProto:
    """The plain (non-residual) CNN with `node` (input r1, output mid) between relu1 and conv2."""
    nodes = cnn_nodes(residual=False)
    i = next(k for k, n in enumerate(nodes) if n.name == "relu1")
    nodes[i + 1].input[0] = "mid"
    nodes.insert(i + 1, node)
    return small_cnn(nodes=nodes, inits={**cnn_inits(), **(extra_inits or {})}, domains=domains)


def pre_activation_cnn() -> onnx.ModelProto:
    """BN not after a Conv: Conv -> Relu -> BN -> Conv -> BN -> Relu -> GAP -> Flatten -> Gemm."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r0"], name="relu0"), bn_node("bn1", "r0", "b1"),
             helper.make_node("Conv", ["b1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"), bn_node("bn2", "c2", "b2"),
             helper.make_node("Relu", ["b2"], ["r2"], name="relu2"), helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1, name="fc")]
    return small_cnn(nodes=nodes)


def two_input_cnn() -> onnx.ModelProto:
    """y = CNN(x + x2): two graph inputs."""
    nodes = cnn_nodes(residual=True)
    nodes[0].input[0] = "xs"
    nodes.insert(0, helper.make_node("Add", ["x", "x2"], ["xs"], name="add_inputs"))
    return small_cnn(nodes=nodes, inputs=[("x", ["N", 3, 8, 8]), ("x2", ["N", 3, 8, 8])])


def numeric_variant(change: Callable[[dict], None]) -> onnx.ModelProto:
    inits = cnn_inits()
    change(inits)
    return small_cnn(inits=inits)


def qdq_model() -> onnx.ModelProto:
    from dfc.api import optimize

    return optimize(small_cnn(), calib="gaussian", calib_samples=8)


def qlinear_model() -> onnx.ModelProto:
    """QLinearConv in front of the float CNN (the QOperator format)."""
    m = small_cnn()
    g = m.graph
    g.node[0].input[0] = "xdq"
    r = np.random.default_rng(3)
    inits = {"xs": np.array(0.05, np.float32), "xz": np.array(128, np.uint8), "qw": r.integers(-20, 20, (3, 3, 1, 1)).astype(np.int8),
             "ws": np.array(0.02, np.float32), "wz": np.array(0, np.int8)}
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in inits.items())
    g.node.insert(0, helper.make_node("DequantizeLinear", ["xq2", "xs", "xz"], ["xdq"], name="dq_x"))
    g.node.insert(0, helper.make_node("QLinearConv", ["xq", "xs", "xz", "qw", "ws", "wz", "xs", "xz"], ["xq2"], name="qconv"))
    g.node.insert(0, helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="q_x"))
    return m


def empty_graph() -> onnx.ModelProto:
    g = helper.make_graph([], "empty", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _empty(d: Path, name: str) -> str:
    (d / name).write_bytes(b"")
    return str(d / name)


def _npy(d: Path, name: str) -> str:
    np.save(d / name, np.zeros((4, 1, 8, 8), np.float32))
    return str(d / name)


def _save(model: onnx.ModelProto, d: Path, name: str) -> str:
    p = d / name
    onnx.save(model, str(p))
    return str(p)


def _external(d: Path, drop_side_file: bool) -> str:
    p = d / ("ext_missing.onnx" if drop_side_file else "ext.onnx")
    side = p.stem + ".weights"
    onnx.save(onnx.load(str(DEMO)), str(p), save_as_external_data=True, all_tensors_to_one_file=True, location=side,
              size_threshold=0)
    if drop_side_file:
        (d / side).unlink()
    return str(p)


def _npz(d: Path, name: str, **arrays) -> str:
    p = d / name
    np.savez(p, **arrays)
    return str(p)


@dataclass
class Case:
    id: str
    area: str  # inputs | options | output | numerics
    what: str
    argv: Callable[[Path], list[str]]  # the command line after `dfc`, with its files made in the directory
    code: int
    message: str  # a fragment of stderr (errors) or of the report's notes (successes); "" = nothing to check
    prunes: bool = True  # with --prune, some channels must go (False: the case blocks every channel, by design)


def _opt(model_fn, name, *extra):
    """`optimize MODEL -o out.onnx --report report.json` plus fast inverter settings."""
    return lambda d: ["optimize", _save(model_fn(), d, name), "-o", str(d / "out.onnx"), "--report", str(d / "report.json"),
                      *FAST, *extra]


def _opt_path(path_fn, *extra):
    return lambda d: ["optimize", path_fn(d), "-o", str(d / "out.onnx"), "--report", str(d / "report.json"), *FAST, *extra]


def _demo(*extra):
    return lambda d: ["optimize", str(DEMO), "-o", str(d / "out.onnx"), *FAST, *extra]


def _text_file(d: Path) -> str:
    (d / "notes.onnx").write_text("this is not a model\n")
    return str(d / "notes.onnx")


def _truncated(d: Path) -> str:
    (d / "truncated.onnx").write_bytes(DEMO.read_bytes()[:1000])
    return str(d / "truncated.onnx")


def _nan(v):
    def change(inits):
        inits["w2"][0, 0, 0, 0] = v
    return change


CASES: list[Case] = [
    # ---------------------------------------------------------------- inputs
    Case("missing-file", "inputs", "input file does not exist", _opt_path(lambda d: str(d / "missing.onnx")), 2, "missing.onnx: no such file"),
    Case("directory", "inputs", "input is a directory", _opt_path(lambda d: str(d)), 2, "is a directory"),
    Case("not-onnx", "inputs", "a text file named .onnx", _opt_path(_text_file), 2, "notes.onnx: not a valid ONNX model"),
    Case("truncated", "inputs", "truncated protobuf (first 1000 bytes)", _opt_path(_truncated), 2, "truncated.onnx"),
    Case("external-data", "inputs", "weights in a side file (external data)", _opt_path(lambda d: _external(d, False)), 0, ""),
    Case("external-data-missing", "inputs", "external data file missing", _opt_path(lambda d: _external(d, True)), 2,
         "ext_missing.onnx"),
    *[Case(f"opset-{v}", "inputs", f"opset {v}, prune 0.25 + W4A8", _opt(lambda v=v: small_cnn(opset=v), f"op{v}.onnx",
                                                                         "--prune", "0.25", "--prune-scope", "all", "--wbits", "4"),
           0, "converted to 13" if v < 13 else "") for v in range(11, 22)],
    Case("fixed-batch", "inputs", "fixed batch size 1", _opt(lambda: small_cnn(batch=1), "b1.onnx", "--prune", "0.25", "--prune-scope", "all"), 0, ""),
    Case("dynamic-batch", "inputs", "symbolic batch size", _opt(lambda: small_cnn(batch="batch"), "bn.onnx", "--prune", "0.25", "--prune-scope", "all"), 0, ""),
    Case("qdq-model", "inputs", "already quantized (QDQ)", _opt(qdq_model, "qdq.onnx"), 2, "already quantized"),
    Case("qlinear-model", "inputs", "already quantized (QLinearConv)", _opt(qlinear_model, "qlinear.onnx"), 2,
         "already quantized (node 'q_x'"),
    Case("no-bn", "inputs", "no BatchNormalization (BN-folded export)", _opt_path(lambda d: _save(_folded(), d, "folded.onnx")), 0,
         "no BatchNormalization statistics (no BN nodes"),
    Case("pre-activation-bn", "inputs", "BN after a Relu, not after a Conv", _opt(pre_activation_cnn, "preact.onnx", "--prune", "0.25"),
         0, ""),
    Case("maxpool-on-path", "inputs", "MaxPool (asymmetric pads) between pruned layers",
         _opt(lambda: with_node_after_relu1(helper.make_node("MaxPool", ["r1"], ["mid"], kernel_shape=[2, 2], pads=[0, 0, 1, 1])),
              "maxpool.onnx", "--prune", "0.5"), 0, ""),
    Case("resize-on-path", "inputs", "Resize on a pruning path",
         _opt(lambda: with_node_after_relu1(helper.make_node("Resize", ["r1", "", "scales"], ["mid"], mode="nearest"),
                                            {"scales": np.ones(4, np.float32)}), "resize.onnx", "--prune", "0.5"), 0, ""),
    Case("erf-on-path", "inputs", "Erf on a pruning path (unknown to the BNS executor)",
         _opt(lambda: with_node_after_relu1(helper.make_node("Erf", ["r1"], ["mid"])), "erf.onnx", "--prune", "0.5"),
         0, "the BNS inverter cannot run this model"),
    Case("contrib-op-on-path", "inputs", "com.microsoft Gelu on a pruning path (ONNX shape inference stops there, so "
         "every channel is blocked: nothing pruned, said in the notes)",
         _opt(lambda: with_node_after_relu1(helper.make_node("Gelu", ["r1"], ["mid"], domain="com.microsoft"),
                                            domains=("com.microsoft",)), "gelu.onnx", "--prune", "0.5"),
         0, "nothing was pruned", prunes=False),
    Case("custom-op", "inputs", "custom-domain op ORT has no kernel for",
         _opt(lambda: with_node_after_relu1(helper.make_node("Foo", ["r1"], ["mid"], domain="com.acme", name="acme_foo"),
                                            domains=("com.acme",)), "custom.onnx"), 2, "node 'acme_foo' is com.acme.Foo"),
    Case("multi-output", "inputs", "a second graph output (an inner activation)",
         _opt(lambda: small_cnn(nodes=cnn_nodes(residual=False), outputs=[("r1", ["N", 8, 8, 8])]), "two_out.onnx", "--prune", "0.25"), 0, ""),
    Case("multi-input-quant", "inputs", "two graph inputs, quantizing", _opt(two_input_cnn, "two_in.onnx"), 2,
         "the model has 2 inputs (x, x2)"),
    Case("multi-input-prune", "inputs", "two graph inputs, --no-quant --prune 0.25",
         _opt(two_input_cnn, "two_in.onnx", "--no-quant", "--prune", "0.25", "--prune-scope", "all"), 0, ""),
    Case("empty-graph", "inputs", "graph with no nodes", _opt(empty_graph, "empty.onnx"), 2, "graph is empty"),
    # ---------------------------------------------------------------- options
    Case("ratio-1", "options", "--prune 1.0", _demo("--prune", "1.0"), 2, "--prune must be a ratio in [0, 1)"),
    Case("ratio-negative", "options", "--prune -0.1", _demo("--prune=-0.1"), 2, "--prune must be a ratio in [0, 1)"),
    Case("wbits-9", "options", "--wbits 9", _demo("--wbits", "9"), 2, "--wbits must be an integer bit width in 2..8"),
    Case("abits-1", "options", "--abits 1", _demo("--abits", "1"), 2, "--abits must be an integer bit width in 2..8"),
    Case("first-last-below", "options", "--wbits 8 --first-last-bits 6", _demo("--wbits", "8", "--first-last-bits", "6"), 2,
         "below the body's width"),
    Case("unknown-criterion", "options", "--criterion random", _demo("--criterion", "random"), 2, "invalid choice: 'random'"),
    Case("unknown-calib", "options", "--calib imagenet", _demo("--calib", "imagenet"), 2, "invalid choice: 'imagenet'"),
    Case("mean-std-length", "options", "--input-mean with 3 values, --input-std with 2",
         _demo("--input-mean", "0.5,0.5,0.5", "--input-std", "0.5,0.5"), 2, "mean has 3 values but std has 2"),
    Case("mean-channels", "options", "3 mean/std values for a 1-channel model", _demo("--input-mean", "0.5,0.5,0.5", "--input-std", "1,1,1"),
         2, "the model input has 1 channels"),
    Case("calib-data-shape", "options", "--calib-data samples of the wrong shape",
         lambda d: ["optimize", str(DEMO), "-o", str(d / "out.onnx"), *FAST,
                    "--calib-data", _npz(d, "calib.npz", x=np.zeros((4, 3, 8, 8), np.float32))], 2, "expects"),
    Case("calib-data-empty", "options", "--calib-data an empty file",
         lambda d: ["optimize", str(DEMO), "-o", str(d / "out.onnx"), *FAST, "--calib-data", _empty(d, "calib.npz")], 2,
         "cannot read as .npz"),
    Case("calib-data-npy", "options", "--calib-data a bare .npy array",
         lambda d: ["optimize", str(DEMO), "-o", str(d / "out.onnx"), *FAST, "--calib-data", _npy(d, "calib.npy")], 2,
         "not an .npz archive"),
    Case("bad-device", "options", "--device quantum", _demo("--device", "quantum"), 2, "--device quantum"),
    Case("eval-missing-labels", "options", "eval data without `labels`",
         lambda d: ["eval", str(DEMO), "--data", _npz(d, "nolabels.npz", images=np.zeros((2, 8, 8, 1), np.uint8))], 2,
         "missing array(s) labels"),
    Case("eval-missing-images", "options", "eval data without `images`",
         lambda d: ["eval", str(DEMO), "--data", _npz(d, "noimages.npz", labels=np.zeros(2, np.int64))], 2, "missing array(s) images"),
    Case("eval-shape", "options", "eval images of the wrong size",
         lambda d: ["eval", str(DEMO), "--data", _npz(d, "big.npz", images=np.zeros((2, 9, 9, 1), np.uint8),
                                                       labels=np.zeros(2, np.int64))], 2, "the model expects"),
    # ---------------------------------------------------------------- output
    Case("output-is-input", "output", "-o equal to the input, no --force",
         lambda d: ["optimize", _save(onnx.load(str(DEMO)), d, "m.onnx"), "-o", str(d / "m.onnx"), *FAST], 2,
         "is the input file; refusing to overwrite it"),
    Case("output-dir-missing", "output", "-o into a directory that does not exist",
         lambda d: ["optimize", str(DEMO), "-o", str(d / "no" / "out.onnx"), *FAST, "--calib", "gaussian"], 2, "does not exist"),
    # ---------------------------------------------------------------- numerics
    Case("nan-weight", "numerics", "a NaN in a Conv weight", _opt(lambda: numeric_variant(_nan(np.nan)), "nan.onnx"), 2,
         "initializer 'w2' (1 values)"),
    Case("inf-weight", "numerics", "an Inf in a Conv weight", _opt(lambda: numeric_variant(_nan(np.inf)), "inf.onnx"), 2,
         "initializer 'w2' (1 values)"),
    Case("zero-var-bn", "numerics", "BN channels with variance 0",
         _opt(lambda: numeric_variant(lambda i: i["bn1_v"].__setitem__(slice(0, 3), 0.0)), "zvar.onnx", "--prune", "0.25", "--prune-scope", "all"), 0, ""),
    Case("gamma-zero", "numerics", "BN channels with γ = 0",
         _opt(lambda: numeric_variant(lambda i: i["bn1_g"].__setitem__(slice(0, 3), 0.0)), "g0.onnx", "--prune", "0.25", "--prune-scope", "all"), 0, ""),
    Case("zero-filters", "numerics", "all-zero Conv filters",
         _opt(lambda: numeric_variant(lambda i: i["w2"].__setitem__(slice(0, 8), 0.0)), "zf.onnx", "--prune", "0.25", "--prune-scope", "all"), 0, ""),
    Case("huge-weights", "numerics", "Conv weights × 1e30 (activations overflow float32)",
         _opt(lambda: numeric_variant(lambda i: i.__setitem__("w2", i["w2"] * np.float32(1e30))), "huge.onnx"), 0,
         "calibrating on Gaussian noise instead"),
    Case("huge-weights-bns", "numerics", "Conv weights × 1e30 with --calib bns asked for",
         _opt(lambda: numeric_variant(lambda i: i.__setitem__("w2", i["w2"] * np.float32(1e30))), "huge.onnx", "--calib", "bns"), 2,
         "the loss is not finite"),
]


def _folded() -> onnx.ModelProto:
    from dfc.api import optimize

    m = optimize(small_cnn(), no_quant=True)
    del m.metadata_props[:]  # as another tool's BN-folded export: no dfc metadata with the BN statistics
    return m
