"""`dfc batch` (many models, one set of options) serially and on a local Ray, and `dfc bench --ray`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import DEMO
from dfc.cli import main

FAST = ["--calib-samples", "32", "--inverter-steps", "10"]


def _zoo(tmp_path):
    """Two copies of the demo model and a truncated one."""
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    shutil.copy(DEMO, zoo / "a.onnx")
    shutil.copy(DEMO, zoo / "b.onnx")
    (zoo / "broken.onnx").write_bytes(DEMO.read_bytes()[:3000])
    return [str(zoo / n) for n in ("a.onnx", "broken.onnx", "b.onnx")]


def test_batch_serial_reports_a_failing_model_and_finishes_the_others(tmp_path, capsys):
    inputs = _zoo(tmp_path)
    before = [open(p, "rb").read() for p in inputs]
    out = tmp_path / "out"
    assert main(["batch", *inputs, "-o", str(out), "--wbits", "4", *FAST, "-q"]) == 2
    err = capsys.readouterr().err
    assert "1 of 3 model(s) failed" in err and "broken.onnx: not a valid ONNX model" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.onnx", "a.report.json", "b.onnx", "b.report.json",
                                                     "summary.json", "summary.md"]
    assert [open(p, "rb").read() for p in inputs] == before  # inputs never modified
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["input"].rsplit("/", 1)[1]: r for r in summary["models"]}
    assert list(rows) == ["a.onnx", "broken.onnx", "b.onnx"] and summary["failed"] == 1
    assert "not a valid ONNX model" in rows["broken.onnx"]["error"] and rows["broken.onnx"]["output"] is None
    for name in ("a.onnx", "b.onnx"):
        r = rows[name]
        assert 0.9 <= r["agreement"] <= 1.0 and r["latency_ratio"] > 0 and r["size_ratio"] < 0.5
        report = json.loads((out / name.replace(".onnx", ".report.json")).read_text())
        assert report["options"]["wbits"] == 4 and report["after"]["size_bytes"] == (out / name).stat().st_size
    assert (out / "a.onnx").read_bytes() == (out / "b.onnx").read_bytes()  # same model, same options: same output
    md = (out / "summary.md").read_text()
    assert "2 of 3 model(s) compressed" in md and "| failed: " in md


def test_batch_refuses_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(DEMO, other / DEMO.name)
    assert main(["batch", str(DEMO), str(other / DEMO.name), "-o", str(out)]) == 2
    assert "would both be written to" in capsys.readouterr().err
    assert main(["batch", str(DEMO), "-o", str(out), "--save-calib", str(tmp_path / "c.npz")]) == 2
    assert "--save-calib does not apply to dfc batch" in capsys.readouterr().err
    assert main(["batch", str(DEMO), "-o", str(out), "--prune", "1.5"]) == 2
    assert "--prune must be a ratio" in capsys.readouterr().err
    assert not out.exists()


def test_ray_missing_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert main(["batch", str(DEMO), "-o", str(tmp_path / "out"), "--ray", "auto"]) == 2
    err = capsys.readouterr().err
    assert "--ray needs Ray" in err and ".[distributed]" in err
    assert main(["bench", "--out", str(tmp_path / "b"), "--ray", "auto", "--shared", str(tmp_path)]) == 2
    assert "--ray needs Ray" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_serial_paths_do_not_import_ray(tmp_path):
    code = ("import sys; from dfc.cli import main; "
            f"rc = main(['batch', {str(DEMO)!r}, '-o', {str(tmp_path / 'o')!r}, '--no-measure', '-q', *{FAST!r}]); "
            "assert rc == 0, rc; assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is the extra dfc[distributed] (installed by the test extra)")
    import logging

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


def test_batch_on_ray_gives_the_serial_bytes(tmp_path, local_ray, capsys):
    inputs = _zoo(tmp_path)
    serial, on_ray = tmp_path / "serial", tmp_path / "ray"
    assert main(["batch", *inputs, "-o", str(serial), "-q", *FAST]) == 2
    quantized = tmp_path / "zoo" / "quantized.onnx"  # reads fine, refused inside its task: already quantized
    shutil.copy(serial / "a.onnx", quantized)
    assert main(["batch", *inputs, str(quantized), "-o", str(on_ray), "--ray", "auto", *FAST]) == 2
    out = capsys.readouterr()
    assert "2 of 4 model(s) failed" in out.err and "tasks of 2 CPUs on Ray (auto)" in out.out
    for name in ("a.onnx", "b.onnx"):
        assert (on_ray / name).read_bytes() == (serial / name).read_bytes()
    summary = json.loads((on_ray / "summary.json").read_text())
    assert summary["runner"].startswith("Ray (auto): 1 node(s), 2 CPUs") and summary["failed"] == 2
    refused = [r for r in summary["models"] if r["input"].endswith("quantized.onnx")][0]
    assert "already quantized" in refused["error"] and not refused["internal"] and " pid " in refused["ran_on"]
    assert not (on_ray / "quantized.onnx").exists()
    pids = {r["ran_on"] for r in summary["models"] if "error" not in r}
    assert pids and all(p.split(" pid ")[1] != str(__import__("os").getpid()) for p in pids)  # in Ray workers
    assert local_ray.is_initialized()  # the caller's Ray session is left as it was


def test_bench_on_ray_gives_the_serial_rows(tmp_path, digits_bench_spec, local_ray):
    from dfc.bench import Settings, run
    from dfc.bench.matrix import select

    spec = digits_bench_spec
    configs = select("ort-u8-gaussian,ort-s8-real,w8a8-gaussian-p0-udfc,w4a4-bns-p0-udfc,float-p0.3inner-udfc,"
                     "w6a6-bns-p0.3inner-udfc", quick=False)
    results = {}
    for mode in ("serial", "ray"):
        settings = Settings(out=tmp_path / mode, latency_batch=8, latency_rounds=2, calib_samples=32, inverter_steps=10,
                            plots=False)
        results[mode] = run([spec], configs, settings, command="test", ray_address="auto" if mode == "ray" else None)
    serial, on_ray = ({r["config"]: r for r in results[m]["rows"]} for m in ("serial", "ray"))
    assert list(on_ray) == list(serial) == [c.name for c in configs]  # the matrix's order, whatever finished first
    for name, row in serial.items():
        assert not row.get("error") and not on_ray[name].get("error")
        for key in ("top1", "agreement", "mean_kl", "weight_params", "weight_bytes", "size_bytes", "macs"):
            assert on_ray[name][key] == row[key], (name, key)
        assert on_ray[name]["latency_ratio"] > 0
    assert results["ray"]["runner"].startswith("Ray (auto)") and results["serial"]["runner"] == "serial"
    assert all(" pid " in r["ran_on"] for r in on_ray.values())
    md = (tmp_path / "ray" / "results.md").read_text()
    assert "Rows ran: Ray (auto)" in md and "## digits" in md
    assert results["ray"]["models"]["digits"]["setup_seconds"] > 0
