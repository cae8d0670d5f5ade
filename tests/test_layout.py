"""The product's shape stays readable: few top-level modules, small modules, short functions (issue 31)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("dfc/**/*.py"), *ROOT.glob("passes/*.py")])


def test_top_level_has_at_most_12_modules():
    assert len(list((ROOT / "dfc").glob("*.py"))) <= 12


def test_no_module_over_450_lines():
    big = {str(p.relative_to(ROOT)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > 450}
    assert not big


def test_no_function_over_80_lines():
    long = []
    for p in SOURCES:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{p.relative_to(ROOT)}:{node.name}")
    assert not long
