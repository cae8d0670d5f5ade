import numpy as np
import onnx_graphsurgeon as gs
import pytest

from conftest import conv_bn_relu_cnn, rand, run
from dfc.graph.bn_stats import METADATA_KEY, BNStatsStore
from dfc.errors import DfcError
from dfc.pipeline import PASS_REGISTRY, Pass, PassManager, context_from_model, get_pass


def test_registry_knows_builtin_passes_and_rejects_unknown():
    get_pass("cleanup")
    assert {"cleanup", "fold-bn", "quantize"} <= set(PASS_REGISTRY)
    with pytest.raises(DfcError, match="unknown pass 'nope'"):
        get_pass("nope")
    with pytest.raises(DfcError, match="unknown option"):
        get_pass("quantize", bogus=1)


class _BreakGraph(Pass):
    name = "test-break"

    def run(self, graph, ctx):
        conv = [n for n in graph.nodes if n.op == "Conv"][0]
        conv.inputs[1] = gs.Constant("bad_w", np.zeros((8, 5, 3, 3), np.float32))  # wrong Cin
        return graph


def test_debug_mode_names_the_pass_that_broke_the_model():
    with pytest.raises(DfcError, match="after pass 'test-break'"):
        PassManager(["cleanup", _BreakGraph()], debug=True).run(conv_bn_relu_cnn())


def test_custom_pipeline_and_bn_stats_roundtrip_through_metadata():
    m = conv_bn_relu_cnn()
    folded = PassManager(["cleanup", "fold-bn"]).run(m)
    meta = {p.key: p.value for p in folded.metadata_props}
    # the metadata key is the file format: models written by earlier dfc versions carry it too
    assert METADATA_KEY == "dfc.bn_stats" and METADATA_KEY in meta
    store = BNStatsStore.from_metadata(meta[METADATA_KEY])
    assert set(store) == {"b1", "b2"}
    assert store["b1"].channels == 8
    np.testing.assert_allclose(store["b1"].gamma, [v for v in _init(m, "bn1_g")], rtol=1e-6)
    # a second run on the folded output finds the statistics again
    ctx = context_from_model(folded)
    assert ctx.bn_stats_found and set(ctx.bn_stats) == {"b1", "b2"}
    again = PassManager(["cleanup", "fold-bn"]).run(folded, ctx)
    x = rand((2, 3, 8, 8))
    np.testing.assert_allclose(run(again, x), run(m, x), atol=1e-4)
    assert ctx.notes == []  # no "statistics not found" fallback


def test_bn_stats_metadata_is_exact_compact_and_reads_the_older_list_form():
    import json

    from dfc.graph.bn_stats import BNStats

    rng = np.random.default_rng(0)
    a = lambda: rng.standard_normal(64).astype(np.float32)  # noqa: E731
    store = BNStatsStore(t=BNStats(a(), np.abs(a()), a(), a(), 1e-3, "bn"))
    text = store.to_metadata()
    back = BNStatsStore.from_metadata(text)["t"]
    for k in ("mean", "var", "gamma", "beta"):
        assert np.array_equal(getattr(back, k), getattr(store["t"], k))  # bit-exact float32
    older = json.dumps({"t": {k: getattr(store["t"], k).tolist() for k in ("mean", "var", "gamma", "beta")}
                        | {"eps": 1e-3, "source": "bn"}})
    assert len(text) < 0.4 * len(older)
    old = BNStatsStore.from_metadata(older)["t"]  # a model written by an earlier dfc version
    assert np.array_equal(old.var, store["t"].var) and old.eps == 1e-3 and old.source == "bn"


def _init(m, name):
    from onnx import numpy_helper

    return numpy_helper.to_array([i for i in m.graph.initializer if i.name == name][0])
