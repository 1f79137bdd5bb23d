"""The world's benchmarks of AI feedback: how well a judge rates answers and a labeler checks claims,
against what the scene graph says. `vlalign eval world-judge --judge world:judge` and `vlalign eval
world-labeler --labeler world:labeler [--model world:base]`; `bench/judge_agreement.py` and
`bench/labeler_accuracy.py` print the same figures.

- world-judge: held-out scenes, each with one instruction and several candidate answers of every quality
  (exact, hallucinating, incomplete, wrong, refusals, compliance with harmful requests); the judge rates
  each answer as Silkie asks it (`style`, `world` by default). Per aspect: exact agreement with the scene
  graph's rating and mean absolute error (over the ratings given) and the share missing; and the pairwise
  agreement that VLFeedback's pairs depend on: over two answers to one scene whose true mean ratings
  differ, how often the judge orders them the same way (a missing rating counts as disagreeing).
- world-labeler: a policy (`--model`, world:base by default) describes held-out scenes (sampled, two
  answers a scene), its answers are split into claims (RLAIF-V's divide step, `--splitter`, world by
  default) and the labeler's P(yes) of each claim's question is compared with the scene: accuracy at 0.5,
  AUC (P(yes) counted in steps of 0.001), the share of true claims and the mean P(yes) of true and false
  ones. RLAIF-V's feedback is only as good as these numbers.

Intervals resample scenes (a scene's answers and claims stay together).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import numpy as np

from vlalign.evaluate.answers import Field, Issues, read_records
from vlalign.evaluate.benchmarks import EvalInputs
from vlalign.evaluate.feedback import Feedback
from vlalign.evaluate.intervals import Outcomes, Result, ratio, scored, statistic
from vlalign.evaluate.suite import image_size
from vlalign.world.judging import ASPECT_WORDS, candidate_answer, candidate_task, rate
from vlalign.world.metrics import held_out_scenes
from vlalign.world.render import render
from vlalign.world.scene import COLORS, EVAL_SPLITS, SHAPES, Scene

JUDGE_SCENES = 300
LABELER_SCENES = 200
ANSWERS = 3
SAMPLES = 2
BINS = 1000
SHORT = {aspect: word for word, aspect in ASPECT_WORDS.items()}  # "Visual Faithfulness" -> "faithfulness"
TRUTH = Field("truth", "the scene graph's ratings of each answer", (list,))
JUDGED = Field("judged", "the judge's ratings of each answer (null where missing)", (list,))
CLAIMS = Field("claims", "the answer's claims: question, p_yes, true", (list,))


def _split(inputs: EvalInputs) -> str:
    return inputs.split or EVAL_SPLITS[0]


def _render(scene: Scene, processor) -> object:
    """The scene at the image side of `processor` (a model's), else at render's own."""
    side = image_size(processor)
    return render(scene, side) if side else render(scene)


def judge_items(split: str, n: int, answers: int = ANSWERS) -> list[tuple[Scene, str, list[str], list[dict]]]:
    """(scene, instruction, candidate answers, their true ratings) for `n` held-out scenes: several answers to
    one instruction, as in Silkie's pool."""
    out = []
    for scene in held_out_scenes(split, n):
        rng = np.random.default_rng([scene.seed, 5])
        task = candidate_task(scene, rng)
        drawn = [candidate_answer(scene, task, rng) for _ in range(answers)]
        out.append((scene, task.instruction, [a for a, _, _ in drawn], [rate(scene, task, *a).ratings for a in drawn]))
    return out


def judge_records(feedback: Feedback, inputs: EvalInputs, answers: int = ANSWERS) -> list[dict]:
    """The judge's ratings of `answers` candidate answers a scene, beside the scene graph's."""
    from vlalign.feedback.vlfeedback import RatingJudge

    if feedback.judge is None:
        raise ValueError("world-judge measures a judge: pass --judge (e.g. world:judge)")
    feedback = replace(feedback, style=feedback.style or "world")
    items = judge_items(_split(inputs), inputs.limit or JUDGE_SCENES, answers)
    processor = getattr(feedback.judge, "processor", None)  # a judge in this process; an API judge has none
    rated = RatingJudge(feedback.judge, style=feedback.style).rate(
        [(scene.id, _render(scene, processor), instruction, answers) for scene, instruction, answers, _ in items])
    return [{"question_id": scene.id, "scene": scene.to_dict(), "instruction": instruction, "answers": answers,
             "truth": truth, "judged": [r.ratings for r in judged], "feedback": feedback.name}
            for (scene, instruction, answers, truth), judged in zip(items, rated, strict=True)]


def _mean(ratings: dict) -> float | None:
    values = [ratings.get(a) for a in SHORT]
    return None if any(v is None for v in values) else sum(values) / len(values)


def judge_counts(truth: Sequence[dict], judged: Sequence[dict]) -> dict[str, int]:
    """One scene's agreement counts: per aspect, ratings given, exactly right, their absolute errors, missing;
    and the pairs of answers of different true quality, and those the judge orders the same way."""
    out = {"answers": len(truth), "pairs": 0, "pairs_agree": 0}
    for t, j in zip(truth, judged, strict=True):
        for aspect, short in SHORT.items():
            given = j.get(aspect)
            out[f"{short}_missing"] = out.get(f"{short}_missing", 0) + (given is None)
            if given is not None:
                out[f"{short}_rated"] = out.get(f"{short}_rated", 0) + 1
                out[f"{short}_exact"] = out.get(f"{short}_exact", 0) + (given == t[aspect])
                out[f"{short}_error"] = out.get(f"{short}_error", 0) + abs(given - t[aspect])
    for (t1, j1), (t2, j2) in combinations(zip(truth, judged, strict=True), 2):
        m1, m2 = _mean(t1), _mean(t2)
        if m1 == m2:
            continue
        jm1, jm2 = _mean(j1), _mean(j2)
        out["pairs"] += 1
        out["pairs_agree"] += jm1 is not None and jm2 is not None and (jm1 - jm2) * (m1 - m2) > 0
    return out


@statistic("world-judge")
def judge_statistic(sums, params) -> dict:
    out = {}
    for short in SHORT.values():
        out.update({f"{short}_exact": ratio(sums.get(f"{short}_exact", 0), sums.get(f"{short}_rated", 0)),
                    f"{short}_mae": ratio(sums.get(f"{short}_error", 0), sums.get(f"{short}_rated", 0)),
                    f"{short}_missing": ratio(sums.get(f"{short}_missing", 0), sums["answers"])})
    out["pairwise_agreement"] = ratio(sums["pairs_agree"], sums["pairs"])
    return out


def _records(path: str | Path, fields, issues: Issues) -> list:
    records = read_records(path, [Field("question_id", "the scene's id", (str, int)), *fields], issues,
                           kind="answers")
    issues.require(records)
    return records


def judge_result(records: Sequence[dict], notes: dict | None = None) -> Result:
    """The judge's agreement with the scene graph, from `judge_records`' records."""
    outcomes = Outcomes.from_rows("world-judge", "scene",
                                  [(r["question_id"], judge_counts(r["truth"], r["judged"])) for r in records])
    sums = outcomes.sums()
    return scored(outcomes, {"answers": int(sums["answers"]), "pairs": int(sums["pairs"]), **(notes or {})})


def world_judge_result(answers_path: str | Path, skip_bad: bool = False) -> Result:
    """`judge_result` of an answer file of `judge_records`' records."""
    issues = Issues(str(answers_path), skip=skip_bad)
    records = [r.record for r in _records(answers_path, [TRUTH, JUDGED], issues)]
    return judge_result(records, issues.report())


def claim_is_true(scene: Scene, question: str) -> bool:
    """Whether the shape (in the colour, if one is named) a claim's question asks about is in the scene."""
    words = question.replace("?", " ").split()
    shape = next(w for w in words if w in SHAPES)
    color = next((w for w in words if w in COLORS), None)
    return scene.count(shape, color) > 0


def labeler_records(feedback: Feedback, inputs: EvalInputs, samples: int = SAMPLES) -> list[dict]:
    """The policy's sampled descriptions of held-out scenes (`samples` a scene), their claims, the labeler's
    P(yes) of each, and whether each is true."""
    from vlalign.feedback.labeler import label_responses
    from vlalign.feedback.splitters import make_splitter
    from vlalign.models.generate import generate, sample_seed
    from vlalign.models.load import load
    from vlalign.models.settings import Decoding
    from vlalign.world.text import DESCRIBE_INSTRUCTIONS

    if feedback.labeler is None:
        raise ValueError("world-labeler measures a labeler: pass --labeler (e.g. world:labeler)")
    policy, processor = load(feedback.policy or "world:base", dtype="fp32")  # world models run in fp32
    scenes = [s for s in held_out_scenes(_split(inputs), inputs.limit or LABELER_SCENES) for _ in range(samples)]
    images = [_render(s, processor) for s in scenes]
    answers = generate(policy, processor, images, [DESCRIBE_INSTRUCTIONS[0]] * len(images),
                       Decoding(max_new_tokens=96, temperature=0.7),
                       seeds=[sample_seed(0, s.id, k % samples) for k, s in enumerate(scenes)])
    labeler, labeler_processor = feedback.labeler
    labeled = label_responses(labeler, labeler_processor, images, answers,
                              make_splitter(feedback.splitter or "world", feedback.judge))
    return [{"question_id": f"{s.id}/{k % samples}", "scene": s.to_dict(), "answer": a,
             "claims": [{"question": c.question, "p_yes": c.p_yes, "true": claim_is_true(s, c.question)}
                        for c in fb.claims if not c.answers], "feedback": feedback.name}
            for k, (s, a, fb) in enumerate(zip(scenes, answers, labeled, strict=True))]


def claim_counts(claims: Sequence[dict]) -> dict[str, float]:
    """One answer's claims: how many, true, judged right at P(yes) 0.5, the summed P(yes) of the true and of
    the false ones, and P(yes) counted in steps of 1 / BINS for each kind (what the AUC is made of)."""
    out: dict[str, float] = {"claims": len(claims)}
    for c in claims:
        kind = "true" if c["true"] else "false"
        step = min(int(c["p_yes"] * BINS), BINS - 1)
        for key, value in ((kind, 1), (f"{kind}_p_yes", c["p_yes"]), ("right", (c["p_yes"] >= 0.5) == c["true"]),
                           (f"{kind}_{step}", 1)):
            out[key] = out.get(key, 0) + value
    return out


@statistic("world-labeler")
def labeler_statistic(sums, params) -> dict:
    """Accuracy at 0.5, AUC, the share of true claims, the mean P(yes) of true and of false claims."""
    zero = np.zeros(np.shape(sums["claims"]))  # a step no claim fell in, as a number or one per replicate
    pos = np.stack([np.asarray(sums.get(f"true_{b}", zero)) for b in range(BINS)], axis=-1)
    neg = np.stack([np.asarray(sums.get(f"false_{b}", zero)) for b in range(BINS)], axis=-1)
    below = np.cumsum(neg, axis=-1) - neg
    pairs = (pos * (below + 0.5 * neg)).sum(axis=-1)
    true, false = sums.get("true", 0.0), sums.get("false", 0.0)
    return {"accuracy": ratio(sums["right"], sums["claims"]), "auc": ratio(pairs, np.multiply(true, false)),
            "true_share": ratio(true, sums["claims"]), "mean_p_yes_true": ratio(sums.get("true_p_yes", 0.0), true),
            "mean_p_yes_false": ratio(sums.get("false_p_yes", 0.0), false)}


def labeler_result(records: Sequence[dict], notes: dict | None = None) -> Result:
    """The labeler's claim-level accuracy and AUC, from `labeler_records`' records; the answers of one scene
    (`<scene id>/<k>`) make one row."""
    scenes: dict[str, list[dict]] = {}
    for r in records:
        scenes.setdefault(str(r["question_id"]).rsplit("/", 1)[0], []).extend(r["claims"])
    outcomes = Outcomes.from_rows("world-labeler", "scene", [(k, claim_counts(c)) for k, c in scenes.items()])
    return scored(outcomes, {"claims": int(outcomes.sums()["claims"]), "answers": len(records), **(notes or {})})


def world_labeler_result(answers_path: str | Path, skip_bad: bool = False) -> Result:
    """`labeler_result` of an answer file of `labeler_records`' records."""
    issues = Issues(str(answers_path), skip=skip_bad)
    return labeler_result([r.record for r in _records(answers_path, [CLAIMS], issues)], issues.report())
