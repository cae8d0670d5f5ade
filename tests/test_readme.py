"""The README's commands run as written: every `dfc` command parses with the real CLI, the set-up command runs on the
embedded demo model, and the Python snippets name only what dfc exports."""

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import dfc
from dfc.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def _dfc_commands() -> list[str]:
    cmds = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("dfc "):
                    cmds.append(part)
    return cmds


def test_readme_is_short():
    assert len(README.splitlines()) <= 300


def test_every_dfc_command_in_the_readme_parses():
    cmds = _dfc_commands()
    assert len(cmds) >= 8
    parser = build_parser(show_advanced=True)
    for cmd in cmds:
        try:
            parser.parse_args(shlex.split(cmd)[1:])
        except SystemExit as e:  # argparse's refusal
            pytest.fail(f"README command does not parse ({e.code}): {cmd}")


def test_set_up_command_runs_on_the_demo_model(tmp_path):
    setup = next(b for b in _blocks("bash") if "digits_cnn.onnx" in b).strip()
    steps = [s.strip() for s in setup.split("&&") if not s.strip().startswith("pip ")]
    for name in ("models", "tools"):
        os.symlink(ROOT / name, tmp_path / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for step in steps:
        argv = shlex.split(step)
        argv = [sys.executable, "-m", "dfc.cli", *argv[1:]] if argv[0] == "dfc" else [sys.executable, *argv[1:]]
        r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{step}: {r.stderr[-2000:]}"
    assert (tmp_path / "digits_w8a8.onnx").exists() and "agreement" in r.stdout


def test_python_snippets_use_what_dfc_exports():
    import dfc.api

    blocks = _blocks("python")
    assert blocks
    for block in blocks:
        tree = ast.parse(block)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "dfc":
                assert hasattr(dfc, node.attr), f"dfc.{node.attr} in the README does not exist"
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dfc"):
                mod = __import__(node.module, fromlist=[a.name for a in node.names])
                for a in node.names:
                    assert hasattr(mod, a.name), f"from {node.module} import {a.name}: no such name"
