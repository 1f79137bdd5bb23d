"""Importer fuzzing: records of all three formats dropped, retyped, nulled, emptied, made huge, given unicode
(valid and broken), duplicated, pointed at broken or forbidden images; and whole files with a byte-order
mark, cut short or of the wrong kind. Every bad record must be skipped, logged once with its position and
a reason our checks give (a `BadRecord`, not a stray exception), and counted in the manifest; every good one
imported exactly as written; nothing raises.

Each format's record faults go into one file (one fault per record, among untouched records), so the suite
runs one import per format instead of one per fault.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_faults_cli import _main

from vlalign.data.store import RunStore
from vlalign.formats.imports import MAX_TEXT, import_data

H, VF, E = "Helpfulness", "Visual Faithfulness", "Ethical Considerations"
BAD_BYTES = "@@not-utf8@@"  # replaced by bytes that are not UTF-8 once the file is encoded
COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def images(tmp_path) -> Path:
    """Good images img0-2.png, and every kind of bad one, inside `images/`; one good image outside it."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i, color in enumerate(COLORS):
        (folder / f"img{i}.png").write_bytes(_png(color))
    (folder / "broken.png").write_bytes(b"this is not a picture")
    (folder / "truncated.png").write_bytes(_png((1, 2, 3))[:40])
    (folder / "folder.png").mkdir()
    os.mkfifo(folder / "fifo.png")
    (tmp_path / "outside.png").write_bytes(_png((9, 9, 9)))
    (folder / "link.png").symlink_to(tmp_path / "outside.png")
    return folder


@dataclass(frozen=True)
class Case:
    """One fault: how it changes a good record, and whether the record must then be skipped (with a piece
    of the reason) or kept."""

    name: str
    mutate: Callable[[dict], Any]
    reason: str | None = None  # None: the record is still good and must be imported as it now reads
    completion: int | None = None  # VLFeedback: only this completion is skipped (for `reason`), the record kept

    @property
    def skip(self) -> bool:
        return self.reason is not None and self.completion is None


def _set(path: tuple, value: Any) -> Callable[[dict], Any]:
    """A mutation setting the field at `path` (keys and list indices) to `value`."""
    def mutate(record: dict) -> dict:
        target = record
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return record
    return mutate


def _drop(*path) -> Callable[[dict], Any]:
    def mutate(record: dict) -> dict:
        target = record
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
        return record
    return mutate


def _replace(value: Any) -> Callable[[dict], Any]:
    return lambda record: value


def _image_cases(field: str) -> list[Case]:
    return [
        Case("image garbage bytes", _set((field,), "broken.png"), "is not an image"),
        Case("image truncated", _set((field,), "truncated.png"), "is not an image"),
        Case("image is a folder", _set((field,), "folder.png"), "not a regular file"),
        Case("image is a FIFO", _set((field,), "fifo.png"), "not a regular file"),
        Case("image missing", _set((field,), "missing.png"), "does not exist"),
        Case("image outside (../)", _set((field,), "../outside.png"), "lies outside"),
        Case("image outside (absolute)", _set((field,), "/etc/hostname"), "lies outside"),
        Case("image symlink out", _set((field,), "link.png"), "lies outside"),
    ]


def _write_json_list(path: Path, records: list) -> None:
    text = json.dumps(records, indent=1)
    path.write_bytes(text.encode("utf-8").replace(BAD_BYTES.encode(), b"\xff\xfe"))


def _logged_as(case: Case, label: str) -> str:
    return label if case.completion is None else f"{label} completion {case.completion}"


def _check_import(stage, cases: list[Case], n_good: int, label: Callable[[int], str], log_stage=None) -> list[str]:
    """Skipped cases (records, or single VLFeedback completions) logged once each at their position with a
    reason our checks give; counted; the rest imported. The file holds the `n_good` untouched records first,
    then one record per case; `label(i)` names case i."""
    log_stage = log_stage or stage
    errors = log_stage.errors()
    logged = [e["id"] for e in errors]
    expected = {_logged_as(c, label(i)) for i, c in enumerate(cases) if c.reason is not None}
    assert sorted(logged) == sorted(expected), "each bad record logged exactly once, and no good one"
    by_id = {e["id"]: e["error"] for e in errors}
    for i, case in enumerate(cases):
        if case.reason is not None:
            message = by_id[_logged_as(case, label(i))]
            assert message.startswith(("BadRecord: ", "Unreadable: ")), (case.name, message)
            assert case.reason in message and label(i) in message, (case.name, message)
    report = stage.manifest["import"]
    assert (report["records"], report["skipped"], report["errors"]) == (
        len(cases) + n_good, sum(c.skip for c in cases), str(log_stage.dir / ".errors.jsonl"))
    assert report.get("completions_skipped", 0) == sum(c.completion is not None for c in cases)
    return logged


# ---------------------------------------------------------------- POVID


def _conv(question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]


def _povid(i: int) -> dict:
    return {"id": f"p{i}", "image": f"img{i % 3}.png", "conversations": _conv(f"What is in picture {i}?", f"A shape {i}."),
            "rejected_conversations": _conv(f"What is in picture {i}?", f"A dog {i}.")}


POVID_CASES = [
    Case("no id", _drop("id")),
    Case("int id", _set(("id",), 12345)),
    Case("dict id", _set(("id",), {"a": 1}), "field 'id' must be text"),
    Case("bool id", _set(("id",), True), "field 'id' must be text"),
    Case("no image", _drop("image"), "missing field(s) image"),
    Case("no conversations", _drop("conversations"), "missing field(s) conversations"),
    Case("no rejected", _drop("rejected_conversations"), "missing field(s) rejected_conversations"),
    Case("image int", _set(("image",), 5), "field 'image' must be text"),
    Case("image list", _set(("image",), ["img0.png"]), "field 'image' must be text"),
    Case("image null", _set(("image",), None), "missing field(s) image"),
    Case("conversations text", _set(("conversations",), "hello"), "must be a non-empty list of turns"),
    Case("conversations empty", _set(("conversations",), []), "must be a non-empty list of turns"),
    Case("conversations dict", _set(("conversations",), {"from": "gpt"}), "must be a non-empty list"),
    Case("turns not objects", _set(("conversations",), [1, 2]), "no 'human' turn"),
    Case("human value null", _set(("conversations", 0, "value"), None), "missing field(s) conversations[0].value"),
    Case("human value int", _set(("conversations", 0, "value"), 7), "must be text, got int"),
    Case("human only <image>", _set(("conversations", 0, "value"), "<image>\n "), "asks nothing"),
    Case("human whitespace", _set(("conversations", 0, "value"), "   "), "is empty"),
    Case("gpt value null", _set(("conversations", 1, "value"), None), "missing field(s) conversations[1].value"),
    Case("gpt value list", _set(("conversations", 1, "value"), ["A."]), "must be text, got list"),
    Case("gpt value empty", _set(("conversations", 1, "value"), ""), "is empty"),
    Case("rejected value null", _set(("rejected_conversations", 1, "value"), None), "rejected_conversations[1].value"),
    Case("rejected value dict", _set(("rejected_conversations", 1, "value"), {}), "must be text, got dict"),
    Case("no gpt turn", _set(("conversations",), _conv("q", "a")[:1]), "no 'gpt' turn"),
    Case("chosen equals rejected", _set(("rejected_conversations", 1, "value"), "A shape 24."), "the same text"),
    Case("huge answer", _set(("conversations", 1, "value"), "x" * (MAX_TEXT + 1)), "characters long"),
    Case("long answer", _set(("conversations", 1, "value"), "word " * 4000)),
    Case("unicode", _set(("conversations", 1, "value"), "一个红色的圆 🙂 دائرة حمراء \u00e9")),
    Case("nul char", _set(("conversations", 1, "value"), "a\x00b")),
    Case("lone surrogate", _set(("conversations", 1, "value"), "bad \ud800 text"), "not valid UTF-8"),
    Case("bytes not utf-8", _set(("conversations", 1, "value"), f"bad {BAD_BYTES} bytes"), "not valid UTF-8"),
    Case("record is text", _replace("a record"), "expected a JSON object, got str"),
    Case("record is a number", _replace(42), "expected a JSON object, got int"),
    Case("record is null", _replace(None), "expected a JSON object, got NoneType"),
    Case("record is a list", _replace([1, 2]), "expected a JSON object, got list"),
    Case("extra fields", _set(("extra",), {"anything": [1, 2]})),
    Case("duplicate id, same content", lambda r: _povid(100), "repeats povid.json record 1"),
    Case("duplicate id, other content", _set(("id",), "p100"), "same id as, but different content from"),
    Case("duplicate id, other image", lambda r: {**_povid(100), "image": "img2.png"}, "different content"),
    *_image_cases("image"),
]


def _povid_triple(record: dict) -> tuple[str, str, str]:
    return (record["conversations"][0]["value"].replace("<image>", "").strip(), record["conversations"][1]["value"],
            record["rejected_conversations"][1]["value"])


def test_povid_fuzzed_records(tmp_path, images):
    good = [_povid(100 + i) for i in range(3)]
    faulty = [case.mutate(_povid(i)) for i, case in enumerate(POVID_CASES)]
    _write_json_list(tmp_path / "povid.json", good + faulty)
    stage = import_data("povid", tmp_path / "povid.json", tmp_path / "run", images)
    _check_import(stage, POVID_CASES, len(good), lambda i: f"povid.json record {len(good) + i + 1}")
    kept = [r for r, c in zip(faulty, POVID_CASES, strict=True) if not c.skip] + good
    rows = stage.rows()
    assert sorted((r["instruction"], r["chosen"], r["rejected"]) for r in rows) == sorted(map(_povid_triple, kept))
    assert {r["prompt_id"] for r in rows} >= {"12345", "p100"}  # an int id is kept as its text
    again = import_data("povid", tmp_path / "povid.json", tmp_path / "run", images)  # resumable, nothing doubled
    assert len(again.rows()) == len(rows) and again.manifest["import"]["skipped"] == stage.manifest["import"]["skipped"]
    assert again.manifest["errors"] == sum(c.skip for c in POVID_CASES)


def test_povid_image_outside_the_folder_is_read_when_allowed(tmp_path, images):
    _write_json_list(tmp_path / "povid.json", [{**_povid(0), "image": str(tmp_path / "outside.png")}])
    assert import_data("povid", tmp_path / "povid.json", tmp_path / "run", images).rows() == []
    allowed = import_data("povid", tmp_path / "povid.json", tmp_path / "run2", images, allow_outside=True)
    assert len(allowed.rows()) == 1


# ---------------------------------------------------------------- whole files


def _good_povid_file(tmp_path: Path, n: int = 4) -> list[dict]:
    return [_povid(i) for i in range(n)]


@pytest.mark.parametrize("name, write, imported, errors", [
    ("BOM, pretty-printed list", lambda p, rs: p.write_bytes(b"\xef\xbb\xbf" + json.dumps(rs, indent=2).encode()), 4,
     []),
    ("BOM, JSON lines", lambda p, rs: p.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rs).encode()),
     4, []),
    ("one pretty-printed object", lambda p, rs: p.write_text(json.dumps(rs[0], indent=2)), 1, []),
    ("list cut inside record 3", lambda p, rs: p.write_text(json.dumps(rs, indent=1)[:json.dumps(rs, indent=1).index(
        '"p2"') + 3]), 2, [("povid.json record 3", "not valid JSON at line")]),
    ("list not closed", lambda p, rs: p.write_text(json.dumps(rs)[:-1]), 4,
     [("povid.json record 5", "ends before the list is closed")]),
    ("JSON lines, last line cut", lambda p, rs: p.write_text("".join(json.dumps(r) + "\n" for r in rs)[:-20]), 3,
     [("povid.json record 4", "not valid JSON")]),
    ("JSON lines, blank and broken lines", lambda p, rs: p.write_text(
        json.dumps(rs[0]) + "\n\n{oops\n" + json.dumps(rs[1]) + "\n"), 2, [("povid.json record 3", "not valid JSON")]),
])
def test_povid_whole_file_faults(tmp_path, images, name, write, imported, errors):
    src = tmp_path / "povid.json"
    write(src, _good_povid_file(tmp_path))
    stage = import_data("povid", src, tmp_path / "run", images)
    assert len(stage.rows()) == imported
    logged = [(e["id"], e["error"]) for e in stage.errors()]
    assert [i for i, _ in logged] == [i for i, _ in errors]
    assert all(reason in message for (_, message), (_, reason) in zip(logged, errors, strict=True))
    assert stage.manifest["import"]["skipped"] == len(errors)


def test_files_that_are_not_data_are_refused_clearly(tmp_path, images):
    empty = tmp_path / "empty.json"
    empty.write_text(" \n")
    with pytest.raises(ValueError, match="is empty"):
        import_data("povid", empty, tmp_path / "run", images)
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(ValueError, match="not a regular file"):
        import_data("povid", tmp_path / "fifo.json", tmp_path / "run", images)
    text = tmp_path / "notes.txt"
    text.write_text("just some notes")
    with pytest.raises(ValueError, match="neither Parquet .* nor JSON"):
        import_data("rlaif-v", text, tmp_path / "run", images)
    with pytest.raises(NotADirectoryError, match="--images"):
        import_data("povid", empty, tmp_path / "run", empty)


# ---------------------------------------------------------------- VLFeedback


def _completion(model: str, response: str, h: Any = "4", vf: Any = "3", e: Any = "5") -> dict:
    return {"model": model, "response": response, "annotations": {
        H: {"Rating": h, "Rationale": "help"}, VF: {"Rating": vf, "Rationale": "faith"},
        E: {"Rating": e, "Rationale": "ethics"}}}


def _vlf(i: int) -> dict:
    return {"id": f"q{i}", "prompt": f"Describe picture {i}.", "models": ["a", "b"], "img_path": f"img{i % 3}.png",
            "completions": [_completion("a", f"answer {i} a", "5", "5", "5"), _completion("b", f"answer {i} b")]}


VLF_CASES = [
    Case("no id", _drop("id")),
    Case("no prompt", _drop("prompt"), "missing field(s) prompt"),
    Case("no img_path", _drop("img_path"), "missing field(s) img_path"),
    Case("no completions", _drop("completions"), "missing field(s) completions"),
    Case("prompt int", _set(("prompt",), 3), "field 'prompt' must be text, got int"),
    Case("prompt whitespace", _set(("prompt",), " \t "), "field 'prompt' is empty"),
    Case("img_path list", _set(("img_path",), ["img0.png"]), "field 'img_path' must be text"),
    Case("completions empty", _set(("completions",), []), "must be a non-empty list of completions"),
    Case("completions text", _set(("completions",), "answers"), "must be a non-empty list of completions"),
    Case("completions dict", _set(("completions",), {"model": "a"}), "must be a non-empty list of completions"),
    Case("completion not an object", _set(("completions", 1), 7), "completion 1: expected a completion object", 1),
    Case("response null", _set(("completions", 0, "response"), None), "completion 0: missing field(s) response", 0),
    Case("response missing", _drop("completions", 0, "response"), "completion 0: missing field(s) response", 0),
    Case("response int", _set(("completions", 0, "response"), 5), "field 'response' must be text, got int", 0),
    Case("response empty", _set(("completions", 0, "response"), ""), "field 'response' is empty", 0),
    Case("model int", _set(("completions", 0, "model"), 5), "field 'model' must be text, got int", 0),
    Case("model missing", _drop("completions", 0, "model")),
    Case("annotations text", _set(("completions", 0, "annotations"), "good"), "'annotations' must be an object", 0),
    Case("annotations list", _set(("completions", 1, "annotations"), [{"Rating": "4"}]),
         "'annotations' must be an object of aspects, got list", 1),
    Case("aspect not an object", _set(("completions", 0, "annotations", H), "4"), "must be an object with Rating", 0),
    Case("rationale int", _set(("completions", 0, "annotations", H, "Rationale"), 4), "Helpfulness.Rationale", 0),
    Case("every completion broken", lambda r: {**r, "completions": [5, None]},
         "no completion can be imported: completion 0: expected a completion object, got int"),
    Case("no annotations", _drop("completions", 1, "annotations")),
    Case("rating 4.5", _set(("completions", 1, "annotations", H, "Rating"), "4.5")),
    Case("rating ten", _set(("completions", 1, "annotations", H, "Rating"), "ten")),
    Case("rating -3", _set(("completions", 1, "annotations", H, "Rating"), "-3")),
    Case("rating 10", _set(("completions", 1, "annotations", H, "Rating"), "10")),
    Case("rating 7", _set(("completions", 1, "annotations", H, "Rating"), "7")),
    Case("rating N/A", _set(("completions", 1, "annotations", H, "Rating"), "N/A")),
    Case("rating true", _set(("completions", 1, "annotations", H, "Rating"), True)),
    Case("rating float", _set(("completions", 1, "annotations", H, "Rating"), 4.0)),
    Case("rating int", _set(("completions", 1, "annotations", H, "Rating"), 2)),
    Case("unicode", _set(("completions", 0, "response"), "円が二つ 🙂 \u200f")),
    Case("lone surrogate", _set(("prompt",), "\udfff?"), "not valid UTF-8"),
    Case("duplicate id, same content", lambda r: _vlf(100), "repeats vlfeedback.json record 1"),
    Case("duplicate id, other content", _set(("id",), "q100"), "same id as, but different content from"),
    Case("record is a list", _replace([]), "expected a JSON object, got list"),
    *_image_cases("img_path")[:5],
]
# completion b's (Helpfulness, Visual Faithfulness) after the case: a malformed rating is missing, never guessed
WANTED = {"rating 4.5": (None, 3), "rating ten": (None, 3), "rating -3": (None, 3), "rating 10": (None, 3),
          "rating 7": (None, 3), "rating N/A": (None, 3), "rating true": (None, 3), "rating float": (None, 3),
          "rating int": (2, 3), "no annotations": (None, None)}
# what the feedback stage's log says of completion b's ratings that are stored as missing
UNREAD = {"rating 4.5": "Helpfulness Rating '4.5' is not a whole number from 1 to 5",
          "rating ten": "Helpfulness Rating 'ten' is not", "rating -3": "Helpfulness Rating '-3' is not",
          "rating 10": "Helpfulness Rating '10' is not", "rating 7": "Helpfulness Rating '7' is not",
          "rating N/A": "Helpfulness Rating 'N/A' is not", "rating true": "Helpfulness Rating True is not",
          "rating float": "Helpfulness Rating 4.0 is not",
          "no annotations": "no Helpfulness Rating; no Visual Faithfulness Rating; no Ethical Considerations Rating"}


def test_vlfeedback_fuzzed_records(tmp_path, images):
    good = [_vlf(100 + i) for i in range(2)]
    faulty = [case.mutate(_vlf(i)) for i, case in enumerate(VLF_CASES)]
    (tmp_path / "vlfeedback.json").write_text("".join(json.dumps(r) + "\n" for r in good + faulty))
    pairs = import_data("vlfeedback", tmp_path / "vlfeedback.json", tmp_path / "run", images)
    store = RunStore(tmp_path / "run")
    responses, feedback = store.stage("responses"), store.stage("feedback")
    _check_import(pairs, VLF_CASES, len(good), lambda i: f"vlfeedback.json record {len(good) + i + 1}",
                  log_stage=responses)
    assert pairs.errors() == []  # each bad record logged once, where it was read
    kept = [(r, c.completion) for r, c in zip(faulty, VLF_CASES, strict=True) if not c.skip] + [(r, None) for r in good]
    texts = {r["id"]: r["response"] for r in responses.rows()}
    # a record with one broken completion keeps the others, with their ratings
    assert sorted(texts.values()) == sorted(c["response"] for r, broken in kept
                                            for k, c in enumerate(r["completions"]) if k != broken)
    rated = {texts[f["response_id"]] for f in feedback.rows()}
    for i, case in enumerate(VLF_CASES):
        if case.completion is not None:
            assert f"answer {i} {'ab'[1 - case.completion]}" in rated, case.name
    # every rating stored as missing is logged once, with the record, the completion and the value, and counted
    unread = {texts[e["id"]]: e["error"] for e in feedback.errors()}
    assert sorted(unread) == sorted(f"answer {[c.name for c in VLF_CASES].index(name)} b" for name in UNREAD)
    for name, reason in UNREAD.items():
        i = [c.name for c in VLF_CASES].index(name)
        assert f"vlfeedback.json record {len(good) + i + 1} completion 1: {reason}" in unread[f"answer {i} b"], name
    assert pairs.manifest["import"]["ratings_missing"] == len(UNREAD) - 1 + 3
    assert feedback.manifest["missing_ratings"]["answers"] == len(UNREAD)
    models = {r["response"]: r["model"] for r in responses.rows()}
    no_model = [c.name for c in VLF_CASES].index("model missing")
    assert models[f"answer {no_model} a"] == ""  # an empty model name, as before
    ratings = {texts[f["response_id"]]: json.loads(f["details"])["ratings"] for f in feedback.rows()}
    for i, case in enumerate(VLF_CASES):
        if case.name in WANTED:  # and the record is kept
            assert (ratings[f"answer {i} b"][H], ratings[f"answer {i} b"][VF]) == WANTED[case.name], case.name
    assert all(isinstance(r["response"], str) and r["response"].strip() for r in responses.rows())
    assert {(p["chosen"], p["rejected"]) for p in pairs.rows()} >= {("answer 100 a", "answer 100 b")}


# ---------------------------------------------------------------- RLAIF-V


def _rlaif(i: int) -> dict:
    return {"ds_name": "demo", "image": {"bytes": base64.b64encode(_png(COLORS[i % 3])).decode(), "path": None},
            "question": f"question {i}?", "chosen": f"chosen {i}.", "rejected": f"rejected {i}.",
            "origin_dataset": "o", "origin_split": "train", "idx": i, "image_path": f"img{i % 3}.png"}


RLAIF_CASES = [
    Case("no question", _drop("question"), "missing field(s) question"),
    Case("chosen null", _set(("chosen",), None), "missing field(s) chosen"),
    Case("question int", _set(("question",), 17), "field 'question' must be text, got int"),
    Case("chosen list", _set(("chosen",), ["a"]), "field 'chosen' must be text, got list"),
    Case("rejected whitespace", _set(("rejected",), "  "), "field 'rejected' is empty"),
    Case("image bytes garbage", _set(("image", "bytes"), base64.b64encode(b"junk").decode()), "is not an image"),
    Case("image bytes not base64", _set(("image", "bytes"), "%%%"), "not base64"),
    Case("image by path", _set(("image",), {"bytes": None, "path": "img1.png"})),
    Case("image path outside", _set(("image",), {"bytes": None, "path": "../outside.png"}), "lies outside"),
    Case("no image at all", lambda r: {**r, "image": None, "image_path": None}, "no image"),
    Case("huge idx", _set(("idx",), 2 ** 70)),
    Case("meta surrogate", _set(("ds_name",), "\ud800"), "not valid UTF-8"),
    Case("duplicate", lambda r: _rlaif(100), "repeats rlaif.jsonl record 1"),
]


def test_rlaif_v_fuzzed_json_lines(tmp_path, images):
    faulty = [case.mutate(_rlaif(i)) for i, case in enumerate(RLAIF_CASES)]
    good = [_rlaif(100)]
    src = images / "rlaif.jsonl"  # the image paths of the records are relative to the data file's folder
    src.write_text("".join(json.dumps(r) + "\n" for r in good + faulty))
    stage = import_data("rlaif-v", src, tmp_path / "run")
    _check_import(stage, RLAIF_CASES, len(good), lambda i: f"rlaif.jsonl record {len(good) + i + 1}")
    kept = [r for r, c in zip(faulty, RLAIF_CASES, strict=True) if not c.skip] + good
    assert sorted(r["instruction"] for r in stage.rows()) == sorted(r["question"] for r in kept)


def test_rlaif_v_parquet_faults(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    rows = [{**_rlaif(i), "image": {"bytes": _png(COLORS[i % 3]), "path": None}} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), folder / "a_good.parquet")
    pq.write_table(pa.Table.from_pylist([{**r, "question": i} for i, r in enumerate(rows)]), folder / "b_int.parquet")
    (folder / "c_cut.parquet").write_bytes((folder / "a_good.parquet").read_bytes()[:300])
    (folder / "d_records.jsonl").write_text(json.dumps({**_rlaif(7)}) + "\n")  # JSON among the parquet files
    stage = import_data("rlaif-v", folder, tmp_path / "run")
    assert sorted(r["instruction"] for r in stage.rows()) == ["question 0?", "question 1?", "question 2?",
                                                              "question 7?"]
    errors = {e["id"]: e["error"] for e in stage.errors()}
    assert sorted(errors) == ["b_int.parquet group 0 row 0", "b_int.parquet group 0 row 1",
                              "b_int.parquet group 0 row 2", "c_cut.parquet"]
    assert "field 'question' must be text, got int" in errors["b_int.parquet group 0 row 0"]
    assert "not a readable Parquet file" in errors["c_cut.parquet"]
    assert stage.manifest["import"]["skipped"] == 4


# ---------------------------------------------------------------- files nothing can be read from, in part or whole


def _import(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """`vlalign import ARGS` through `cli.main` (an error is one line and exit code 2): (code, stderr unwrapped)."""
    code, _, err = _main(monkeypatch, capsys, "import", *args)
    return code, "".join(err.split())


def _parquet(path: Path, n: int = 3) -> Path:
    pq.write_table(pa.Table.from_pylist([{**_rlaif(i), "image": {"bytes": _png(COLORS[i % 3]), "path": None}}
                                         for i in range(n)]), path)
    return path


@pytest.mark.parametrize("format, name, write, reason", [
    ("rlaif-v", "cut.parquet", lambda p: p.write_bytes(_parquet(p).read_bytes()[:300]),
     "not a readable Parquet file"),
    ("rlaif-v", "fake.parquet", lambda p: p.write_bytes(b"PAR1" + b"\x00" * 200), "not a readable Parquet file"),
    ("povid", "object.json", lambda p: p.write_text(json.dumps({"data": [_povid(0), _povid(1)]}, indent=1)),
     "the file is one JSON object, not a list of records"),
    ("vlfeedback", "object.json", lambda p: p.write_text(json.dumps({"records": [_vlf(0)]})),
     "the file is one JSON object, not a list of records"),
    ("povid", "utf16.json", lambda p: p.write_bytes(json.dumps([_povid(0)]).encode("utf-16")),
     "the file is not UTF-8 text: byte 0 is 0xff; save it as UTF-8"),
    ("povid", "latin1.jsonl", lambda p: p.write_bytes(b"\xe9t\xe9 " * 40), "not valid JSON"),
    ("povid", "numbers.json", lambda p: p.write_text("[1, 2, 3]"), "expected a JSON object, got int"),
    ("povid", "empty-list.json", lambda p: p.write_text("[]"), "holds no records"),
    ("vlfeedback", "deep.jsonl", lambda p: p.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}\n"),
     "line 1: nested deeper than a JSON reader follows"),
    ("vlfeedback", "deep.json", lambda p: p.write_text("[" * 100_000 + "]" * 100_000),
     "record 1: nested deeper than a JSON reader follows"),
])
def test_a_file_no_record_can_be_read_from_is_an_error_naming_it(tmp_path, images, monkeypatch, capsys, format, name,
                                                                  write, reason):
    src = images / name
    write(src)
    code, err = _import(monkeypatch, capsys, str(src), "--out", str(tmp_path / "run"), "--format", format)
    assert code == 2 and err.startswith("error:"), err
    assert "".join(f"no record can be read from {src}".split()) in err or "holdsnorecords" in err
    assert "".join(reason.split()) in err and "Traceback" not in err


def test_a_partly_readable_file_imports_what_it_can_and_says_how_much_it_lost(tmp_path, images, monkeypatch, capsys):
    src = tmp_path / "povid.json"
    text = json.dumps([_povid(i) for i in range(4)], indent=1)
    src.write_text(text[:text.index('"p2"') + 3])  # cut inside record 3
    code, err = _import(monkeypatch, capsys, str(src), "--out", str(tmp_path / "run"), "--format", "povid",
                      "--images", str(images))
    assert code == 0 and "importedtwopairs" not in err
    assert "imported2pairs" in err and "1recordsskipped" in err and "1ofthemunreadable" in err
    [error] = RunStore(tmp_path / "run").stage("pairs").errors()
    cut = text.index('"p2"') + 3
    assert "charactersunread" in "".join(error["error"].split()) and f"of its {cut:,} characters unread" in error["error"]


def test_a_json_line_nested_too_deep_is_one_skipped_record(tmp_path, images):
    src = tmp_path / "povid.jsonl"
    src.write_text(json.dumps(_povid(0)) + "\n" + '{"id": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
                   + json.dumps(_povid(1)) + "\n")
    stage = import_data("povid", src, tmp_path / "run", images)
    assert len(stage.rows()) == 2
    [error] = stage.errors()
    assert error["id"] == "povid.jsonl record 2" and "povid.jsonl line 2: nested deeper" in error["error"]
    deep = tmp_path / "deep.json"  # in a JSON list the records before it are kept, and the rest is named as lost
    deep.write_text("[" + json.dumps(_povid(0)) + ", " + "[" * 100_000 + "]" * 100_000 + ", " + json.dumps(_povid(1))
                    + "]")
    stage = import_data("povid", deep, tmp_path / "run2", images)
    assert len(stage.rows()) == 1 and "record 2: nested deeper" in stage.errors()[0]["error"]
    assert "characters unread" in stage.errors()[0]["error"]


@pytest.mark.parametrize("format", ["povid", "vlfeedback", "rlaif-v"])
def test_importing_changed_data_into_the_same_run_is_refused_naming_the_change(tmp_path, images, format):
    if format == "rlaif-v":
        src = tmp_path / "src"
        src.mkdir()
        _parquet(src / "a.parquet")
    else:
        src = tmp_path / f"{format}.jsonl"
        src.write_text("".join(json.dumps((_povid if format == "povid" else _vlf)(i)) + "\n" for i in range(3)))
    before = sorted(r["chosen"] for r in import_data(format, src, tmp_path / "run", images).rows())
    assert sorted(r["chosen"] for r in import_data(format, src, tmp_path / "run", images).rows()) == before
    os.utime(src, ns=(1, 1))  # touched, not changed: the import goes on
    assert len(import_data(format, src, tmp_path / "run", images).rows()) == len(before)
    if format == "rlaif-v":
        _parquet(src / "b.parquet", 4)
        change = "b.parquet is new"
    else:
        src.write_text(src.read_text().replace("answer 1 a", "answer 1 z").replace("A shape 1.", "A shape 7."))
        change = f"{src.name} holds other bytes than when it was written"  # an edit of the same size
    with pytest.raises(ValueError) as e:
        import_data(format, src, tmp_path / "run", images)
    text = str(e.value)
    assert change in text and str(tmp_path / "run") in text and "into a new --out" in text
    fresh = sorted(r["chosen"] for r in import_data(format, src, tmp_path / "new", images).rows())
    assert fresh != before  # the fix it names imports the new content
