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
from vlalign.evaluate.answers import AnswerFileError, Issues, check_parse
from vlalign.evaluate.chair import (
    Reader,
    Vocabulary,
    chair_reader,
    llm_mentions,
    missing_report,
    read_against_coco,
)

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


def halbench_metrics(mentions: Sequence[Sequence[tuple[str, str]]], truths: Sequence[set[str]],
                     texts: Sequence[str]) -> dict:
    """RLAIF-V's overall metrics and their printed forms."""
    n = len(texts)
    bad_answers = with_objects = hallucinated = mentioned = right = truth_total = 0
    for found, truth in zip(mentions, truths, strict=True):
        bad = [obj for _, obj in found if obj not in truth]
        hallucinated += len(bad)
        mentioned += len(found)
        bad_answers += bool(bad)
        with_objects += bool(found)
        right += len({obj for _, obj in found if obj in truth})
        truth_total += len(truth)
    refine = bad_answers / with_objects if with_objects else 0.0
    chair_i = hallucinated / mentioned if mentioned else 0.0
    recall = right / truth_total if truth_total else 0.0
    out = {
        "chair_s": bad_answers / n, "chair_s_refine": refine, "chair_i": chair_i, "recall": recall,
        "correct_rate": 1 - refine, "object_correct_rate": 1 - chair_i,
        "avg_word_len": sum(len(t.strip().split(" ")) for t in texts) / n,
        "sentence_num": n, "coco_sentence_num": with_objects, "coco_word_count": right, "gt_word_count": truth_total,
        "n_mentions": mentioned,
    }
    out.update({f"{k}_pct": round(out[v] * 100, 2) for k, v in (
        ("response_hall", "chair_s_refine"), ("object_hall", "chair_i"), ("response_correct", "correct_rate"),
        ("object_correct", "object_correct_rate"), ("object_recall", "recall"))})
    return out


def score_object_halbench(answers_path: str | Path, annotations: Sequence[str | Path], judge,
                          skip_bad: bool = False, parse: str = "official") -> dict:
    """Object HalBench metrics of an answer file (`image_id`, and `question` for the judge) against COCO."""
    if judge is None:
        raise AnswerFileError("Object HalBench extracts objects with a judge: pass one (--judge on the command line)")
    reader = halbench_reader(parse)
    scored = read_against_coco(answers_path, annotations, reader, skip_bad)
    judged = Issues(str(answers_path), skip=True)
    texts = [a.answer.replace("Assistant:", "").strip() for a in scored.answers]
    mentions = llm_mentions(scored.answers, judge, reader.vocab.phrase_objects, judged)
    kept = [(t, g, m) for t, g, m in zip(texts, scored.truths, mentions, strict=True) if m is not None]
    judged.require(kept)
    metrics = halbench_metrics([m for *_, m in kept], [g for _, g, _ in kept], [t for t, *_ in kept])
    metrics.update({**reader.report(), "judge": judge.name, "ground_truth": scored.truth.sources})
    return {**metrics, **missing_report(scored.missing), **scored.issues.report(), **judged.report("judge_skipped")}
