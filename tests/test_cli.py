import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from conftest import DEMO, rand, run
from dfc.cli import main


def _sha(p):
    return hashlib.sha256(open(p, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    from dfc.models.digits_cnn import load_digits_split

    d = load_digits_split()
    p = tmp_path_factory.mktemp("data") / "digits_test.npz"
    np.savez(p, images=d["test_images"], labels=d["test_labels"])
    return p


FAST_BNS = ["--calib-samples", "64", "--inverter-steps", "20"]  # the default BNS calibration, shortened


def test_optimize_demo_writes_model_report_and_summary(tmp_path, capsys):
    out, rep = tmp_path / "d.onnx", tmp_path / "r.json"
    before = _sha(DEMO)
    assert main(["optimize", str(DEMO), "-o", str(out), "--report", str(rep), "-q", *FAST_BNS]) == 0
    assert _sha(DEMO) == before  # the input is never modified
    onnx.checker.check_model(onnx.load(out))
    r = json.loads(rep.read_text())
    assert r["after"]["size_bytes"] < r["before"]["size_bytes"]
    assert r["after"]["quantized_layers"] == r["after"]["layers"] == 4
    assert 0 < r["latency"]["ratio"] and 0.9 <= r["fidelity"]["agreement"] <= 1.0
    assert r["passes"]["quantize"]["wbits"] == 8 and r["passes"]["quantize"]["calibration"] == "bns"
    main(["optimize", str(DEMO), "-o", str(out), "--calib", "gaussian"])
    text = capsys.readouterr().out
    assert "size on disk" in text and "ORT latency" in text and "agreement" in text


def test_eval_json_last_line(tmp_path, digits_npz, capsys):
    out = tmp_path / "d.onnx"
    assert main(["optimize", str(DEMO), "-o", str(out), "-q", "--no-measure", *FAST_BNS]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(digits_npz), "--reference", str(DEMO), "--json"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    res = json.loads(last)
    assert res["n"] == 360 and res["top1"] > 0.95 and res["agreement"] > 0.97


def test_inspect_table_and_json(capsys):
    assert main(["inspect", str(DEMO)]) == 0
    text = capsys.readouterr().out
    assert "Conv" in text and "Gemm" in text and "3 BatchNormalization nodes" in text
    assert main(["inspect", str(DEMO), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["totals"]["layers"] == 4 and all(r["bn"] for r in d["layers"] if r["op"] == "Conv")


def test_no_quant_reproduces_outputs_and_removes_bn(tmp_path):
    out = tmp_path / "f.onnx"
    assert main(["optimize", str(DEMO), "-o", str(out), "--no-quant", "-q"]) == 0
    m = onnx.load(out)
    assert not any(n.op_type == "BatchNormalization" for n in m.graph.node)
    x = rand((16, 1, 8, 8))
    assert np.abs(run(m, x) - run(str(DEMO), x)).max() <= 1e-4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prune-step", "0"], "--prune-step must be a ratio in (0, 1]"),
        (["--alpha-p", "-1"], "--alpha-p must be a finite number >= 0"),
        (["--calib", "bns", "--inverter-lr", "0"], "--inverter-lr must be a positive number"),
        (["--prune", "1.5"], "--prune must be a ratio in [0, 1)"),
        (["--wbits", "9"], "--wbits must be an integer bit width in 2..8"),
        (["--abits", "1"], "--abits must be an integer bit width in 2..8"),
        (["--wbits", "8", "--first-last-bits", "6"], "below the body's width"),
        (["--no-quant", "--wbits", "4"], "--no-quant conflicts"),
        (["--no-quant", "--calib", "bns"], "--no-quant without --finetune (or --prune-depth on with a target) uses no samples"),
        (["--finetune", "kd", "--finetune-steps", "-1"], "--finetune-steps must be an integer >= 0"),
        (["--finetune", "kd", "--finetune-time", "0"], "--finetune-time must be a positive number"),
        (["--finetune", "kd", "--finetune-time", "60", "--finetune-steps", "5"], "cannot be combined with --finetune-steps"),
        (["--input-mean", "0.5,0.5", "--input-std", "0.5,0.5"], "the model input has 1 channels"),
        (["--input-mean", "a"], "--input-mean: expected comma-separated numbers"),
        (["--prune", "0.3", "--target-latency", "0.5"], "--prune and --target-latency are exclusive"),
        (["--target-size", "0.5", "--target-macs", "0.5"], "give one target"),
        (["--target-latency", "0"], "--target-latency must be a ratio in (0, 1]"),
        (["--prune", "0.3", "--channel-multiple", "0"], "--channel-multiple must be an integer >= 1"),
    ],
)
def test_bad_options_exit_2_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(DEMO), "-o", str(out), "-q", *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_target_macs_on_the_demo_model_reports_the_target(tmp_path, capsys):
    out, rep = tmp_path / "t.onnx", tmp_path / "t.json"
    assert main(["optimize", str(DEMO), "-o", str(out), "--report", str(rep), "--no-quant", "--no-measure",
                 "--target-macs", "0.7", "--prune-scope", "all", "--channel-multiple", "8", "--calib", "gaussian"]) == 0
    r = json.loads(rep.read_text())
    assert r["target"]["met"] and r["after"]["macs"] <= 0.7 * r["before"]["macs"]
    assert "target macs <= 0.7x (band 0.63-0.7x): output" in capsys.readouterr().out


def test_prune_depth_without_residual_branches_falls_back_to_channels(tmp_path, capsys):
    """--prune-depth on takes samples with --no-quant (the probe that ranks branches); the demo CNN has no residual
    branch, so the target is met by channels alone and the summary says so."""
    out, rep = tmp_path / "t.onnx", tmp_path / "t.json"
    assert main(["optimize", str(DEMO), "-o", str(out), "--report", str(rep), "--no-quant", "--no-measure", "--calib", "gaussian",
                 "--target-macs", "0.7", "--prune-depth", "on", "--prune-scope", "all", "--channel-multiple", "8"]) == 0
    r = json.loads(rep.read_text())
    assert r["target"]["met"] and r["passes"]["prune"]["depth"]["candidates"] == 0
    assert "depth: no removable residual branch" in capsys.readouterr().out


def test_prune_on_the_demo_model_writes_a_smaller_valid_model(tmp_path):
    out, rep = tmp_path / "p.onnx", tmp_path / "p.json"
    assert main(["optimize", str(DEMO), "-o", str(out), "-q", "--prune", "0.5", "--prune-scope", "all", "--criterion", "paoding",
                 "--compensate", "none", "--no-quant", "--no-measure", "--report", str(rep), "--channel-multiple", "1"]) == 0
    r = json.loads(rep.read_text())
    assert r["after"]["weight_params"] < 0.5 * r["before"]["weight_params"]
    assert r["passes"]["prune"]["groups_removed"] == 40  # 16 + 32 + 32 channels, halved
    assert run(onnx.load(out), rand((4, 1, 8, 8))).shape == (4, 10)


def test_bad_files_exit_2_naming_the_file(tmp_path, capsys):
    missing = tmp_path / "missing.onnx"
    assert main(["optimize", str(missing), "-o", str(tmp_path / "o.onnx")]) == 2
    assert str(missing) in capsys.readouterr().err
    trunc = tmp_path / "truncated.onnx"
    trunc.write_bytes(DEMO.read_bytes()[:1000])
    assert main(["optimize", str(trunc), "-o", str(tmp_path / "o.onnx")]) == 2
    assert "truncated.onnx" in capsys.readouterr().err and not (tmp_path / "o.onnx").exists()


def test_output_equal_to_input_is_refused_without_force(tmp_path, capsys):
    copy = tmp_path / "m.onnx"
    copy.write_bytes(DEMO.read_bytes())
    before = _sha(copy)
    assert main(["optimize", str(copy), "-o", str(copy), "-q"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err and _sha(copy) == before
    assert main(["optimize", str(copy), "-o", str(copy), "-q", "--force", "--no-measure", "--calib", "gaussian"]) == 0
    assert _sha(copy) != before


def test_eval_errors_name_the_problem(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, pics=np.zeros((2, 8, 8, 1), np.uint8))
    assert main(["eval", str(DEMO), "--data", str(bad)]) == 2
    assert "missing array(s) images, labels" in capsys.readouterr().err
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, images=np.zeros((2, 9, 9, 1), np.uint8), labels=np.zeros(2, np.int64))
    assert main(["eval", str(DEMO), "--data", str(wrong)]) == 2
    assert "the model expects" in capsys.readouterr().err


def test_console_script_is_installed():
    r = subprocess.run([sys.executable, "-m", "dfc.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "dfc" in r.stdout


def test_check_and_bias_correction_flags_reach_the_report(tmp_path):
    """--no-udfc-check and --no-bias-correction switch the two safeguards off; by default both run and report."""
    def report(*flags):
        out, rep = tmp_path / "m.onnx", tmp_path / "m.json"
        assert main(["optimize", str(DEMO), "-o", str(out), "-q", "--prune", "0.25", "--calib", "gaussian",
                     "--no-measure", "--report", str(rep), *flags]) == 0
        return json.loads(rep.read_text())["passes"]

    default = report()
    check = default["prune"]["compensation"]["check"]
    assert check["probe"] == "gaussian" and check["samples"] == 256 and check["kept"] in ("udfc", "none")
    assert default["quantize"]["bias_correction"] is True
    assert any(r["bias_shift"] is not None for r in default["quantize"]["layers"])
    off = report("--no-udfc-check", "--no-bias-correction")
    assert "check" not in off["prune"]["compensation"] and off["quantize"]["bias_correction"] is False
    assert all(r["bias_shift"] is None for r in off["quantize"]["layers"])
