"""The benchmark suite (dfc.bench): configuration names, shared calibration sets, and a small end-to-end run on the
embedded digits model (the CIFAR runs are tools, not timed tests)."""

from __future__ import annotations

import json

import pytest

from conftest import DEMO
from dfc.bench.matrix import full_matrix, parse_config, select
from dfc.errors import DfcError

FAST = {"calib_samples": 32, "inverter_steps": 10}


def test_full_matrix_is_the_issue_matrix():
    names = full_matrix()
    assert len(names) == len(set(names)) == 1 + 4 + 4 + 4 * 3 * 3 * 2 + 4 + 4  # + the target and fine-tuned rows
    for n in names:
        assert parse_config(n).name == n
    assert {parse_config(n).kind for n in names} == {"reference", "ort", "dfc"}


def test_target_rows_prune_to_a_target():
    c = parse_config("w8a8-bns-tlat0.3-udfc")
    assert c.target == ("target_latency", 0.3) and c.dfc_options()["target_latency"] == 0.3 and c.prune == 0.0
    assert parse_config("float-tsize0.25-none").dfc_options()["target_size"] == 0.25


def test_finetuned_rows_train_with_their_method():
    c = parse_config("w8a8-bns-tlat0.3-udfc-kd")
    assert c.finetune == "kd" and c.dfc_options()["finetune"] == "kd" and c.dfc_options()["target_latency"] == 0.3
    assert parse_config("w4a8-bns-p0-udfc-blocks").dfc_options()["finetune"] == "blocks"
    assert "finetune" not in parse_config("w4a8-bns-p0-udfc").dfc_options()
    with pytest.raises(DfcError, match="--configs"):
        parse_config("w4a8-bns-p0-udfc-sgd")


def test_config_options():
    c = parse_config("w4a4-bns-p0.3inner-udfc")
    assert (c.wbits, c.abits, c.calib, c.prune, c.scope) == (4, 4, "bns", 0.3, "inner")
    assert c.dfc_options() == {"prune": 0.3, "prune_scope": "inner", "compensate": "udfc", "wbits": 4, "abits": 4,
                               "first_last_bits": 8}
    plain = parse_config("float-p0.5all-none").dfc_options()
    assert plain["criterion"] == "l1-prebn" and plain["compensate"] == "none" and plain["no_quant"]
    ort = parse_config("ort-s8-real")
    assert (ort.kind, ort.activations, ort.calib) == ("ort", "int8", "real")


@pytest.mark.parametrize("bad", ["w9a8-bns-p0-udfc", "w4a4-bns-p0.3-udfc", "ort-u16-gaussian", "resnet"])
def test_bad_config_names_are_refused(bad):
    with pytest.raises(DfcError, match="--configs"):
        parse_config(bad)


def test_select_patterns_keep_fp32_first():
    picked = [c.name for c in select("w4a4-bns-*,ort-*", quick=False)]
    assert picked[0] == "fp32" and len(picked) == 1 + 6 + 1 + 4  # w4a4-bns-*: 6 matrix rows and the kd row
    with pytest.raises(DfcError, match="matches no configuration"):
        select("w3a3-*", quick=False)


def test_shared_calibration_set_gives_the_same_model_as_optimize():
    """The bench synthesizes once and passes calib_data=; that must be exactly what `optimize` does itself."""
    from dfc.api import calibration_set, optimize

    for calib in ("bns", "gaussian"):
        x, info = calibration_set(str(DEMO), calib=calib, **FAST)
        assert info["method"] == calib and len(x) == FAST["calib_samples"]
        own = optimize(str(DEMO), calib=calib, wbits=4, abits=8, **FAST)
        shared = optimize(str(DEMO), calib_data=x, wbits=4, abits=8, **FAST)
        assert own.graph.SerializeToString() == shared.graph.SerializeToString()  # metadata names the source


def test_bench_run_on_the_digits_model(tmp_path, digits_bench_spec):
    from dfc.bench import Settings, run

    spec = digits_bench_spec
    configs = select("ort-u8-gaussian,ort-s8-real,w8a8-gaussian-p0-udfc,w4a4-bns-p0-udfc,float-p0.3inner-none,"
                     "float-p0.3inner-udfc", quick=False)
    out = tmp_path / "bench"
    settings = Settings(out=out, latency_batch=8, latency_rounds=2, calib_samples=32, inverter_steps=10)
    results = run([spec], configs, settings, command="test")

    saved = json.loads((out / "results.json").read_text())
    rows = {r["config"]: r for r in saved["rows"]}
    assert set(rows) == {c.name for c in configs}
    assert not [r for r in rows.values() if r.get("error")]
    for r in rows.values():
        assert 0.0 <= r["top1"] <= 1.0 and 0.0 <= r["agreement"] <= 1.0 and r["latency_ratio"] > 0
    fp32 = rows["fp32"]
    assert fp32["top1"] > 0.9 and fp32["agreement"] == 1.0
    assert rows["ort-u8-gaussian"]["kind"] == "ort" and rows["ort-u8-gaussian"]["top1"] > 0.8
    assert rows["w8a8-gaussian-p0-udfc"]["agreement"] > 0.9
    assert rows["float-p0.3inner-udfc"]["weight_params"] < fp32["weight_params"]
    assert rows["float-p0.3inner-udfc"]["macs"] < fp32["macs"]
    # nominal weight size: 4-bit body, 8-bit first/last, against 32-bit floats
    assert rows["w4a4-bns-p0-udfc"]["weight_bytes"] < fp32["weight_bytes"] / 4
    assert rows["w4a4-bns-p0-udfc"]["calib_seconds"] > 0
    md = (out / "results.md").read_text()
    assert "| `ort-s8-real` |" in md and "## digits" in md
    for png in ("top1_vs_weight_size.png", "top1_vs_latency.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["finished"]


def test_bench_summarize_prints_the_readme_tables(tmp_path, capsys):
    from dfc.cli import main

    rows = [{"model": "m", "config": c, "kind": k, "precision": "W8A8", "calib": "gaussian", "prune": 0.0, "scope": None,
             "compensate": None, "activations": "uint8", "top1": t, "agreement": 0.99, "weight_params": 10,
             "weight_bytes": 10, "size_bytes": 100, "macs": 1e6, "latency_ratio": 0.5, "seconds": 1.0}
            for c, k, t in (("fp32", "reference", 0.9), ("ort-u8-gaussian", "ort", 0.85), ("w4a4-bns-p0-none", "dfc", 0.8))]
    (tmp_path / "r.json").write_text(json.dumps({"models": {"m": {}}, "rows": rows}))
    assert main(["bench", "--summarize", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "**m**" in out and "| `ort-u8-gaussian` |" in out and "| 85.00 | -5.00 |" in out
    assert "w4a4-bns-p0-none" in out


def test_bench_cli_errors(tmp_path, capsys):
    from dfc.cli import main

    assert main(["bench", "--out", str(tmp_path / "o"), "--configs", "nope"]) == 2
    assert "unknown configuration 'nope'" in capsys.readouterr().err
    assert main(["bench", "--out", str(tmp_path / "o"), "--models", "resnet99"]) == 2
    assert "--models: unknown model 'resnet99'" in capsys.readouterr().err
    assert main(["bench", "--out", str(tmp_path / "o"), "--shared", str(tmp_path / "none")]) == 2
    assert "missing" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
