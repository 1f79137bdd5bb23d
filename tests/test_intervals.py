"""Intervals and paired tests: the bootstrap's properties, McNemar's exact test and the verdict worked out by
hand, and the comparison of two evaluations of the same items."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from vlalign.evaluate.intervals import (
    Outcomes,
    compare,
    figures,
    mcnemar,
    read_outcomes,
    replicates,
    statistic,
    summarize,
    verdict,
    write_outcomes,
)


@statistic("test-mean")
def mean_statistic(sums, params):
    return {"accuracy": sums["right"] / sums["n"]}


@statistic("test-strata")
def strata_statistic(sums, params):
    return {"a_share": sums["a"] / sums["n"]}


def yes_no(right: list[int], name: str = "test-mean") -> Outcomes:
    rows = [(f"q{i}", {"n": 1, "right": r}) for i, r in enumerate(right)]
    return Outcomes.from_rows(name, "question", rows, binary={"accuracy": ("right", None)})


def test_figures_are_the_statistic_of_all_rows():
    assert figures(yes_no([1, 1, 0, 1])) == {"accuracy": 0.75}


def test_interval_of_a_constant_is_the_constant_and_draws_are_seeded():
    m = summarize(yes_no([1] * 30))
    assert m["accuracy"] == 1.0 and m["intervals"]["accuracy"] == [1.0, 1.0]
    assert m["bootstrap"] == {"unit": "question", "units": 30, "resamples": 1000, "level": 0.95, "seed": 0}
    o = yes_no([1, 0] * 20)
    assert summarize(o)["intervals"] == summarize(o)["intervals"]
    assert np.array_equal(replicates([o])[0]["accuracy"], replicates([o])[0]["accuracy"])
    assert not np.array_equal(replicates([o], seed=1)[0]["accuracy"], replicates([o])[0]["accuracy"])


def test_interval_width_matches_the_binomial_one():
    # 1,000 questions, 700 right: the normal approximation gives 0.7 +- 1.96 * sqrt(0.21 / 1000) = +- 0.0284;
    # the percentile bootstrap of the same mean is within a fifth of that width
    m = summarize(yes_no([1] * 700 + [0] * 300))
    lo, hi = m["intervals"]["accuracy"]
    half = 1.96 * math.sqrt(0.7 * 0.3 / 1000)
    assert lo < 0.7 < hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.2)


def test_strata_keep_their_sizes():
    # 3 rows of stratum a, 7 of b: every replicate draws 3 and 7 again, so the share of a never moves
    rows = [(f"r{i}", {"n": 1, "a": int(i < 3)}) for i in range(10)]
    o = Outcomes.from_rows("test-strata", "row", rows, ["a"] * 3 + ["b"] * 7)
    assert set(replicates([o], 200)[0]["a_share"]) == {0.3}
    plain = Outcomes.from_rows("test-strata", "row", rows)
    assert len(set(replicates([plain], 200)[0]["a_share"])) > 1


@pytest.mark.parametrize("a, b, p", [
    ([1, 0, 0, 0, 0, 0, 0], [0, 1, 1, 1, 1, 1, 0], 2 * (1 + 6) / 2 ** 6),  # 1 against 5 discordant
    ([0] * 6, [1] * 6, 2 / 2 ** 6),  # 0 against 6
    ([1, 0, 1], [1, 0, 1], 1.0),  # none discordant
    ([1, 0], [0, 1], 1.0),  # 1 against 1: min(1, 2 * 3/4)
])
def test_mcnemar_exact_by_hand(a, b, p):
    assert mcnemar(np.array(a), np.array(b)) == pytest.approx(p)


def test_compare_pairs_items_and_tests_the_difference():
    # 20 questions: A right on the first 10, B on the first 15; B also answered 2 questions A did not
    a = yes_no([1] * 10 + [0] * 10)
    b_rows = [(f"q{i}", {"n": 1, "right": int(i < 15)}) for i in range(22)]
    b = Outcomes.from_rows("test-mean", "question", b_rows, binary={"accuracy": ("right", None)})
    d = compare(a, b)["accuracy"]
    assert (d.a, d.b, d.diff) == (0.5, 0.75, 0.25)
    # B is never wrong where A is right: no replicate difference is below 0, so the interval starts at 0
    # or above, and the bootstrap p is twice the share of replicates with no discordant question drawn
    assert d.interval[0] >= 0 and d.interval[1] <= 0.5
    assert d.p < 0.05
    assert d.mcnemar_p == pytest.approx(2 / 2 ** 5)  # 0 against 5 discordant
    same = compare(a, a)["accuracy"]
    assert (same.diff, same.interval, same.p, same.mcnemar_p) == (0.0, (0.0, 0.0), 1.0, 1.0)
    other = Outcomes.from_rows("test-mean", "question", [("x", {"n": 1, "right": 1})])
    with pytest.raises(ValueError, match="share no question"):
        compare(a, other)
    with pytest.raises(ValueError, match="cannot pair a test-mean evaluation with a test-strata one"):
        compare(a, Outcomes.from_rows("test-strata", "row", [("q0", {"n": 1, "a": 1})]))


@pytest.mark.parametrize("base, run, interval, bar, higher, expected", [
    (0.862, 0.859, (-0.010, 0.004), 0.862, True, "not distinguishable"),  # recall >= base, within noise
    (0.709, 0.690, (-0.027, -0.011), 0.709, True, "missed"),  # the whole interval below the bar
    (0.709, 0.705, (-0.008, 0.001), 0.709, True, "not distinguishable"),
    (0.190, 0.035, (-0.165, -0.145), 0.0475, False, "met"),  # CHAIR_i cut >= 75%: run <= 0.25 * base
    (0.190, 0.050, (-0.150, -0.130), 0.0475, False, "not distinguishable"),  # the bar asks <= -0.1425
    (0.190, 0.060, (-0.140, -0.120), 0.0475, False, "missed"),
])
def test_verdict_by_hand(base, run, interval, bar, higher, expected):
    assert verdict(base, run, interval, bar, higher) == expected


def test_outcomes_round_trip(tmp_path):
    o = Outcomes.from_rows("test-strata", "row", [("a", {"n": 1, "a": 1}), ("b", {"n": 1, "a": 0.5})], ["x", "y"],
                           params={"k": [1]}, binary={"a_share": ("a", None)})
    write_outcomes(tmp_path / "o.json", o)
    back = read_outcomes(tmp_path / "o.json")
    assert (back.ids, back.strata, dict(back.params), dict(back.binary)) == (o.ids, o.strata, {"k": [1]},
                                                                              {"a_share": ("a", None)})
    assert {k: list(v) for k, v in back.columns.items()} == {"n": [1.0, 1.0], "a": [1.0, 0.5]}
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match=re.escape("is not a vlalign outcomes file")):
        read_outcomes(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="repeat a row id"):
        Outcomes.from_rows("test-strata", "row", [("a", {"n": 1}), ("a", {"n": 1})])
