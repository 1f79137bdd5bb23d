"""A user's prompt file with broken records: each is one skipped record, logged with its line, and the good ones
are stored; nothing raises. And what a kill leaves half-written outside the stages is cleaned."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from vlalign.data.prompts import user_prompt_stage
from vlalign.data.store import RunStore


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


GOOD_BYTES = base64.b64encode(_png((10, 200, 10))).decode()
# (record's image field, None when the record is kept, else a piece of the reason it is skipped)
CASES = [
    ({"bytes": "abc"}, "image.bytes is text but not base64"),
    ({"bytes": base64.b64encode(b"not a picture").decode()}, "the image bytes is not an image"),
    ({"bytes": base64.b64encode(_png((1, 2, 3))[:40]).decode()}, "the image bytes is not"),
    ({"bytes": 5}, "image.bytes must be image bytes"),
    ({"bytes": None, "path": None}, "no image (neither bytes nor a path)"),
    ({}, "no 'image' field"),
    (5, "field 'image' must be a path or image bytes, got int"),
    (["ok.png"], "field 'image' must be a path or image bytes, got list"),
    ({"bytes": GOOD_BYTES}, None),
    ({"bytes": None, "path": "ok.png"}, None),
    ("ok.png", None),
]


@pytest.fixture
def prompt_file(tmp_path) -> Path:
    (tmp_path / "ok.png").write_bytes(_png((200, 10, 10)))
    lines = [json.dumps({"id": f"r{i}", "image": image, "instruction": f"describe picture {i}."})
             for i, (image, _) in enumerate(CASES)]
    lines.append("[" * 100_000 + "]" * 100_000)  # too deep for a JSON reader
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_each_broken_image_field_is_one_skipped_record_with_its_line(tmp_path, prompt_file, capsys):
    store = RunStore(tmp_path / "run")
    stage = user_prompt_stage(store, store.stage("prompts"), prompt_file)
    kept = sorted(r["id"] for r in stage.rows())
    assert kept == sorted(f"r{i}" for i, (_, reason) in enumerate(CASES) if reason is None)
    errors = [e["error"] for e in stage.errors()]
    skipped = [(i, reason) for i, (_, reason) in enumerate(CASES) if reason is not None]
    assert len(errors) == len(skipped) + 1  # each broken record once, and the nested line
    for i, reason in skipped:
        line = f"line {i + 1}"
        assert any(line in e and reason in e for e in errors), (line, reason, errors)
    assert any(f"line {len(CASES) + 1}: nested deeper" in e for e in errors)
    assert "Traceback" not in capsys.readouterr().err


def test_image_bytes_are_stored_as_the_picture(tmp_path, prompt_file):
    store = RunStore(tmp_path / "run")
    rows = {r["id"]: r for r in user_prompt_stage(store, store.stage("prompts"), prompt_file).rows()}
    picture = store.images.get(rows[f"r{[c[0] for c in CASES].index({'bytes': GOOD_BYTES})}"]["image"])
    assert picture.getpixel((0, 0)) == (10, 200, 10)


def test_temporary_files_a_kill_left_are_removed_when_the_run_is_next_held(tmp_path):
    store = RunStore(tmp_path / "run")
    store.images.dir.mkdir()
    image_tmp = store.images.dir / f".{'a' * 64}.k3j2h1.tmp"  # what a kill inside ImageStore.put leaves
    image_tmp.write_bytes(b"")
    marker_tmp = store.root / ".run.json.x81kd.tmp"
    marker_tmp.write_text("{")
    kept = store.images.dir / f"{'b' * 64}.png"
    kept.write_bytes(_png((1, 1, 1)))
    with store.lock():
        assert not image_tmp.exists() and not marker_tmp.exists()
    assert kept.exists()
