"""The landing rule of a --target-* search (dfc.prune.landing): the band, the verdicts and the bracketing aims."""

import pytest

from dfc.prune.landing import BAND, FAST, LANDED, SLOW, Landing, corrected_aim


def test_verdicts_use_the_measurement_margin():
    land = Landing(0.5)
    assert land.verdict(0.49) == LANDED and land.verdict(0.46) == LANDED
    assert land.verdict(0.49, margin=0.02) == SLOW  # meets the goal only by its noise
    assert land.verdict(0.44) == FAST and land.verdict(0.44, margin=0.02) == LANDED
    assert land.verdict(0.51) == SLOW


def test_aims_loosen_after_an_overshoot_and_tighten_after_a_miss():
    land = Landing(0.5)
    aim = land.first_aim(exact=False)
    assert BAND * 0.5 < aim < 0.5
    looser = land.next_aim(aim, predicted=aim, measured=0.3, margin=0.0)  # far below the band
    assert looser > aim
    tighter = land.next_aim(looser, predicted=looser, measured=0.6, margin=0.0)  # now above the goal
    assert aim < tighter < looser  # inside the bracket of the aims tried


def test_a_wild_miss_does_not_pin_the_search_and_it_converges():
    land = Landing(0.5)
    land.next_aim(0.4, predicted=0.4, measured=0.3, margin=0.0)  # fast at 0.4
    new = land.next_aim(0.45, predicted=0.45, measured=5.0, margin=0.0)  # slow at 0.45, a wild miss
    assert new == pytest.approx(0.4 + 0.1 * 0.05)  # the interpolation, kept off the fast side's edge
    land.next_aim(new, predicted=new, measured=0.3, margin=0.0)
    for _ in range(20):
        lo, hi = max(land.fast), min(land.slow)
        land.next_aim((lo + hi) / 2, predicted=0.0, measured=0.3, margin=0.0)
    assert land.converged()


@pytest.mark.parametrize("goal", [0.3, 0.6])
def test_the_search_lands_a_simulated_noisy_ratio(goal):
    """A result whose ratio is 1.3 × the aim (a cost model that under-predicts) lands within a few rounds."""
    land = Landing(goal)
    aim = land.first_aim(exact=False)
    for rounds in range(1, 7):
        measured = min(1.0, 1.3 * aim)
        if land.verdict(measured) == LANDED:
            break
        aim = land.next_aim(aim, aim, measured, 0.0)
    assert land.verdict(measured) == LANDED and rounds <= 3


def test_corrected_aim_takes_the_lower_of_ratio_and_offset():
    assert corrected_aim(0.5, 0.45, 0.6, 0.5) == pytest.approx(min(0.5 * 0.45 / 0.6, 0.5 - 0.15 * 1.05))


def test_merged_rounds_list_every_branch_removed():
    """A depth round that continues from an earlier round's result reports the branches of both: the report's count
    is the model's (ResNet-56 --target-latency 0.3 said 8 of 25 where the written model had lost 11)."""
    from dfc.prune.schedule import merge_stats

    first = {"removed": [{"add": "a"}, {"add": "b"}], "branches_removed": 2}
    later = {"removed": [{"add": "c"}], "branches_removed": 1}
    merged = merge_stats(first, later)
    assert [r["add"] for r in merged["removed"]] == ["a", "b", "c"] and merged["branches_removed"] == 3
    assert first["removed"] == [{"add": "a"}, {"add": "b"}]  # the earlier round's own record is untouched
    channels = merge_stats({"groups_removed": 4, "steps": 1}, {"groups_removed": 2, "steps": 1})
    assert channels["groups_removed"] == 6 and "removed" not in channels


def test_a_landing_far_below_the_middle_is_centred_once_and_the_nearer_result_kept():
    """Timing: a result at the band's floor gets one round that gives back toward the middle (ResNet-56 0.3: 0.271
    in the search, 0.259 measured again later); size: toward the goal itself."""
    land = Landing(0.3)
    land.next_aim(0.29, predicted=0.29, measured=0.302, margin=0.0)  # slow at aim 0.29
    aim = land.centring_aim(0.27, measured=0.271, margin=0.003, exact=False)
    assert aim is not None and 0.27 < aim < 0.29
    assert land.centring_aim(0.27, measured=0.28, margin=0.003, exact=False) is None  # near the middle already
    assert land.better((0.283, 0.003), (0.271, 0.003), exact=False)
    assert not land.better((0.299, 0.003), (0.283, 0.003), exact=False)
    size = Landing(0.25)
    assert size.centring_aim(0.24, measured=0.244, margin=0.0, exact=True) is None  # within a quarter band of 0.25
    assert size.centring_aim(0.22, measured=0.229, margin=0.0, exact=True) > 0.22
    assert size.better((0.249, 0.0), (0.235, 0.0), exact=True)
    land.slow.append(0.2705)  # no aim left between the landed aim and the tightest slow one
    assert land.centring_aim(0.27, measured=0.271, margin=0.0, exact=False) is None


def test_a_centring_round_that_rebuilds_the_landed_graph_counts_as_a_second_timing():
    import onnx

    from dfc.prune.target_search import AGAIN, _State, _measured_again, _same_graph

    model = onnx.ModelProto()
    land = Landing(0.3)
    landed = _State(model, None, aim=0.25, predicted=0.24, measured=0.266, margin=0.003, verdict=LANDED)
    again = _State(model, None, aim=0.26, predicted=0.24, measured=0.278, margin=0.004, verdict=LANDED)
    assert _same_graph(landed, again)
    _measured_again(landed, again, land)
    assert landed.measured == pytest.approx(0.272) and landed.margin == pytest.approx(0.006)
    assert landed.verdict == LANDED and again.verdict == AGAIN


def test_centring_gives_back_at_least_the_last_removal():
    """Coarse steps (whole branches): the ratio correction alone can stay below the prediction of the graph with one
    removal fewer, which rebuilds the same graph; the aim is raised to that prediction."""
    land = Landing(0.4)
    ratio_only = land.centring_aim(0.38, measured=0.353, margin=0.01, exact=False)
    assert ratio_only < 0.42
    assert land.centring_aim(0.38, measured=0.353, margin=0.01, exact=False, give_back=0.42) > 0.42


def test_a_fast_round_gives_back_at_least_the_last_removal():
    land = Landing(0.5)
    assert land.next_aim(0.475, predicted=0.475, measured=0.434, margin=0.0) < 0.738  # ratio correction alone
    assert land.next_aim(0.52, predicted=0.475, measured=0.434, margin=0.0, give_back=0.738) > 0.738


def test_a_target_channels_missed_is_met_by_the_depth_result_below_the_band():
    """PP-OCR --target-size 0.5: channels ran out of scope at 0.589x, two branches met it at 0.434x: the met result is
    written, the channel stage's report is set aside, and a note says why."""
    import onnx
    from onnx import helper

    from dfc.pipeline import Context
    from dfc.prune.target_search import FAST, SLOW, TargetSearch, _State

    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g",
                                                [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                                [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    fast = _State(model, Context(), {"removed": [{"add": "a"}, {"add": "b"}]}, 0.475, 0.475, 0.434, 0.0, FAST)
    slow = _State(model, Context(), {"removed": [{"add": "a"}]}, 0.738, 0.738, 0.717, 0.0, SLOW)
    search = object.__new__(TargetSearch)
    search.options = {"target": ("size", 0.5), "quant": None}
    search._meter = type("M", (), {"kind": "size", "cost": None})()
    rounds = [{"verdict": FAST}, {"verdict": SLOW, "kept": True}]
    search._depth_rounds = ([fast, slow], rounds)
    ctx = Context()
    res = {"target": {"met": False, "measured": 0.589}, "groups_removed": 80, "depth": {"removed": [{"add": "a"}]}}
    out = search._meet_below_band(None, ctx, res, {"groups_removed": 80})
    assert out is not None and res["target"]["measured"] == 0.434 and res["target"]["met"]
    assert "groups_removed" not in res and res["channels_discarded"]["groups_removed"] == 80
    assert [r["kept"] for r in rounds] == [True, False] and len(res["depth"]["removed"]) == 2
    assert any("below the band" in n for n in ctx.notes)
    res_met = {"target": {"met": True}}
    assert search._meet_below_band("g", ctx, res_met, {}) == "g"  # met by channels: nothing changes


def test_with_both_sides_known_the_next_aim_interpolates_their_measurements():
    """ResNet-20 --target-latency 0.3 on an Intel Xeon: 5 branches (predicted 0.277) measured 0.345, 7 (0.157) 0.204;
    the one-point correction of the fast result aimed 0.279 and rebuilt the 5-branch graph, the interpolation aims
    between them, where the 6-branch graph (predicted 0.217) lies."""
    land = Landing(0.3)
    land.next_aim(0.285, predicted=0.2766, measured=0.345, margin=0.0086)
    aim = land.next_aim(0.2042, predicted=0.157, measured=0.2037, margin=0.0063, give_back=0.2168)
    assert 0.2168 < aim < 0.2766
