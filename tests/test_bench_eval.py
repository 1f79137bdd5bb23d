"""`vlalign eval` on real benchmarks' question formats, with hand-made files and a tiny world model."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from vlalign.cli import app
from vlalign.evaluate.benchmarks import BENCHMARKS, EvalInputs

DATA = Path(__file__).parent / "data" / "bench"


def image(path: Path | None = None, color: str = "red") -> Image.Image:
    img = Image.new("RGB", (20, 20), color)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
    return img


def questions(bench: str, **kw):
    return BENCHMARKS[bench].questions(EvalInputs(**kw))


def test_pope_questions_from_official_files_and_from_coco(tmp_path):
    image(tmp_path / "img" / "a.jpg")
    official = tmp_path / "coco_pope_adversarial.json"  # POPE's files are JSON lines, split in the name
    official.write_text('{"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?", '
                        '"label": "yes"}\n')
    (q,) = questions("pope", data=official, images=tmp_path / "img")
    assert (q.prompt, q.record) == ("Is there a dog in the image?",
                                    {"image": "a.jpg", "label": "yes", "category": "adversarial"})
    assert q.image().size == (20, 20)
    coco = tmp_path / "instances_val2014.json"
    names = ["person", "dog", "frisbee", "car", "bus", "truck"]
    coco.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "categories": [{"id": i, "name": n} for i, n in enumerate(names)],
        "annotations": [{"image_id": 1 + i // 3, "category_id": i} for i in range(6)]}))
    built = questions("pope", data=coco, images=tmp_path / "img", limit=2)
    # 2 images x 3 positives x 2 (each with a negative) x 3 splits; negatives of a.jpg are b.jpg's objects
    assert len(built) == 36
    first = [q.record for q in built if q.record["category"] == "popular" and q.record["image"] == "a.jpg"]
    assert [(r["object"], r["label"]) for r in first][::2] == [("person", "yes"), ("dog", "yes"), ("frisbee", "yes")]
    assert {r["object"] for r in first[1::2]} == {"car", "bus", "truck"}


def test_missing_image_names_the_line_and_the_fix(tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text('{"image": "gone.jpg", "text": "Is there a cat?", "label": "no", "category": "random"}\n')
    (q,) = questions("pope", data=data, images=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"q.jsonl, line 1: image 'gone.jpg' not found .* pass --images"):
        q.image()


def test_mme_folder_amber_queries_mmhal_template_and_chair_base64(tmp_path):
    tool = tmp_path / "eval_tool"
    tool.mkdir()
    (tool / "existence.txt").write_text("1.png\tIs there a dog? Please answer yes or no.\tYes\n"
                                        "1.png\tIs there a cat? Please answer yes or no.\tNo\n")
    image(tmp_path / "MME" / "existence" / "1.png")
    mme = questions("mme", data=tool, images=tmp_path / "MME")
    assert [q.record for q in mme] == [{"image": "1.png", "category": "existence", "label": "yes"},
                                       {"image": "1.png", "category": "existence", "label": "no"}]
    assert mme[0].image().size == (20, 20)

    query = tmp_path / "query_all.json"
    query.write_text(json.dumps([{"id": 1, "image": "AMBER_1.jpg", "query": "Describe this image."},
                                 {"id": 1005, "image": "AMBER_1.jpg", "query": "Is there a dog in this image?"}]))
    amber = questions("amber", data=query)
    assert [(q.question_id, q.long) for q in amber] == [(1, True), (1005, False)]

    mmhal = questions("mmhal", data=DATA / "mmhal_template.json", limit=1)
    assert mmhal[0].record["image"] == "dog.jpg" and mmhal[0].record["question_type"] == "attribute"

    buf = io.BytesIO()
    image(color="blue").save(buf, format="PNG")
    chair_q = tmp_path / "objhal.jsonl"
    chair_q.write_text(json.dumps({"image_id": 1, "question": "Describe it.",
                                   "image": base64.b64encode(buf.getvalue()).decode()}) + "\n")
    (q,) = questions("chair", data=chair_q)
    assert q.image().getpixel((0, 0)) == (0, 0, 255) and "image" not in q.record  # no base64 in answers


def test_eval_pope_end_to_end(tmp_path, tiny_world_model_dir):
    for name in ("a.jpg", "b.jpg"):
        image(tmp_path / "img" / name)
    data = tmp_path / "coco_pope_random.json"
    data.write_text('{"question_id": 1, "image": "a.jpg", "text": "is there a circle in the image?", "label": "yes"}\n'
                    '{"question_id": 2, "image": "b.jpg", "text": "is there a star in the image?", "label": "no"}\n')
    out = tmp_path / "pope.json"
    result = CliRunner().invoke(app, ["eval", "pope", "--model", str(tiny_world_model_dir), "--data", str(data),
                                      "--images", str(tmp_path / "img"), "--out", str(out),
                                      "--answers", str(tmp_path / "answers.jsonl")])
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [a["label"] for a in answers] == ["yes", "no"] and metrics["random_n"] == 2
    assert metrics["splits"] == ["random"] and 0.0 <= metrics["accuracy"] <= 1.0
