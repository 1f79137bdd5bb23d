"""The benchmarks `vlalign score` and `vlalign eval` know: how each scores an answer file, and which
questions (with images) `eval` asks a model to produce that file.

Question sources, by benchmark (`--data`; images from `--images`); `DATA_FORMATS` says the same for the
command line's help:
- chair, object-halbench: JSON lines with `image_id` and optionally `question` and `image` (a file name
  under `--images` or base64 bytes, as RLHF-V's Object HalBench file has; default `COCO_val2014_<id>.jpg`).
- pope: one of POPE's question files as released (`coco_pope_random.json`: JSON lines with `question_id`,
  `image`, `text`, `label`; the split from a `category` field, else from the file name, else one split
  `all`), LLaVA's llava_pope_test.jsonl, or a COCO instances file, from which the three splits are built.
  Question ids are kept as the file has them.
- mme: JSON lines with `image`, `question`, `category`, `label`, or MME's eval_tool folder of
  `<subtask>.txt` files (image, question, answer separated by tabs); images under `--images/<subtask>/`.
- mmhal: MMHal-Bench's `response_template.json` (question ids are its indices); images by file name.
- amber (and amber-generative, amber-discriminative): one of AMBER's `query_*.json` files; ground truth
  from `--annotations` (AMBER's data folder).
- hallusionbench: HallusionBench.json as released (`filename` under `--images`; a question without one is
  asked without an image).
- vl-rewardbench: its data.jsonl as released (`image_path` under `--images`); a judge or labeler answers.

Answer files are read as `vlalign eval` writes them, and as the benchmarks release them (LLaVA's answer
files with `text`, CHAIR's caption lists, AMBER's and HallusionBench's result files; see
`vlalign.evaluate.answers`). Plugins register more (the world's exact benchmarks on held-out scenes);
`vlalign.plugins.BENCHMARKS` holds them all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from vlalign import ranks
from vlalign.evaluate.amber import amber_result
from vlalign.evaluate.answers import (
    YES_NO_LABEL,
    AnswerFileError,
    Field,
    Question,
    is_file_name,
    open_image,
    read_records,
)
from vlalign.evaluate.chair import IMAGE_ID, chair_result
from vlalign.evaluate.feedback import Feedback
from vlalign.evaluate.hallusionbench import hallusionbench_result
from vlalign.evaluate.intervals import Result
from vlalign.evaluate.mme import CATEGORY as MME_CATEGORY
from vlalign.evaluate.mme import SUBTASKS, mme_result
from vlalign.evaluate.mmhal import load_template, mmhal_result
from vlalign.evaluate.object_halbench import object_halbench_result
from vlalign.evaluate.pope import POPE_SPLITS, UNSPLIT, build_pope, pope_result, question_files, split_in_name
from vlalign.evaluate.vl_rewardbench import judge_pairs, pair_questions, vl_rewardbench_result
from vlalign.plugins import BENCHMARKS

DESCRIBE_COCO = "Describe this image in detail."


@dataclass(frozen=True)
class ScoreInputs:
    """What a scorer may use besides the answer file."""

    answers: Path
    annotations: Sequence[Path] = ()
    judge: object = None
    llm_objects: bool = False
    skip_bad: bool = False
    parse: str = "official"


@dataclass(frozen=True)
class EvalInputs:
    """Where `eval` finds questions and images; `limit` keeps the first N (world: N scenes); `split` picks a
    benchmark's split where it has several (world: test or dev)."""

    data: Path | None = None
    annotations: Sequence[Path] = ()
    images: Path | None = None
    limit: int | None = None
    image_size: int | None = None
    seed: int = 0
    split: str | None = None


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: its scorer (metrics with intervals, and the outcomes they came from), its question
    source for `eval`, and token budgets for free-form and short answers. `run(model, processor, inputs)`,
    where given, evaluates a model in one go instead (the world's full evaluation). `judged(feedback,
    inputs)`, where given, makes it a benchmark of AI feedback: the judge or labeler answers (writing the
    answer records), and no policy does. `splits` are the splits it can be asked for, the first the
    default."""

    name: str
    summary: str
    score: Callable[[ScoreInputs], Result]
    questions: Callable[[EvalInputs], list[Question]]
    long_tokens: int = 512
    short_tokens: int = 16
    needs_annotations: bool = False
    run: Callable[..., Result] | None = None
    splits: tuple[str, ...] = ()
    judged: Callable[[Feedback, EvalInputs], list[dict]] | None = None

    def check_split(self, split: str | None) -> None:
        """A clear error for a split this benchmark does not have."""
        if split is not None and split not in self.splits:
            known = f"one of {', '.join(self.splits)}" if self.splits else "none (leave split out)"
            raise ValueError(f"benchmark {self.name!r} has no split {split!r}; its splits: {known}")


def _need_data(inputs: EvalInputs, what: str) -> Path:
    if inputs.data is None:
        raise ValueError(f"pass --data with {what}")
    return inputs.data


def _first(items: list[Question], limit: int | None) -> list[Question]:
    return items[:limit] if limit else items


def chair_questions(inputs: EvalInputs) -> list[Question]:
    """Description requests for COCO images (Object HalBench)."""
    path = _need_data(inputs, "a JSON-lines file of COCO images to describe (image_id, question, image)")
    out = []
    for r in read_records(path, [IMAGE_ID], kind="questions"):
        if not r.get("image") and not str(r["image_id"]).isdigit():
            raise AnswerFileError(f"{path}, line {r.line}: give the image file in 'image' (image_id "
                                  f"{r['image_id']!r} is not a COCO id to name it by)")
        image = r.get("image") or f"COCO_val2014_{int(r['image_id']):012d}.jpg"
        record = {"image_id": r["image_id"], "question": r.get("question") or DESCRIBE_COCO}
        if is_file_name(image):
            record["image"] = image
        out.append(Question(r.get("question_id", r.line), record["question"],
                            partial(open_image, image, inputs.images, where=f"{path}, line {r.line}: "),
                            record, long=True))
    return _first(out, inputs.limit)


def _coco_instances(path: Path) -> dict | None:
    """The file's content when it is a COCO instances file (one JSON object with categories), else None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) and "categories" in data else None


def _coco_objects(data: dict) -> dict[str, list[str]]:
    """Image file name -> category names in annotation order."""
    names = {c["id"]: c["name"] for c in data["categories"]}
    files = {im["id"]: im.get("file_name", str(im["id"])) for im in data["images"]}
    objects: dict[str, list[str]] = {}
    for a in data["annotations"]:
        objects.setdefault(files[a["image_id"]], []).append(names[a["category_id"]])
    return objects


def pope_questions(inputs: EvalInputs) -> list[Question]:
    """POPE questions from its files (ids kept; see the module notes), or built from COCO instances
    (`limit` images, default 500; ids `<split>-<n>`, as each split numbers from 1)."""
    path = _need_data(inputs, "POPE question files or a COCO instances file to build them from")
    coco = _coco_instances(path) if path.is_file() else None
    if coco is not None:
        splits = build_pope(_coco_objects(coco), n_images=inputs.limit or 500, seed=inputs.seed)
        rows = [q for split in POPE_SPLITS for q in splits[split]]
        return [Question(f"{q['category']}-{q['question_id']}", q["text"],
                         partial(open_image, q["image"], inputs.images, where=f"{q['category']} question: "),
                         {k: q[k] for k in ("image", "object", "label", "category")}) for q in rows]
    fields = [Field("image", "the image file name"), YES_NO_LABEL]
    out = []
    for file in question_files([path]):
        split_of_file = split_in_name(file.name) or UNSPLIT
        for r in read_records(file, fields, kind="questions"):
            category = str(r.get("category", split_of_file)).lower()
            text = r.get("text") or r.get("question")
            if category not in (*POPE_SPLITS, UNSPLIT) or not text:
                raise AnswerFileError(f"{file}, line {r.line}: needs 'text' (or 'question'), and a 'category', if it "
                                      f"has one, of {', '.join(POPE_SPLITS)}")
            out.append(Question(r.get("question_id", r.line), text,
                                partial(open_image, r["image"], inputs.images, where=f"{file}, line {r.line}: "),
                                {"image": r["image"], "label": r["label"], "category": category}))
    ids = [q.question_id for q in out]
    if len(set(ids)) != len(ids):  # several split files each number from 1: name the split too
        out = [Question(f"{q.record['category']}-{q.question_id}", q.prompt, q.image, q.record) for q in out]
    return _first(out, inputs.limit)


def _mme_rows(path: Path) -> list[tuple[str, dict]]:
    """(where, record) from MME's eval_tool folder of <subtask>.txt files or a JSON-lines file."""
    if path.is_dir():
        rows = []
        for task in SUBTASKS:
            txt = path / f"{task}.txt"
            if not txt.is_file():
                continue
            for n, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                parts = line.split("\t")
                if len(parts) < 3:
                    raise AnswerFileError(f"{txt}, line {n}: expected image, question and answer separated by tabs")
                rows.append((f"{txt}, line {n}: ", {"image": parts[0], "question": parts[1],
                                                     "label": parts[2].strip().lower(), "category": task}))
        if not rows:
            raise FileNotFoundError(f"no <subtask>.txt files of MME in {path} (e.g. existence.txt)")
        return rows
    fields = [Field("image", "the image file name"), Field("question", "the question"), MME_CATEGORY,
              YES_NO_LABEL]
    return [(f"{path}, line {r.line}: ", r.record) for r in read_records(path, fields, kind="questions")]


def mme_questions(inputs: EvalInputs) -> list[Question]:
    """MME's yes/no questions; images are looked up under `<images>/<subtask>/[images/]`."""
    path = _need_data(inputs, "MME's questions (eval_tool folder of <subtask>.txt files, or JSON lines)")
    out = []
    for i, (where, r) in enumerate(_mme_rows(path)):
        subdirs = (r["category"], f"{r['category']}/images", "")
        out.append(Question(r.get("question_id", i), r["question"],
                            partial(open_image, r["image"], inputs.images, subdirs, where),
                            {k: r[k] for k in ("image", "category", "label")}))
    return _first(out, inputs.limit)


def mmhal_questions(inputs: EvalInputs) -> list[Question]:
    """MMHal-Bench's 96 questions; answer records carry what the judge needs."""
    path = _need_data(inputs, "MMHal-Bench's response_template.json")
    out = []
    for i, r in enumerate(load_template(path)):
        image = str(r.get("image_src", "")).rsplit("/", 1)[-1]
        record = {k: r[k] for k in ("question", "gt_answer", "image_content", "question_type") if k in r}
        out.append(Question(i, r.get("question", ""),
                            partial(open_image, image, inputs.images, where=f"{path}, question {i}: "),
                            {**record, "image": image}, long=True))
    return _first(out, inputs.limit)


def amber_questions(inputs: EvalInputs) -> list[Question]:
    """AMBER's queries; "Describe ..." requests (not ending in "?") get free-form answers."""
    path = _need_data(inputs, "one of AMBER's query_*.json files")
    queries = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for i, q in enumerate(queries):
        if not isinstance(q, dict) or not {"id", "image", "query"} <= set(q):
            raise AnswerFileError(f"{path}, entry {i}: AMBER queries need id, image and query")
        out.append(Question(q["id"], q["query"], partial(open_image, q["image"], inputs.images,
                                                          where=f"{path}, entry {i}: "),
                            {"image": q["image"]}, long=not q["query"].rstrip().endswith("?")))
    return _first(out, inputs.limit)


def hallusionbench_questions(inputs: EvalInputs) -> list[Question]:
    """HallusionBench's questions as released; a question with no `filename` is asked without an image."""
    from vlalign.evaluate.hallusionbench import FIELDS, KEY, _key

    path = _need_data(inputs, "HallusionBench.json (its released question file)")
    out = []
    for r in read_records(path, [*FIELDS, Field("question", "the question")], kind="questions", unique=False):
        image = r.get("filename")
        load = partial(open_image, image.removeprefix("./"), inputs.images,
                       where=f"{path}, entry {r.line}: ") if image else None
        out.append(Question(_key(r.record, *KEY), r["question"], load, dict(r.record)))
    return _first(out, inputs.limit)


def _score_chair(i: ScoreInputs) -> Result:
    if i.llm_objects and i.judge is None:
        raise ValueError("--llm-objects extracts objects with a judge: pass --judge too")
    return chair_result(i.answers, i.annotations, i.judge if i.llm_objects else None, i.skip_bad, i.parse)


def _score_mmhal(i: ScoreInputs) -> Result:
    return mmhal_result(i.answers, i.judge, i.annotations[0] if i.annotations else None, i.skip_bad, parse=i.parse)


def _amber(part: str) -> Callable[[ScoreInputs], Result]:
    return lambda i: amber_result(i.answers, i.annotations, i.skip_bad, parse=i.parse, part=part)


def _judge_pairs(feedback: Feedback, inputs: EvalInputs) -> list[dict]:
    return judge_pairs(pair_questions(inputs), feedback)


AMBER_SUMMARY = "AMBER {}; needs --annotations with AMBER's data folder"
for _benchmark in (
    Benchmark("chair", "CHAIR on COCO (Object HalBench style); needs --annotations with COCO instances and captions",
              _score_chair, chair_questions, needs_annotations=True),
    Benchmark("pope", "POPE yes/no object probing, per split and averaged; --annotations: POPE's question files "
              "for answer files without labels (LLaVA's)",
              lambda i: pope_result(i.answers, i.skip_bad, i.parse, i.annotations), pope_questions),
    Benchmark("mme", "MME perception and cognition (acc and acc+ per subtask)",
              lambda i: mme_result(i.answers, i.skip_bad, i.parse), mme_questions),
    Benchmark("mmhal", "MMHal-Bench, 0-6 ratings by a judge (--judge); --annotations response_template.json",
              _score_mmhal, mmhal_questions),
    Benchmark("amber", AMBER_SUMMARY.format("generative and discriminative"), _amber("all"), amber_questions,
              needs_annotations=True),
    Benchmark("amber-generative", AMBER_SUMMARY.format("descriptions only (CHAIR, Cover, Hal, Cog)"),
              _amber("generative"), amber_questions, needs_annotations=True),
    Benchmark("amber-discriminative", AMBER_SUMMARY.format("yes/no questions only (existence, attribute, relation)"),
              _amber("discriminative"), amber_questions, needs_annotations=True),
    Benchmark("object-halbench", "Object HalBench as RLAIF-V reports it (CHAIR, objects extracted by --judge); "
              "needs --annotations with COCO instances and captions",
              lambda i: object_halbench_result(i.answers, i.annotations, i.judge, i.skip_bad, i.parse),
              chair_questions, needs_annotations=True),
    Benchmark("hallusionbench", "HallusionBench: question-pair, figure and all accuracy (official: --judge checks "
              "each answer; robust: the answer's own yes or no)",
              lambda i: hallusionbench_result(i.answers, i.judge, i.skip_bad, i.parse), hallusionbench_questions),
    Benchmark("vl-rewardbench", "VL-RewardBench: how often a judge (--judge, --judge-style) or labeler (--labeler) "
              "prefers the answer people preferred",
              lambda i: vl_rewardbench_result(i.answers, i.skip_bad, i.parse), pair_questions, judged=_judge_pairs),
):
    BENCHMARKS.register(_benchmark.name, _benchmark)


def get(name: str) -> Benchmark:
    """The benchmark called `name` (the error lists every registered one)."""
    return BENCHMARKS.get(name)


def _image(question: Question):
    return question.image() if question.image is not None else None


def generate_answers(model, processor, questions: Sequence[Question], bench: Benchmark, batch_size: int = 16,
                     long_tokens: int | None = None) -> list[dict]:
    """Greedy answers, one answer record per question (its `record` plus `question_id` and `answer`); under a
    launcher each process answers its share, and every process gets all the answers."""
    from vlalign.models.generate import generate
    from vlalign.models.settings import Decoding

    def answer(idx: list[int], decoding: Decoding) -> list[str]:
        texts: list[str] = []
        for s in range(0, len(idx), batch_size):
            chunk = idx[s:s + batch_size]
            texts += generate(model, processor, [_image(questions[i]) for i in chunk],
                              [questions[i].prompt for i in chunk], decoding, batch_size=batch_size)
        return texts

    answers: dict[int, str] = {}
    for long, seen in ((True, True), (True, False), (False, True), (False, False)):  # a batch: all with images, or none
        idx = [i for i, q in enumerate(questions) if q.long == long and (q.image is not None) == seen]
        decoding = Decoding(max_new_tokens=(long_tokens or bench.long_tokens) if long else bench.short_tokens)
        answers.update(zip(idx, ranks.spread(lambda part, d=decoding: answer(part, d), idx), strict=True))
    return [{"question_id": q.question_id, "question": q.prompt, **q.record, "answer": answers[i]}
            for i, q in enumerate(questions)]
