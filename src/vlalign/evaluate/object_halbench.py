"""Object HalBench as RLAIF-V reports it: CHAIR over its 300 COCO prompts, objects extracted by an LLM.

Facts from RLAIF-V's `eval/eval_gpt_obj_halbench.py` and `summarize_gpt_obj_halbench_review.py`:
- A judge lists the objects each answer mentions (answers of three words or fewer name none); each
  phrase maps to COCO classes through the two-word phrases it contains, or else through its runs of
  nouns; a word is counted once per answer. The vocabulary is RHLF-V's `synonyms_refine.txt`
  (`vlalign.data.coco.REFINED_ADDITIONS`), with every two-word synonym joined.
- Ground truth: instance categories plus the objects of the reference captions, read with NLTK's
  `word_tokenize` on the lower-cased caption and WordNet's lemmatiser; an image no annotation file
  lists has none.
- CHAIRs = answers with a hallucination / answers; CHAIRs_refine = the same over answers that mention
  at least one COCO object (RLAIF-V's "response hallucination"); CHAIRi = hallucinated mentions /
  mentions; obj_rec = distinct right objects per answer, summed, over the summed ground-truth sizes;
  avg_word_len counts the pieces of each answer split on single spaces.
- Printed (`summarize_...`): response and object hallucination, response and object correctness and
  object recall, in percent with two decimals (`*_pct`).

RLAIF-V maps phrases with spaCy's `en_core_web_trf` lemmas and tags; here a phrase is tokenised and
lemmatised as the ground truth is and its last word stands for its run of nouns (`Vocabulary.
phrase_objects`), so the output is marked approximate; ground-truth captions are exact where NLTK's
punkt_tab and wordnet data are installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vlalign.data.coco import QUALIFIED, REFINED_ADDITIONS, SYNONYMS
from vlalign.evaluate import textkit
from vlalign.evaluate.answers import Issues, check_parse, judge_note
from vlalign.evaluate.chair import (
    CAPTIONS,
    HALLUCINATING,
    Reader,
    Vocabulary,
    answer_counts,
    chair_rates,
    chair_reader,
    llm_mentions,
    missing_report,
    read_against_coco,
)
from vlalign.evaluate.intervals import Outcomes, Result, ratio, rounded, scored, statistic

PHRASE_TOOL = textkit.Tool("vlalign phrase rules", False,
                           "RLAIF-V maps each extracted phrase with spaCy's en_core_web_trf; here its two-word "
                           "phrases or its last word name the object")


def refined_vocabulary() -> Vocabulary:
    """RLHF-V's refined synonym list ("iPhone" keeps its capital) and the phrases RLAIF-V joins."""
    synonyms = {w for obj, names in SYNONYMS.items() for w in (obj, *names, *REFINED_ADDITIONS.get(obj, ()))}
    double = {**{w: w for w in synonyms if " " in w}, "home plate": "home plate", "train track": "train track",
              **QUALIFIED, "wine glas": "wine glass"}
    return Vocabulary.coco({"iphone": "iPhone"}, double, REFINED_ADDITIONS)


def halbench_reader(parse: str) -> Reader:
    """Ground-truth captions as RLAIF-V reads them (official), or vlalign's robust reading."""
    if check_parse(parse) == "robust":
        return chair_reader("robust")
    tokenize, tokenizer = textkit.word_tokenizer()
    lemmatize, lemmatizer = textkit.lemmatizer()

    def tokens(text: str) -> list[str]:
        return [lemmatize(t) for t in tokenize(text.lower())]

    return Reader(refined_vocabulary(), tokens, (tokenizer, lemmatizer, PHRASE_TOOL), parse)


@statistic("object-halbench")
def halbench_statistic(sums, params) -> dict:
    """RLAIF-V's overall metrics and their printed forms, from the summed `answer_counts`."""
    rates = chair_rates(sums)
    out = {"chair_s": rates["chair_s"], "chair_s_refine": rates["chair_s_refine"], "chair_i": rates["chair_i"],
           "recall": rates["recall"], "correct_rate": 1 - rates["chair_s_refine"],
           "object_correct_rate": 1 - rates["chair_i"], "avg_word_len": ratio(sums["pieces"], sums["answers"])}
    out.update({f"{k}_pct": rounded(out[v] * 100, 2) for k, v in (
        ("response_hall", "chair_s_refine"), ("object_hall", "chair_i"), ("response_correct", "correct_rate"),
        ("object_correct", "object_correct_rate"), ("object_recall", "recall"))})
    return out


def halbench_metrics(mentions: Sequence[Sequence[tuple[str, str]]], truths: Sequence[set[str]],
                     texts: Sequence[str], ids: Sequence | None = None) -> Result:
    """RLAIF-V's overall metrics and their printed forms, with intervals over answers; `avg_word_len` counts
    the pieces of each answer split on single spaces."""
    ids = ids if ids is not None else range(len(texts))
    rows = [(i, {**answer_counts([obj for _, obj in found], truth), "pieces": len(text.strip().split(" "))})
            for i, found, truth, text in zip(ids, mentions, truths, texts, strict=True)]
    outcomes = Outcomes.from_rows("object-halbench", "caption", rows, binary=HALLUCINATING)
    sums = outcomes.sums()
    counts = {"sentence_num": len(texts), "coco_sentence_num": int(sums.get("with_objects", 0)),
              "coco_word_count": int(sums.get("right", 0)), "gt_word_count": int(sums.get("truth", 0)),
              "n_mentions": int(sums.get("mentions", 0))}
    return scored(outcomes, counts)


def object_halbench_result(answers_path: str | Path, annotations: Sequence[str | Path], judge,
                           skip_bad: bool = False, parse: str = "official") -> Result:
    """Object HalBench metrics of an answer file (`image_id`, and `question` for the judge) against COCO."""
    reader = halbench_reader(parse)
    read = read_against_coco(answers_path, annotations, reader, skip_bad, CAPTIONS)
    judged = Issues(str(answers_path), skip=True)
    texts = [a.answer.replace("Assistant:", "").strip() for a in read.answers]
    mentions = llm_mentions(read.answers, judge, reader.vocab.phrase_objects, judged)
    kept = [(a, t, g, m) for a, t, g, m in zip(read.answers, texts, read.truths, mentions, strict=True)
            if m is not None]
    judged.require(kept)
    result = halbench_metrics([m for *_, m in kept], [g for *_, g, _ in kept], [t for _, t, *_ in kept],
                              [a.question_id for a, *_ in kept])
    who = judge_note(judge, PAPER_JUDGE) if judge is not None else {"judge": "objects given in the answer file"}
    notes = {**reader.report(), **who, "ground_truth": read.truth.sources}
    return Result({**result.metrics, **notes, **missing_report(read.missing), **read.issues.report(),
                   **judged.report("judge_skipped")}, result.outcomes)


def score_object_halbench(answers_path: str | Path, annotations: Sequence[str | Path], judge,
                          skip_bad: bool = False, parse: str = "official") -> dict:
    """Object HalBench metrics of an answer file (see `object_halbench_result`)."""
    return object_halbench_result(answers_path, annotations, judge, skip_bad, parse).metrics


# the object extractor of RLAIF-V's eval_gpt_obj_halbench.py
PAPER_JUDGE = "gpt-3.5-turbo-0613"
