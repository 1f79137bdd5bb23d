"""Failed items are asked again on a resume, also once the run has finished: a stage whose log holds
failures is not settled (`Stage.settled`), the last round of a finished run is entered again for them,
a stage made from others as a whole (the pairs) is made again when they changed, and an arm trains again
only when its pairs changed. Shown in the store, and on an RLAIF-V run whose `api:` labeler broke one
request the first time."""

from __future__ import annotations

import math

import pytest
from test_faults_labeler import scored
from test_faults_server import fault_servers

from vlalign import runner
from vlalign.config import load_config
from vlalign.data.records import FeedbackRecord
from vlalign.data.store import RunStore, Stage, batch_result, run_stage
from vlalign.plugins import METHODS

# ---------------------------------------------------------------- the store


def _numbers(stage: Stage, items, fail: set[int]):
    def process(batch):
        return batch_result([{"id": str(i), "x": i} for i in batch if i not in fail],
                            {k: RuntimeError(f"record {i}: down") for k, i in enumerate(batch) if i in fail})

    run_stage(stage, items, process, id_of=str, batch_size=4, quiet=True)
    return stage


def test_a_stage_with_failures_is_not_finished_until_they_succeed(tmp_path):
    store = RunStore(tmp_path)
    stage = _numbers(store.stage("round1/numbers"), range(6), fail={2, 5})
    assert stage.manifest["complete"] and stage.manifest["errors"] == 2
    assert not stage.settled and store.unfinished("round1") == ["round1/numbers"]
    assert store.unfinished("round2") == []
    before = stage.fingerprint()
    _numbers(stage, range(6), fail=set())
    assert stage.settled and store.unfinished("round1") == [] and stage.fingerprint() != before


def test_a_derived_stage_is_made_again_when_its_input_changed(tmp_path):
    store = RunStore(tmp_path)
    numbers = _numbers(store.stage("numbers"), range(6), fail={5})
    made = []

    def total(batch):
        made.append(batch)
        return [{"id": "total", "sum": sum(r["x"] for r in numbers.rows())}]

    def derive():
        out = store.stage("total")
        run_stage(out, ["all"], total, id_of=lambda _: "all", per_item_output=False, quiet=True,
                  derived_from=[numbers])
        return out

    assert derive().rows() == [{"id": "total", "sum": 10}]
    assert derive().rows() == [{"id": "total", "sum": 10}] and len(made) == 1  # unchanged input: kept
    _numbers(numbers, range(6), fail=set())  # the failed item is answered at last
    assert derive().rows() == [{"id": "total", "sum": 15}] and len(made) == 2, "made again, not kept stale"
    assert derive().manifest["inputs"] == {"numbers": numbers.fingerprint()}


# ---------------------------------------------------------------- a finished RLAIF-V run


def _chats(server) -> int:
    return sum(n for key, n in server.hits.items() if not key.startswith("GET "))


YES, NO, BROKEN = scored(-0.1, -2.5), scored(-2.5, -0.1), scored(float("nan"), -1.0)


def _config(labeler: str):
    return load_config(METHODS.get("rlaif-v").config, None, [
        "policy=world:base", "runtime.dtype=fp32", f"labeler={labeler}", "rounds=1", "prompts.source=world",
        "prompts.per_round=6", "samples=3", "decoding.max_new_tokens=24", "decoding.temperature=1.0",
        "splitter=world", "batch_size=12", "train.batch_size=4", "train.epochs=1", "train.optim.lr=1e-3",
        "train.optim.warmup_ratio=0", "report=false", "eval=[]", "eval_base=false",
        "api.concurrency=1", "api.max_retries=1"])


@pytest.mark.slow
def test_a_finished_run_asks_its_failed_labels_again(tmp_path, monkeypatch, capsys):
    """The labeler says no to squares and yes to the rest, but breaks every reply about a heart until it is
    fixed (then it says no to hearts too): the answers that name a heart fail, the run finishes without them;
    a resume while it is still broken asks again and changes nothing (no training); one after the fix labels
    them, their pairs join and the arm trains again; a last resume has nothing to ask."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    run = tmp_path / "run"
    feedback, pairs, arm = Stage(run / "round1" / "feedback"), Stage(run / "round1" / "pairs"), run / "round1" / "arm.json"

    def resume(server):
        capsys.readouterr()
        summary = runner.run(METHODS.get("rlaif-v"), _config(f"api:m@{server.url}"), run)
        return summary["rounds"][0], capsys.readouterr().err

    with fault_servers() as start:
        broken = start({"heart": [BROKEN], "square": [NO]}, default=[YES])
        first, _ = resume(broken)
        failed = {e["id"] for e in feedback.errors()}
        assert failed and feedback.manifest["errors"] == len(failed) and not feedback.settled
        assert feedback.manifest["labeler_usage"]["failures"] == broken.hits["heart"] // 2  # each tried twice
        assert not failed & {f.id for f in feedback.records(FeedbackRecord)}
        assert first["pairs_fingerprint"] == pairs.fingerprint()
        trained = arm.stat().st_mtime_ns

        still, err = resume(start({"heart": [BROKEN], "square": [NO]}, default=[YES]))
        assert "round 1: asking again for the items that failed in round1/feedback" in err
        assert {e["id"] for e in feedback.errors()} == failed and pairs.fingerprint() == first["pairs_fingerprint"]
        def same(record):  # each start serves the labeler on a new port, which the round's config records
            return {k: v for k, v in record.items() if k != "config"}

        assert arm.stat().st_mtime_ns == trained and same(still) == same(first), "nothing changed, so nothing trained again"

        fixed = start({"heart": [NO], "square": [NO]}, default=[YES])
        again, err = resume(fixed)
        assert "asking again" in err and feedback.settled and feedback.manifest["errors"] == 0
        labeled = {f.id: f for f in feedback.records(FeedbackRecord)}
        assert failed <= set(labeled), "every failed answer is labeled now"
        assert _chats(fixed) == sum(len(labeled[i].details["claims"]) for i in failed), "and only they were asked"
        assert all(not math.isnan(c["p_yes"]) for f in labeled.values() for c in f.details["claims"])
        assert pairs.manifest["inputs"]["round1/feedback"] == feedback.fingerprint()
        assert pairs.fingerprint() != first["pairs_fingerprint"], "answers naming a heart make pairs now"
        assert again["pairs_fingerprint"] == pairs.fingerprint() and arm.stat().st_mtime_ns != trained
        assert again["pairs"] > first["pairs"]

        last, err = resume(fixed)
        assert "asking again" not in err and _chats(fixed) == sum(len(labeled[i].details["claims"]) for i in failed)
        assert last == again
