"""Importing released preference data (RLAIF-V-Dataset parquet, POVID JSON, VLFeedback JSON lines) into a run
directory, and exporting runs back to POVID's and VLFeedback's formats."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlalign.data.images import content_hash
from vlalign.data.store import RunStore
from vlalign.feedback.ratings import ASPECTS
from vlalign.formats.export import export_povid, export_vlfeedback
from vlalign.formats.imports import import_data, import_povid, import_rlaif_v, import_vlfeedback, parse_rating

H, VF, E = "Helpfulness", "Visual Faithfulness", "Ethical Considerations"


def _image(color: tuple[int, int, int], size: int = 8) -> Image.Image:
    return Image.new("RGB", (size, size), color)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _image_files(run: Path) -> list[Path]:
    return sorted((run / "images").glob("*.png"))


# ---------------------------------------------------------------- RLAIF-V-Dataset parquet

RED, BLUE, GREEN = _image((255, 0, 0)), _image((0, 0, 255)), _image((0, 255, 0))


def _rlaif_row(i: int, image: Image.Image, chosen: str | None) -> dict:
    return {"ds_name": "demo", "image": {"bytes": _png(image), "path": f"img{i}.png"},
            "question": f"question {i}?", "chosen": chosen, "rejected": f"rejected {i}.",
            "origin_dataset": "origin", "origin_split": "train", "idx": i, "image_path": f"img{i}.png"}


@pytest.fixture
def rlaif_parquet(tmp_path) -> Path:
    # rows 0 and 2 show the same picture; row 1 has no chosen answer
    rows = [_rlaif_row(0, RED, "chosen 0."), _rlaif_row(1, BLUE, None), _rlaif_row(2, RED, "chosen 2.")]
    path = tmp_path / "src" / "RLAIF-V-Dataset_000.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_import_rlaif_v(rlaif_parquet, tmp_path):
    run = tmp_path / "run"
    stage = import_rlaif_v(rlaif_parquet, run)
    rows = sorted(stage.rows(), key=lambda r: r["instruction"])
    assert [(r["instruction"], r["chosen"], r["rejected"]) for r in rows] == [
        ("question 0?", "chosen 0.", "rejected 0."), ("question 2?", "chosen 2.", "rejected 2.")]
    assert {r["method"] for r in rows} == {"rlaif_v"}
    assert json.loads(rows[1]["meta"]) == {"ds_name": "demo", "origin_dataset": "origin", "origin_split": "train",
                                           "idx": 2, "image_path": "img2.png"}
    # the same picture is stored once, under its content hash; the bad row's picture not at all
    assert rows[0]["image"] == rows[1]["image"] == content_hash(RED)
    assert _image_files(run) == [run / "images" / f"{content_hash(RED)}.png"]
    # the bad row is logged with its position (file, row group, row) and the reason
    errors = stage.errors()
    assert len(errors) == 1
    assert errors[0]["id"] == "RLAIF-V-Dataset_000.parquet group 0 row 1"
    assert "missing field(s) chosen" in errors[0]["error"]
    assert stage.is_complete and stage.manifest["errors"] == 1


def test_import_rlaif_v_from_a_folder_via_import_data(rlaif_parquet, tmp_path):
    stage = import_data("rlaif-v", rlaif_parquet.parent, tmp_path / "run")
    assert len(stage.rows()) == 2


def test_import_twice_writes_every_record_once(rlaif_parquet, tmp_path):
    run = tmp_path / "run"
    first = sorted(r["id"] for r in import_rlaif_v(rlaif_parquet, run).rows())
    stage = import_rlaif_v(rlaif_parquet, run)
    ids = [r["id"] for r in stage.rows()]
    assert sorted(ids) == first and len(ids) == 2
    assert stage.counts() == {"rows": 2, "shards": 1}  # the second run wrote no shard


# ---------------------------------------------------------------- POVID JSON


def _conv(question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]


@pytest.fixture
def povid_source(tmp_path) -> tuple[Path, Path]:
    images = tmp_path / "povid_images"
    images.mkdir()
    RED.save(images / "a.png")
    BLUE.save(images / "b.png")
    records = [
        {"id": "p0", "image": "a.png", "conversations": _conv("What is shown?", "A red square."),
         "rejected_conversations": _conv("What is shown?", "A red square and a dog.")},
        {"id": "p1", "image": "b.png", "conversations": _conv("What colour is it?", "Blue."),
         "rejected_conversations": _conv("What colour is it?", "Green.")},
        {"id": "p2", "image": "missing.png", "conversations": _conv("Anything?", "Yes."),
         "rejected_conversations": _conv("Anything?", "No.")},
    ]
    src = tmp_path / "povid.json"
    src.write_text(json.dumps(records))
    return src, images


def _triples(stage) -> set[tuple[str, str, str]]:
    return {(r["instruction"], r["chosen"], r["rejected"]) for r in stage.rows()}


EXPECTED_POVID = {("What is shown?", "A red square.", "A red square and a dog."),
                  ("What colour is it?", "Blue.", "Green.")}


def test_import_povid_and_round_trip(povid_source, tmp_path):
    src, images = povid_source
    stage = import_povid(src, tmp_path / "run", images)
    assert _triples(stage) == EXPECTED_POVID
    rows = {r["prompt_id"]: r for r in stage.rows()}
    assert rows["p0"]["image"] == content_hash(RED) and rows["p1"]["image"] == content_hash(BLUE)
    assert {r["method"] for r in rows.values()} == {"povid"}
    errors = stage.errors()
    assert len(errors) == 1 and errors[0]["id"] == "povid.json record 3"
    assert "missing.png does not exist" in errors[0]["error"]

    out = export_povid(tmp_path / "run", tmp_path / "export")
    exported = json.loads((out / "povid.json").read_text())
    assert len(exported) == 2
    assert all(r["conversations"][0]["value"].startswith("<image>\n") for r in exported)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(
        f"{content_hash(im)}.png" for im in (RED, BLUE))
    # the export imports back with --images naming the export folder, or with no --images at all
    for run, folder in (("run2", out), ("run3", None)):
        again = import_povid(out / "povid.json", tmp_path / run, folder)
        assert _triples(again) == EXPECTED_POVID
        assert again.errors() == [] and again.manifest["import"]["skipped"] == 0
    # the export's ids are the pair ids, which the re-import keeps as prompt ids
    assert {r["prompt_id"] for r in again.rows()} == {r["id"] for r in stage.rows()}


def test_import_povid_json_lines_with_a_bad_line(povid_source, tmp_path):
    src, images = povid_source
    records = json.loads(src.read_text())
    lines = tmp_path / "povid.jsonl"
    lines.write_text(json.dumps(records[0]) + "\n{not json\n\n" + json.dumps(records[1]) + "\n")
    stage = import_data("povid", lines, tmp_path / "run", images)
    assert _triples(stage) == EXPECTED_POVID
    errors = stage.errors()
    assert [e["id"] for e in errors] == ["povid.jsonl record 2"]
    assert "line 2: not valid JSON" in errors[0]["error"]


# ---------------------------------------------------------------- VLFeedback JSON lines


def _completion(model: str, response: str, h: str, vf: str, e: str) -> dict:
    return {"model": model, "response": response, "annotations": {
        H: {"Rating": h, "Rationale": f"{model} help"}, VF: {"Rating": vf, "Rationale": f"{model} faith"},
        E: {"Rating": e, "Rationale": f"{model} ethics"}}}


# Prompt q1: A (4, 5, 5) mean 14/3; B (2, 3, 5) mean 10/3; C (4, N/A, 5) no mean -> no pair.
# Prompt q2: D (5, 2, 5) mean 4; E (3, 4, 5) mean 4; F (1, 4, 4) mean 3.
# Pairs by mean (C(n,2) of the scored ones, ties dropped): q1: A>B. q2: D=E tie dropped, D>F, E>F.
# Pairs by Visual Faithfulness: q1: A(5)>B(3) (C has none). q2: E(4)>D(2), F(4)>D(2), E=F tie dropped.
VLF_RECORDS = [
    {"id": "q1", "prompt": "Describe the image.", "models": ["ma", "mb", "mc"], "img_path": "one.png",
     "completions": [_completion("ma", "answer A", "4", "5", "5"), _completion("mb", "answer B", "2", "3", "5"),
                     _completion("mc", "answer C", "4", "N/A", "5")]},
    {"id": "q2", "prompt": "What is here?", "models": ["md", "me", "mf"], "img_path": "two.png",
     "completions": [_completion("md", "answer D", "5", "2", "5"), _completion("me", "answer E", "3", "4", "5"),
                     _completion("mf", "answer F", "1", "4", "4")]},
]
PAIRS_BY_MEAN = {("answer A", "answer B"), ("answer D", "answer F"), ("answer E", "answer F")}
PAIRS_BY_VF = {("answer A", "answer B"), ("answer E", "answer D"), ("answer F", "answer D")}


@pytest.fixture
def vlf_source(tmp_path) -> tuple[Path, Path]:
    images = tmp_path / "vlf_images"
    images.mkdir()
    RED.save(images / "one.png")
    GREEN.save(images / "two.png")
    src = tmp_path / "vlfeedback.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in VLF_RECORDS))
    return src, images


def _ratings(run: Path) -> dict[str, dict]:
    """Response text -> ratings, from a run's responses and feedback stages."""
    store = RunStore(run)
    texts = {r["id"]: r["response"] for r in store.stage("responses").rows()}
    return {texts[f["response_id"]]: json.loads(f["details"])["ratings"] for f in store.stage("feedback").rows()}


def test_parse_rating():
    assert [parse_rating(v) for v in ("4", " 5 ", 1, "N/A", None, "7", "0", "4.5", "")] == [
        4, 5, 1, None, None, None, None, None, None]


def test_import_vlfeedback_stages_and_pairs(vlf_source, tmp_path):
    src, images = vlf_source
    run = tmp_path / "run"
    pairs = import_vlfeedback(src, run, images)
    store = RunStore(run)
    responses = {r["id"]: r for r in store.stage("responses").rows()}
    assert sorted(responses) == ["q1/0", "q1/1", "q1/2", "q2/0", "q2/1", "q2/2"]
    assert responses["q1/2"]["response"] == "answer C" and responses["q1/2"]["model"] == "mc"
    assert responses["q1/0"]["image"] == content_hash(RED) and responses["q2/0"]["image"] == content_hash(GREEN)
    assert len(_image_files(run)) == 2

    feedback = {f["response_id"]: f for f in store.stage("feedback").rows()}
    assert feedback["q1/0"]["score"] == pytest.approx(14 / 3)
    assert feedback["q1/2"]["score"] is None  # the N/A rating leaves the mean missing
    details = json.loads(feedback["q1/2"]["details"])
    assert details["ratings"] == {H: 4, VF: None, E: 5} and details["missing"] == [VF]
    assert details["rationales"][VF] == "mc faith"

    rows = pairs.rows()
    assert {(r["chosen"], r["rejected"]) for r in rows} == PAIRS_BY_MEAN
    assert len(rows) == 3 and {r["method"] for r in rows} == {"vlfeedback"}
    by_text = {(r["chosen"], r["rejected"]): r for r in rows}
    assert by_text[("answer A", "answer B")]["chosen_score"] == pytest.approx(14 / 3)
    assert by_text[("answer A", "answer B")]["rejected_score"] == pytest.approx(10 / 3)
    assert by_text[("answer E", "answer F")]["instruction"] == "What is here?"


def test_import_vlfeedback_by_one_aspect(vlf_source, tmp_path):
    src, images = vlf_source
    pairs = import_vlfeedback(src, tmp_path / "run", images, aspect=VF)
    assert {(r["chosen"], r["rejected"]) for r in pairs.rows()} == PAIRS_BY_VF
    with pytest.raises(ValueError, match="unknown aspect"):
        import_vlfeedback(src, tmp_path / "run-bad", images, aspect="Style")


def test_vlfeedback_export_round_trip(vlf_source, tmp_path):
    src, images = vlf_source
    import_vlfeedback(src, tmp_path / "run", images)
    out = export_vlfeedback(tmp_path / "run", tmp_path / "export")
    exported = {r["id"]: r for r in json.loads((out / "vlfeedback.json").read_text())}
    assert sorted(exported) == ["q1", "q2"]
    c = exported["q1"]["completions"][2]
    assert c["model"] == "mc" and c["annotations"][VF] == {"Rating": "N/A", "Rationale": "mc faith"}
    assert c["annotations"][H] == {"Rating": "4", "Rationale": "mc help"}
    assert exported["q1"]["models"] == ["ma", "mb", "mc"]
    assert (out / exported["q1"]["img_path"]).exists()

    pairs = import_vlfeedback(out / "vlfeedback.json", tmp_path / "run2", out)
    assert _ratings(tmp_path / "run2") == _ratings(tmp_path / "run")
    assert _ratings(tmp_path / "run2")["answer C"] == {H: 4, VF: None, E: 5}
    assert {(r["chosen"], r["rejected"]) for r in pairs.rows()} == PAIRS_BY_MEAN


def test_vlfeedback_export_needs_ratings(tmp_path, povid_source):
    src, images = povid_source
    import_povid(src, tmp_path / "run", images)
    with pytest.raises(ValueError, match="no 'responses' and 'feedback' stages"):
        export_vlfeedback(tmp_path / "run", tmp_path / "export")


def test_vlfeedback_import_twice_writes_once(vlf_source, tmp_path):
    src, images = vlf_source
    import_vlfeedback(src, tmp_path / "run", images)
    pairs = import_vlfeedback(src, tmp_path / "run", images)
    store = RunStore(tmp_path / "run")
    assert store.stage("responses").counts()["rows"] == 6
    assert store.stage("feedback").counts()["rows"] == 6
    assert len(pairs.rows()) == 3


# ---------------------------------------------------------------- errors


def test_import_data_errors(tmp_path, povid_source):
    src, _ = povid_source
    with pytest.raises(ValueError, match=r"unknown import format 'llava'; choose one of rlaif-v, povid, vlfeedback"):
        import_data("llava", src, tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="nowhere.json does not exist"):
        import_data("povid", tmp_path / "nowhere.json", tmp_path / "run")
    empty = tmp_path / "empty.json"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="is empty"):
        import_data("povid", empty, tmp_path / "run")


def test_missing_images_folder_is_named(povid_source, tmp_path):
    src, _ = povid_source
    stage = import_povid(src, tmp_path / "run")  # no --images: the relative paths do not resolve
    assert stage.rows() == []
    assert len(stage.errors()) == 3
    assert all("--images" in e["error"] for e in stage.errors())


def test_aspects_constant():
    assert ASPECTS == (H, VF, E)


def test_imported_pairs_train_with_vlalign_dpo(rlaif_parquet, tmp_path, tiny_world_model_dir):
    from typer.testing import CliRunner

    from vlalign.cli import app

    run = tmp_path / "run"
    import_rlaif_v(rlaif_parquet, run)
    config = tmp_path / "dpo.yaml"
    config.write_text("batch_size: 2\noptim: {lr: 1.0e-3, log_every: 1}\n")
    out = tmp_path / "trained"
    result = CliRunner().invoke(app, ["dpo", str(run), "--policy", str(tiny_world_model_dir), "--out", str(out),
                                      "--config", str(config), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    history = json.loads((out / "training" / "train_history.json").read_text())
    assert history["n_pairs"] == 2 and history["config"]["epochs"] == 2 and len(history["history"]) == 2
    assert (out / "policy" / "model.safetensors").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["dpo", str(empty), "--policy", str(tiny_world_model_dir), "--out", str(out)])
    assert result.exit_code != 0 and "no preference pairs found" in str(result.exception)
