"""The figures' glossary: which way is better, the change against the base and its verdict, the columns shown."""

from __future__ import annotations

import pytest

from vlalign.glossary import CORE, change, glossary, table_keys


def test_a_change_is_judged_by_the_paired_interval_and_the_figures_direction():
    names = glossary(["world"])
    base = {"chair_i": 0.20, "object_recall": 0.80, "mean_words": 40.0}
    model = {"chair_i": 0.15, "object_recall": 0.78, "mean_words": 44.0,
             "vs_base": {"chair_i": {"a": 0.20, "b": 0.15, "diff": -0.05, "interval": [-0.07, -0.03]},
                         "object_recall": {"a": 0.80, "b": 0.78, "diff": -0.02, "interval": [-0.05, 0.01]}}}
    fewer = change("chair_i", base, model, names)
    assert (fewer.verdict, fewer.direction, fewer.text, fewer.interval_text) == (
        "better", "better", "-5.0 pts (-25%)", "[-7.0, -3.0]")
    recall = change("object_recall", base, model, names)
    assert (recall.verdict, recall.direction) == ("within noise", "worse")  # lower, but the interval holds 0
    words = change("mean_words", base, model, names)  # no better way, no interval: a plain change
    assert (words.verdict, words.direction, words.text) == ("", "", "+4.0 (+10%)")
    assert change("pope_f1", base, model, names) is None  # the base has no such figure


def test_a_paired_comparison_on_fewer_items_gives_the_change_on_those_items():
    model = {"chair_i": 0.10, "vs_base": {"chair_i": {"a": 0.16, "b": 0.10, "diff": -0.06, "interval": [-0.09, 0.02]}}}
    c = change("chair_i", {"chair_i": 0.20}, model, CORE)  # best-of-N on a subset of the base's scenes
    assert c.base == pytest.approx(0.16) and c.diff == pytest.approx(-0.06) and c.verdict == "within noise"


def test_every_figure_the_demo_reports_is_defined_and_the_world_adds_its_own():
    from vlalign.world.demo import KEYS

    names = glossary(["world"])
    assert all(k in names and names[k].meaning for k in KEYS)
    assert "grounded_recall" in names and "grounded_recall" not in CORE
    assert names["chair_i"].better == "lower" and names["object_recall"].better == "higher"
    assert names["pope_yes_ratio"].better is None


def test_a_table_leads_with_the_hallucination_figure_its_benchmark_reports():
    assert table_keys(["mean_words", "pope_f1", "object_recall", "chair_s", "chair_i", "count_accuracy"]) == [
        "chair_i", "chair_s", "object_recall", "mean_words", "pope_f1"]
    assert table_keys(["yes_ratio", "accuracy", "precision", "recall", "f1"])[0] == "f1"  # POPE
    assert table_keys(["score_x", "score_y"]) == ["score_x", "score_y"]  # nothing known: as they come
