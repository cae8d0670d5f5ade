"""FGSM in `dfc eval` / `dfc bns-score` (dfc.measure.adversarial): ε = 0 is the clean accuracy, accuracy falls with ε, and a
quantized model is attacked through its own QDQ graph."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import DEMO, run

import dfc.api as api
from dfc.measure.adversarial import fgsm, fgsm_eval, input_gradients, parse_eps
from dfc.cli import main
from dfc.errors import DfcError
from dfc.graph.modelio import load_model
from dfc.models import digits_cnn

MEAN, STD = np.array(digits_cnn.MEAN, np.float32), np.array(digits_cnn.STD, np.float32)


@pytest.fixture(scope="module")
def digits(digits_test):
    x, y = digits_test
    return x[:300], y[:300]


def test_eps_zero_is_clean_and_accuracy_falls_with_eps(digits):
    model = load_model(DEMO)
    x, y = digits
    rows = fgsm_eval(model, x, y, [0.0, 2 / 255, 8 / 255, 32 / 255], MEAN, STD)["fgsm"]
    clean = float((run(model, x).argmax(1) == y).mean())
    assert rows[0]["top1"] == clean
    accs = [r["top1"] for r in rows]
    assert all(a >= b for a, b in zip(accs, accs[1:])) and accs[-1] < clean - 0.2


def test_perturbation_stays_in_the_pixel_range_and_has_size_eps(digits):
    x, _ = digits
    g = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    adv = fgsm(x, g, 8 / 255, MEAN, STD)
    lo, hi = (0 - MEAN.reshape(1, -1, 1, 1)) / STD.reshape(1, -1, 1, 1), (1 - MEAN.reshape(1, -1, 1, 1)) / STD.reshape(1, -1, 1, 1)
    assert (adv >= lo - 1e-6).all() and (adv <= hi + 1e-6).all()
    assert np.abs(adv - x).max() <= 8 / 255 / STD.min() + 1e-6


def test_quantized_model_is_attacked_through_its_qdq_graph(digits):
    """The gradient is the QDQ graph's (STE through Q/DQ): it matches a finite-free reference, the torch executor on
    the QDQ model, and differs from the float model's."""
    from dfc.synth.torch_exec import TorchGraph

    x, y = digits
    x, y = x[:32], y[:32]
    float_model = load_model(DEMO)
    qdq = api.optimize(float_model, wbits=2, abits=4, first_last_bits=4, calib="gaussian", measure=False)
    g_q, g_f = input_gradients(qdq, x, y), input_gradients(float_model, x, y)
    xt = torch.from_numpy(x).requires_grad_(True)
    torch.nn.functional.cross_entropy(TorchGraph(qdq)(xt)[0][0], torch.from_numpy(y.astype(np.int64)), reduction="sum").backward()
    assert np.allclose(g_q, xt.grad.numpy(), atol=1e-6)
    assert (np.sign(g_q) != np.sign(g_f)).mean() > 0.05


def test_eval_cli_fgsm_json_with_reference(tmp_path, capsys):
    data = tmp_path / "d.npz"
    d = digits_cnn.load_digits_split()
    np.savez(data, images=d["test_images"][:100], labels=d["test_labels"][:100])
    q = tmp_path / "q.onnx"
    assert main(["optimize", str(DEMO), "-o", str(q), "-q", "--calib", "gaussian", "--no-measure"]) == 0
    capsys.readouterr()
    assert main(["eval", str(q), "--data", str(data), "--reference", str(DEMO), "--fgsm", "0,4/255", "--json",
                 "--mean", "0.3057", "--std", "0.3773"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = out["fgsm"]
    assert [r["eps_255"] for r in rows] == [0.0, 4.0] and rows[0]["top1"] == out["top1"]
    assert rows[0]["reference_top1"] == out["reference_top1"] and rows[0]["robust_ratio"] == pytest.approx(out["top1"] / out["reference_top1"])
    assert {"transfer_top1", "robust_ratio"} <= set(rows[1])


@pytest.mark.parametrize("text", ["a", "1/0", "2", "-1/255"])
def test_bad_eps_is_named(text):
    with pytest.raises(DfcError, match="--fgsm"):
        parse_eps(text)


def test_bns_score_scores_the_perturbed_set(tmp_path, capsys):
    d = digits_cnn.load_digits_split()
    data = tmp_path / "d.npz"
    np.savez(data, images=d["test_images"][:128], labels=d["test_labels"][:128])
    args = ["bns-score", str(DEMO), "--data", str(data), "--mean", "0.3057", "--std", "0.3773", "--json"]
    assert main([*args, "--fgsm", "0,8/255"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["fgsm"][0]["j_kl"] == pytest.approx(out["j_kl"]) and out["fgsm"][1]["j_kl"] != pytest.approx(out["j_kl"])
    assert main([*args, "--fgsm", "x"]) == 2


def test_gradients_of_a_raw_export_with_shape_arithmetic(cifar_exact):
    """The shared ResNet-20 as exported (ConstantOfShape & co. in its shortcut): cleaned up (exactly) for torch."""
    from conftest import shared_file

    model = load_model(shared_file("models/resnet20_cifar10.onnx"))
    x, y = cifar_exact[0][:8], cifar_exact[1][:8]
    g = input_gradients(model, x, y)
    assert g.shape == x.shape and np.abs(g).sum() > 0
