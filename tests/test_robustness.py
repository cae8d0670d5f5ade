"""Robustness (issue 7): every case of tests/robustness_cases.py ends with its exit code and message, never leaves a
half-written output, never touches its inputs; interrupts, internal errors, determinism, permissions."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import DEMO, run
from robustness_cases import CASES, FAST, small_cnn
from dfc.cli import main


def _digests(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir() if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case, tmp_path, capsys):
    argv = case.argv(tmp_path)
    inputs_before = _digests(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == case.code, err
    out = tmp_path / "out.onnx"
    if code == 0 and argv[0] == "optimize":
        from dfc.graph.modelio import check_model

        model = onnx.load(str(out))
        check_model(model, what=case.id)
        notes = " ".join(json.loads((tmp_path / "report.json").read_text())["notes"]) if (tmp_path / "report.json").exists() else ""
        assert case.message in notes, notes
        if "--prune" in argv and case.prunes:
            assert "nothing was pruned" not in notes, notes
    elif code != 0:
        assert case.message in err, err
        assert err.startswith("dfc: error:") or "usage:" in err
        assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temp files left behind: {leftovers}"
    after = _digests(tmp_path)
    assert {k: v for k, v in after.items() if k in inputs_before} == inputs_before, "an input file was modified"


def test_truncated_model_names_the_file_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(DEMO.read_bytes()[:1000])
    assert main(["optimize", str(bad), "-o", str(tmp_path / "out.onnx")]) == 2
    assert str(bad) in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truncated.onnx"]


def test_interrupt_leaves_no_output_and_keeps_an_old_one(tmp_path, capsys, monkeypatch):
    from dfc.passes.prune import Prune

    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous result")

    def interrupted(self, graph, ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(Prune, "run", interrupted)
    assert main(["optimize", str(DEMO), "-o", str(out), *FAST]) == 130
    assert "interrupted; no output was written" in capsys.readouterr().err
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_interrupt_while_writing_removes_the_temp_file(tmp_path, monkeypatch):
    from dfc.graph import modelio

    real_write = Path.write_bytes

    def write_then_interrupt(self, data):
        real_write(self, data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        modelio.save_model_atomic(onnx.load(str(DEMO)), tmp_path / "out.onnx")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_internal_error_exit_1_with_hint_and_traceback_under_debug(tmp_path, capsys, monkeypatch):
    from dfc.passes.fold_bn import FoldBN

    def broken(self, graph, ctx):
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(FoldBN, "run", broken)
    argv = ["optimize", str(DEMO), "-o", str(tmp_path / "out.onnx"), *FAST]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError: simulated bug (run with --debug for the traceback)" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(ZeroDivisionError):
        main([*argv, "--debug"])
    assert not (tmp_path / "out.onnx").exists()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    """Default pipeline (BNS calibration, UDFC pruning and requantization, W4A8): byte-identical per seed."""
    outs = []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        out = tmp_path / f"{name}.onnx"
        assert main(["optimize", str(DEMO), "-o", str(out), *FAST, "--prune", "0.3", "--wbits", "4", "--seed", seed]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]


def test_output_gets_umask_permissions(tmp_path):
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(DEMO), "-o", str(out), *FAST, "--no-quant"]) == 0
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize("case_id", ["pre-activation-bn", "zero-var-bn", "gamma-zero", "zero-filters", "external-data",
                                     "opset-11", "multi-output", "maxpool-on-path"])
def test_no_quant_without_pruning_is_exact_on_odd_models(case_id, tmp_path):
    """fold-bn and cleanup are exact on the odd-but-valid inputs too (max |Δ| <= 1e-4, relative to the output scale)."""
    case = next(c for c in CASES if c.id == case_id)
    src = case.argv(tmp_path)[1]
    out = tmp_path / "exact.onnx"
    assert main(["optimize", src, "-o", str(out), "--no-quant", "--no-measure", "-q"]) == 0
    x = np.random.default_rng(0).standard_normal((2, *_input_shape(src))).astype(np.float32)
    ref, got = run(src, x), run(str(out), x)
    assert np.abs(ref - got).max() <= 1e-4 * max(1.0, np.abs(ref).max())


def _input_shape(path: str) -> list[int]:
    dims = onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value for d in dims[1:]]


def test_numeric_edge_cases_give_finite_outputs(tmp_path):
    for case_id in ("zero-var-bn", "gamma-zero", "zero-filters", "huge-weights"):
        case = next(c for c in CASES if c.id == case_id)
        d = tmp_path / case_id
        d.mkdir()
        assert main(case.argv(d)) == 0
        y = run(str(d / "out.onnx"), np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32))
        assert np.isfinite(y).all(), case_id


def test_small_cnn_builder_is_valid():
    onnx.checker.check_model(small_cnn(opset=11), full_check=True)


def test_robustness_doc_lists_every_case():
    from conftest import ROOT

    doc = (ROOT / "docs" / "robustness.md").read_text()
    missing = [c.id for c in CASES if f"| `{c.id}` |" not in doc]
    assert not missing, f"regenerate docs/robustness.md (python tools/robustness_table.py docs/robustness.md): {missing}"
