"""HallusionBench: yes/no questions about figures and their edited copies, scored per question, per figure
and per question pair.

Facts from the benchmark's `evaluation.py` and `utils.py` (tianyi-lab/HallusionBench):

- A question is keyed by category (VD: visual dependent, VS: visual supplement), subcategory, set_id,
  figure_id and question_id; figure 0 is the original (for VS: the question asked without any figure).
- Whether an answer is right comes from a judge, told the question, the reference answer
  (`gt_answer_details`) and the prediction, whose reply reads 0 when "incorrect" is in it (lower-cased),
  else 1 when "correct" is (so "not correct" reads right), else 2 (unclear). An answer file that already
  carries the judge's verdict (`gpt4v_output_gpt_check`, as the released GPT-4V outputs do) is taken as is.
- A VS question without a figure is right when the verdict is 1 or 2 (not knowing is no hallucination);
  every other question only when it is 1.
- aAcc: right questions / questions. fAcc: figures whose questions are all right / figures, a figure
  keyed by category, subcategory, set_id and figure_id, VS's figure 0 (no figure) left out. qAcc: question
  pairs all right / pairs, a pair being one question_id of a set over all its figures. Easy and hard
  aAcc on the leaderboard are the pair accuracy over the questions whose `visual_input` is not 2 (easy)
  or is 2 (hard). Printed as percentages rounded to four decimals (`aAcc`, `fAcc`, `qAcc`, `easy_aAcc`,
  `hard_aAcc`); the fractions come under their long names, also per category (`vd_`, `vs_`).
- The yes/no bias: "Pct Diff" is the share of answers taken as yes minus the share of true yes, where an
  answer is taken as yes when its correctness equals its truth (1 right and yes, or 0 wrong and no: the
  script's shortcut, kept); "FP Ratio" is the share of wrong answers whose truth is no.

Two modes (`parse`): official asks the judge (or takes the file's verdicts); robust asks no one and reads
the answer itself: yes when it has the word yes and not no, no the other way round, unclear else, right
when that matches `gt_answer`. Intervals resample figure sets (a set's figures and question pairs
stay together), each category apart.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from vlalign.evaluate.answers import (
    ANSWER,
    Answer,
    AnswerFileError,
    Field,
    Issues,
    Layout,
    ask_judge,
    check_parse,
    judge_note,
    read_records,
)
from vlalign.evaluate.intervals import Outcomes, Result, ratio, rounded, scored, statistic

CATEGORIES = ("VD", "VS")
KEY = ("category", "subcategory", "set_id", "figure_id", "question_id")
FIELDS = (
    Field("category", "VD (visual dependent) or VS (visual supplement)", choices=CATEGORIES),
    Field("subcategory", "the subcategory (chart, illusion, ...)"),
    *(Field(k, f"HallusionBench's {k} (a number, as its file writes it)", (str, int)) for k in KEY[2:]),
    Field("visual_input", "0 (no figure), 1 (an original figure) or 2 (an edited one)", (str, int)),
)
GT = Field("gt_answer", "the right answer: 1 (yes) or 0 (no)", (str, int))
DETAILS = Field("gt_answer_details", "the reference answer the judge compares with", (str,))
VERDICT = "gpt4v_output_gpt_check"  # the released files' field for the judge's 0 / 1 / 2
# the released result file: a JSON list of the questions with the answer under `model_prediction`
LAYOUT = Layout(answer=(("model_prediction", None),))
PAPER_JUDGE = "gpt-4"  # evaluate_by_chatgpt's model in the reference

JUDGE_PROMPT = """You are a careful teacher checking a student's answer against the reference answer.

Question: {question}
Reference answer: {reference}
Student's answer: {prediction}

If the student's answer does not conflict with the reference answer, reply "correct". If it conflicts with
the reference answer, reply "incorrect". If the student's answer is unclear about the answer, reply "unclear".
Reply with that one word."""


def read_verdict(reply: str) -> int:
    """The reference's reading of a judge's reply: 0 (wrong), 1 (right) or 2 (unclear)."""
    text = reply.lower()
    return 0 if "incorrect" in text else 1 if "correct" in text else 2


_WORD = re.compile(r"[a-z]+")


def robust_verdict(answer: str, truth: str) -> int:
    """0, 1 or 2 from the answer itself: yes or no when it says the one word and not the other ("I do not
    know" says neither), compared with truth."""
    words = set(_WORD.findall(answer.lower()))
    yes, no = "yes" in words, "no" in words
    if yes == no:
        return 2
    return int((yes and truth == "1") or (no and truth == "0"))


def is_right(record: dict, verdict: int) -> bool:
    """A VS question without a figure is right unless judged wrong; any other only when judged right."""
    if record["category"] == "VS" and str(record["figure_id"]) == "0":
        return verdict in (1, 2)
    return verdict == 1


def _key(record: dict, *fields: str) -> str:
    return "_".join(str(record[f]) for f in fields)


def set_counts(rows: Sequence[tuple[dict, bool]]) -> dict[str, int]:
    """One figure set's counts (all of its questions): questions, figures and question pairs, each in all
    and right, for its category and overall, and the yes/no bias counts."""
    category = rows[0][0]["category"].lower()
    out: dict[str, int] = defaultdict(int)

    def add(name: str, value: int) -> None:
        out[name] += value
        out[f"{category}_{name}"] += value

    figures: dict[str, list[bool]] = defaultdict(list)
    groups: dict[str, dict[str, list[bool]]] = {"": defaultdict(list), "easy_": defaultdict(list),
                                                "hard_": defaultdict(list)}
    for record, right in rows:
        add("questions", 1)
        add("right", int(right))
        truth = int(str(record["gt_answer"]) == "1") if "gt_answer" in record else None
        if truth is not None:
            out["said_yes"] += int(int(right) == truth)
            out["true_yes"] += truth
            out["wrong_true_no"] += int(not right and not truth)
        out["wrong"] += int(not right)
        if not (record["category"] == "VS" and str(record["figure_id"]) == "0"):
            figures[_key(record, "figure_id")].append(right)
        pair = _key(record, "question_id")
        groups[""][pair].append(right)
        groups["hard_" if str(record["visual_input"]) == "2" else "easy_"][pair].append(right)
    for answers in figures.values():
        add("figures", 1)
        add("figures_right", int(all(answers)))
    for prefix, pairs in groups.items():
        for answers in pairs.values():
            add(f"{prefix}pairs", 1)
            add(f"{prefix}pairs_right", int(all(answers)))
    return dict(out)


@statistic("hallusionbench")
def hallusionbench_statistic(sums, params) -> dict:
    """aAcc, fAcc, qAcc and the easy / hard pair accuracies (fractions, overall and per category), their
    printed percentages, and the yes/no bias."""
    out: dict = {}
    for prefix in ("", *(f"{c.lower()}_" for c in params["categories"])):
        out.update({f"{prefix}all_accuracy": ratio(sums[f"{prefix}right"], sums[f"{prefix}questions"]),
                    f"{prefix}figure_accuracy": ratio(sums[f"{prefix}figures_right"], sums[f"{prefix}figures"]),
                    f"{prefix}question_pair_accuracy": ratio(sums[f"{prefix}pairs_right"], sums[f"{prefix}pairs"]),
                    f"{prefix}easy_question_pair_accuracy": ratio(sums[f"{prefix}easy_pairs_right"],
                                                                  sums[f"{prefix}easy_pairs"]),
                    f"{prefix}hard_question_pair_accuracy": ratio(sums[f"{prefix}hard_pairs_right"],
                                                                  sums[f"{prefix}hard_pairs"])})
    for short, long in (("aAcc", "all_accuracy"), ("fAcc", "figure_accuracy"), ("qAcc", "question_pair_accuracy"),
                        ("easy_aAcc", "easy_question_pair_accuracy"), ("hard_aAcc", "hard_question_pair_accuracy")):
        out[short] = rounded(100 * out[long], 4)
    if params["with_truth"]:
        out["yes_pct_diff"] = ratio(sums["said_yes"], sums["questions"]) - ratio(sums["true_yes"], sums["questions"])
        out["fp_ratio"] = ratio(sums["wrong_true_no"], sums["wrong"])
    return out


def _verdicts(answers: Sequence[Answer], judge, official: bool, issues: Issues, judged: Issues,
              path: str) -> list[int | None]:
    """Each answer's 0 / 1 / 2: the file's verdict, the judge's (official), or the answer's own (robust);
    None where the file's verdict is bad (counted in `issues`) or the judge failed (in `judged`)."""
    if not official:
        return [robust_verdict(a.answer, str(a["gt_answer"])) for a in answers]
    given = [a.get(VERDICT) for a in answers]
    ask = [i for i, v in enumerate(given) if v is None]
    if ask and judge is None:
        raise AnswerFileError(f"{path}: official HallusionBench scoring asks a judge whether each answer agrees with "
                              f"the reference ({len(ask)} answers carry no '{VERDICT}'): pass --judge, or --parse "
                              f"robust to read the answers' yes and no")
    out: list[int | None] = []
    for a, v in zip(answers, given, strict=True):
        if v is not None and str(v) not in ("0", "1", "2"):
            issues(a.line, "bad_verdict", f"'{VERDICT}' must be 0, 1 or 2, got {v!r}")
            out.append(None)
            continue
        out.append(None if v is None else int(v))
    if ask:
        from vlalign.feedback.judge import ChatRequest

        for a in (answers[i] for i in ask):
            if DETAILS.name not in a.record:
                raise AnswerFileError(f"{path}, {issues.unit} {a.line}: the judge needs '{DETAILS.name}' "
                                      f"({DETAILS.help})")
        requests = [ChatRequest(JUDGE_PROMPT.format(question=answers[i]["question"] if "question" in answers[i].record
                                                    else "", reference=answers[i][DETAILS.name],
                                                    prediction=answers[i].answer), max_tokens=16,
                                id=_key(answers[i].record, *KEY)) for i in ask]
        for i, text in zip(ask, ask_judge(judge, requests, [answers[i].line for i in ask], judged), strict=True):
            out[i] = None if text is None else read_verdict(text)
    return out


def hallusionbench_result(answers_path: str | Path, judge=None, skip_bad: bool = False,
                          parse: str = "official") -> Result:
    """HallusionBench's figures for an answer file: its released result file (a JSON list with
    `model_prediction`) or vlalign's answer lines (`answer` and the question's fields)."""
    official = check_parse(parse) == "official"
    issues = Issues(str(answers_path), skip=skip_bad)
    answers = read_records(answers_path, [ANSWER, *FIELDS, *(() if official else (GT,))], issues, kind="answers",
                           layout=LAYOUT, unique=False)
    seen: dict[str, int] = {}
    kept = []
    for a in answers:
        key = _key(a.record, *KEY)
        if key in seen:
            issues(a.line, "duplicate_question", f"question {key} already answered on {issues.unit} {seen[key]}")
            continue
        seen[key] = a.line
        kept.append(a)
    issues.require(kept)
    judged = Issues(str(answers_path), skip=True)
    verdicts = _verdicts(kept, judge, official, issues, judged, str(answers_path))
    sets: dict[str, list[tuple[dict, bool]]] = defaultdict(list)
    unclear = 0
    for a, v in zip(kept, verdicts, strict=True):
        if v is None:
            continue
        unclear += v == 2
        sets[_key(a.record, "category", "subcategory", "set_id")].append((a.record, is_right(a.record, v)))
    judged.require(list(sets))
    categories = [c for c in CATEGORIES if any(rows[0][0]["category"] == c for rows in sets.values())]
    with_truth = all("gt_answer" in r for rows in sets.values() for r, _ in rows)
    outcomes = Outcomes.from_rows("hallusionbench", "figure set", [(k, set_counts(rows)) for k, rows in sets.items()],
                                  [rows[0][0]["category"] for rows in sets.values()],
                                  params={"categories": categories, "with_truth": with_truth})
    sums = outcomes.sums()
    notes = {"questions": int(sums["questions"]), "figures": int(sums["figures"]), "question_pairs": int(sums["pairs"]),
             "unclear": unclear, "parse": parse,
             **(judge_note(judge, PAPER_JUDGE) if official and judge is not None else {}),
             **issues.report(), **judged.report("judge_skipped")}
    return scored(outcomes, notes)


def score_hallusionbench(answers_path: str | Path, judge=None, skip_bad: bool = False, parse: str = "official") -> dict:
    """HallusionBench metrics of an answer file (see `hallusionbench_result`)."""
    return hallusionbench_result(answers_path, judge, skip_bad, parse).metrics
