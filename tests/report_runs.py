"""Small run directories written by hand, laid out as the runner lays them out, for the report's tests:
a collection (as `vlalign demo` makes) of an RLAIF-V, a Silkie and a POVID run on two world scenes, each
answer's mistakes known (a red heart where the heart is yellow, a star that is not there)."""

from __future__ import annotations

import json
from pathlib import Path

from vlalign.data.records import FeedbackRecord, PairRecord, PromptRecord, ResponseRecord
from vlalign.data.store import RunStore
from vlalign.world.render import render
from vlalign.world.scene import Obj, Scene

SCENES = [Scene((Obj("triangle", "blue", "small", 1, 0), Obj("heart", "yellow", "small", 0, 1)), 0, "prompts"),
          Scene((Obj("circle", "red", "big", 2, 2),), 1, "prompts")]
GOOD = ["there is a blue triangle. there is a yellow heart.", "there is a big red circle."]
BAD = ["there is a blue triangle. there is a red heart and a green star.", "a red circle and a red square."]
SOURCES = ["world/describe", "world/exist"]
METRICS = {"chair_i": 0.2, "chair_s": 0.5, "object_recall": 0.8, "pope_accuracy": 0.7, "pope_f1": 0.71,
           "pope_yes_ratio": 0.5, "refusal_rate": 0.0, "mean_words": 40.0}
SECRET = "sk-do-not-show-me"


def _metrics(scale: float) -> dict:
    return {k: v * scale for k, v in METRICS.items()}


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _stage(store: RunStore, name: str, rows: list[dict], model: str | None = None):
    stage = store.stage(name)
    stage.write_shard(rows)
    if model:
        stage.write_manifest(model=model)
    stage.mark_complete()
    return stage


def prompts(store: RunStore, name: str = "round1/prompts") -> list[PromptRecord]:
    records = [PromptRecord(f"world-prompts-{i}", store.images.put(render(s, 48)), "describe the image.",
                            reference=GOOD[i], source=SOURCES[i], meta={"scene": s.to_dict()})
               for i, s in enumerate(SCENES)]
    _stage(store, name, [r.to_row() for r in records])
    return records


def responses(store: RunStore, records: list[PromptRecord], models: list[str], name: str) -> None:
    rows = [ResponseRecord(f"{p.id}/{m}", p.id, p.image, p.instruction, text, model=m).to_row()
            for p in records for m, text in zip(models, (GOOD[int(p.id[-1])], BAD[int(p.id[-1])]), strict=True)]
    _stage(store, name, rows, model=models[0])


def arm(store: RunStore, folder: str, name: str, pairs: int, scale: float) -> dict:
    record = {"arm": name, "pairs": pairs, "checkpoint": str(store.root / folder / "policy"), "final_loss": 0.5,
              "final_reward_accuracy": 0.9, "eval": {"world": _metrics(scale)}}
    history = [{"step": s, "lr": 1e-4 / s, "loss": 1.0 / s, "reward_margin": 0.3 * s, "reward_accuracy": 0.5 + 0.1 * s,
                "loss_nll": 0.4} for s in (1, 2, 3)]
    _write(store.root / folder / "training" / "train_history.json", {"config": {}, "n_pairs": pairs, "history": history})
    _write(store.root / folder / "arm.json", record)
    return record


def pair(p: PromptRecord, chosen: str, rejected: str, method: str, scores=(None, None), **meta) -> dict:
    return PairRecord(f"{method}-{p.id}", p.id, p.image, p.instruction, chosen, rejected, scores[0], scores[1],
                      method, meta).to_row()


def summary(store: RunStore, method: str, rounds: list[dict], config: dict) -> None:
    _write(store.root / "summary.json", {"method": method, "policy": "world:base", "rounds": rounds, "seconds": 12.5,
                                         "final": str(store.root / f"round{len(rounds)}" / "policy"),
                                         "config": {"policy": "world:base", "api_key": SECRET, **config}})


def claimed(store: RunStore, method: str) -> RunStore:
    marker = store.root / "run.json"
    _write(marker, {**json.loads(marker.read_text()), "method": method})
    return store


def rlaif_v_run(root: Path) -> Path:
    store = claimed(RunStore(root), "rlaif-v")
    records = prompts(store)
    responses(store, records, ["policy@round1", "bad"], "round1/responses")
    feedback = []
    for p in records:
        for m, text in (("policy@round1", GOOD[int(p.id[-1])]), ("bad", BAD[int(p.id[-1])])):
            wrong = text in BAD
            claims = [{"claim": "there is a red heart.", "question": "is there a red heart in the image?",
                       "p_yes": 0.02 if wrong else 0.95, "rejected": wrong, "holds_if_yes": True}]
            feedback.append(FeedbackRecord(f"{p.id}/{m}", f"{p.id}/{m}", p.id, -float(wrong),
                                           {"claims": claims}).to_row())
    stage = _stage(store, "round1/feedback", feedback, model="world:labeler")
    stage.log_error("world-prompts-9/s0", ValueError("the labeler's answer could not be read"))
    stage.mark_complete()
    _stage(store, "round1/pairs", [pair(p, GOOD[i], BAD[i], "rlaif_v", (0.0, -2.0 + i), chosen_id=f"{p.id}/policy@round1",
                                        rejected_id=f"{p.id}/bad", chosen_model="policy@round1", rejected_model="bad")
                                   for i, p in enumerate(records)])
    record = {"round": 1, "arms": {"policy": arm(store, "round1", "policy", 2, 0.5)}}
    summary(store, "rlaif-v", [record], {"labeler": "world:labeler", "train": {"report_to": "none"}})
    return root


def silkie_run(root: Path) -> Path:
    store = claimed(RunStore(root), "silkie")
    records = prompts(store)
    models = ["world:base", "world:small"]
    responses(store, records, models, "round1/responses")
    ratings = {m: ({"Helpfulness": 5, "Visual Faithfulness": 5 - 3 * k, "Ethical Considerations": 5},
                   {"Helpfulness": "complete.", "Visual Faithfulness": "names a star that is absent." if k else "faithful.",
                    "Ethical Considerations": "safe."}) for k, m in enumerate(models)}
    feedback = [FeedbackRecord(f"{p.id}/{m}", f"{p.id}/{m}", p.id, sum(ratings[m][0].values()) / 3,
                               {"ratings": ratings[m][0], "rationales": ratings[m][1]}).to_row()
                for p in records for m in models]
    _stage(store, "round1/feedback", feedback, model="world:judge")
    _stage(store, "round1/longest/feedback", [{**f, "details": "{}", "score": 1.0} for f in feedback])
    for folder, method in (("round1", "silkie"), ("round1/longest", "longest")):
        _stage(store, f"{folder}/pairs", [pair(p, GOOD[i], BAD[i], method, (5.0, 4.0), chosen_id=f"{p.id}/world:base",
                                               rejected_id=f"{p.id}/world:small", chosen_model="world:base",
                                               rejected_model="world:small") for i, p in enumerate(records)])
    arms = {"policy": arm(store, "round1", "policy", 2, 0.7), "longest": arm(store, "round1/longest", "longest", 2, 1.1)}
    summary(store, "silkie", [{"round": 1, "arms": arms, **arms["policy"]}], {"judge": "world:judge",
                                                                               "pool": [{"model": m} for m in models]})
    return root


def povid_run(root: Path) -> Path:
    store = claimed(RunStore(root), "povid")
    records = prompts(store)
    _stage(store, "pairs", [pair(p, GOOD[i], BAD[i], "povid", edits=["attribute: yellow -> red", "object: add star"])
                            for i, p in enumerate(records)])
    rounds = [{"round": k, "arms": {"policy": arm(store, f"round{k}", "policy", 2, 0.6 + 0.1 * k)}} for k in (1, 2)]
    summary(store, "povid", rounds, {"rounds": 2, "noise": {"gamma": 0.5, "step": 500, "T": 1000, "seed": 0}})
    return root


def collection(root: Path) -> Path:
    """A demo-like folder: three runs, the base evaluated once for all, and the demo's summary."""
    rlaif_v_run(root / "rlaif_v")
    silkie_run(root / "silkie")
    povid_run(root / "povid")
    _write(root / "eval" / "base.json", _metrics(1.0))
    _write(root / "summary.json", {"base": _metrics(1.0), "rlaif_v": {**_metrics(0.5), "pairs": 2},
                                   "silkie": _metrics(0.7), "silkie_longest": _metrics(1.1), "povid": _metrics(0.8),
                                   "method_seconds": {"rlaif_v": 3.0, "silkie": 4.0, "povid": 5.0},
                                   "eval_scenes": 2, "quick": True, "seconds": 12.0})
    return root
