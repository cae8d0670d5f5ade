"""The options schema is the one source of the CLI flags, the API keywords, the defaults, the checks and the docs."""

import dataclasses
import inspect
import pathlib

import pytest

from dfc import api
from dfc.cli import build_parser, main
from dfc.errors import DfcError
from dfc.options import all_options, resolve
from dfc.options import stages
from dfc.options.reference import markdown
from dfc.options.resolve import defaults
from dfc.options.schema import opt

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMAND_OWN = {"help", "help_all", "input", "inputs", "output", "output_dir", "force", "report", "quiet", "ray"}


def _optimize_parser(show_advanced=False):
    sub = next(a for a in build_parser(show_advanced)._actions if a.dest == "command")
    return sub.choices["optimize"]


def _dests(parser):
    return {a.dest for a in parser._actions} - COMMAND_OWN


def test_cli_api_and_defaults_list_the_same_options():
    names = {o.name for o in all_options()}
    assert _dests(_optimize_parser()) == names
    assert set(defaults()) == names
    keywords = set(inspect.signature(api.optimize).parameters) - {"model_or_path"}
    assert keywords == names == set(inspect.signature(api.optimize_with_report).parameters) - {"model_or_path"}
    for o in all_options():
        assert o.flag in markdown() and o.name in (api.optimize.__doc__ or "")


def test_an_option_added_to_a_stage_shows_up_everywhere(monkeypatch):
    @dataclasses.dataclass
    class Extra:
        title = "extra"
        shiny: int = opt(3, "a new knob", rule="int_ge_1", cli=int)

    monkeypatch.setattr(stages, "STAGES", stages.STAGES + (Extra,))
    assert "shiny" in _dests(_optimize_parser())
    assert defaults()["shiny"] == 3 and "`--shiny`" in markdown()
    assert resolve({"shiny": 5})["shiny"] == 5
    with pytest.raises(DfcError, match="--shiny must be an integer >= 1, got 0"):
        resolve({"shiny": 0})
    fn = api.with_option_keywords(lambda model_or_path, **options: None)
    assert "shiny" in inspect.signature(fn).parameters


def test_docs_option_reference_is_current():
    assert (ROOT / "docs" / "options.md").read_text() == markdown(), "regenerate: python -m dfc.options > docs/options.md"


def test_help_shows_at_most_25_options_and_help_all_shows_every_one(capsys):
    assert main(["optimize", "--help"]) == 0
    short = capsys.readouterr().out
    shown = [line for line in short.splitlines() if line.startswith("  -")]
    assert len(shown) <= 25
    assert "--inverter-lr" not in short and "--help-all" in short
    assert main(["optimize", "--help-all"]) == 0
    full = capsys.readouterr().out
    assert all(o.flag in full for o in all_options()) and "--prune-global" in full


@pytest.mark.parametrize("options, cli", [
    ({"prune_step": 0}, ["--prune-step", "0"]),
    ({"finetune_lr": 1e-3}, ["--finetune-lr", "0.001"]),
    ({"no_quant": True, "wbits": 4}, ["--no-quant", "--wbits", "4"]),
    ({"prune_scope": "half"}, ["--prune-scope", "half"]),
])
def test_api_and_cli_refuse_with_the_same_words(options, cli, capsys, tmp_path):
    with pytest.raises(DfcError) as err:
        resolve(options)
    rc = main(["optimize", str(ROOT / "models" / "digits_cnn.onnx"), "-o", str(tmp_path / "o.onnx"), "-q", *cli])
    assert rc == 2
    out = capsys.readouterr().err
    assert str(err.value) in out or "invalid choice" in out  # argparse refuses unknown choices itself


def test_prune_global_alias_is_prune_rank_global():
    assert resolve({"prune_global": True})["prune_rank"] == "global"
    args = _optimize_parser().parse_args(["m.onnx", "-o", "o.onnx", "--prune-global"])
    assert args.prune_rank == "global"
