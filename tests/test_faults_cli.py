"""Faults met through the command line: each ends in one line that names the file and the fix (exit 2),
never a traceback; records that cannot be used are reported with their line and skipped."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from vlalign import cli
from vlalign.data.records import PairRecord
from vlalign.data.store import RunStore


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`vlalign ARGS` in this process, through `cli.main` (whose handler turns errors into one line)."""
    monkeypatch.setattr(sys, "argv", ["vlalign", *args])
    monkeypatch.delenv("VLALIGN_DEBUG", raising=False)
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def _flat(text: str) -> str:
    """`text` without whitespace: rich wraps long lines wherever it likes (even inside a path)."""
    return "".join(text.split())


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and lines and lines[0].startswith("error:"), err
    return _flat(err)


@pytest.fixture
def pairs_run(tmp_path):
    store = RunStore(tmp_path / "run")
    image = store.images.put(Image.new("RGB", (8, 8), (200, 10, 10)))
    store.stage("pairs").write_shard([PairRecord(id=f"q{i}", prompt_id=f"p{i}", image=image, instruction="what?",
                                                 chosen="a red square.", rejected="a dog.", method="x").to_row()
                                      for i in range(2)])
    return tmp_path / "run", image


def test_a_second_run_on_a_directory_stops_at_once_in_one_line(tmp_path):
    store = RunStore(tmp_path / "run")
    args = [sys.executable, "-m", "vlalign.cli", "run", "rlaif-v", "--out", str(store.root), "policy=world:base",
            "labeler=self", "prompts.source=world", "splitter=world"]
    with store.lock():
        proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    text = _one_error_line(proc.stderr)
    assert _flat(f"the run directory {store.root} is being written by another process") in text
    assert _flat("run the same command again") in text and not (store.root / "round1").exists()


def test_export_to_a_file_or_a_foreign_folder_is_one_line(pairs_run, tmp_path, monkeypatch, capsys):
    run, _ = pairs_run
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    for fmt in ("trl", "povid"):
        code, _, err = _main(monkeypatch, capsys, "export", str(run), "--out", str(tmp_path / "a_file"), "--format", fmt)
        assert code == 2 and _flat("is a file; pass a new or empty directory") in _one_error_line(err)
        code, _, err = _main(monkeypatch, capsys, "export", str(run), "--out", str(tmp_path / "notes"), "--format", fmt)
        assert code == 2 and _flat("is not an earlier export of this format") in _one_error_line(err)
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["mine.txt"]
    code, out, _ = _main(monkeypatch, capsys, "export", str(run), "--out", str(tmp_path / "povid"), "--format", "povid")
    assert code == 0 and out.strip() == str(tmp_path / "povid")
    code, _, _ = _main(monkeypatch, capsys, "export", str(run), "--out", str(tmp_path / "povid"), "--format", "povid")
    assert code == 0, "an earlier export of the same format is replaced"


def test_export_with_a_missing_image_names_it(pairs_run, tmp_path, monkeypatch, capsys):
    run, image = pairs_run
    (run / "images" / f"{image}.png").unlink()
    code, _, err = _main(monkeypatch, capsys, "export", str(run), "--out", str(tmp_path / "trl"))
    text = _one_error_line(err)
    assert code == 2 and image in text and _flat("is missing") in text and not (tmp_path / "trl").exists()


def test_generate_reports_bad_lines_and_missing_images_with_their_line(tmp_path, tiny_world_model_dir, monkeypatch,
                                                                       capsys):
    Image.new("RGB", (48, 48), (0, 90, 200)).save(tmp_path / "ok.png")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join([json.dumps({"image": "ok.png", "instruction": "describe the image."}),
                                  "{not json",
                                  json.dumps({"image": "gone.png", "instruction": "describe the image."}),
                                  json.dumps({"instruction": "no image here."})]) + "\n")
    code, out, err = _main(monkeypatch, capsys, "generate", "--model", str(tiny_world_model_dir), "--prompts",
                           str(prompts), "--max-new-tokens", "4", "--dtype", "fp32")
    assert code == 0, err
    text = _flat(err)
    assert _flat(f"{prompts} line 2: not valid JSON") in text
    assert _flat("line 3: image") in text and _flat("gone.png does not exist") in text
    assert _flat(f"{prompts} line 4: no 'image' field") in text
    [answer] = [json.loads(line) for line in out.splitlines()]
    assert answer["image"].endswith("ok.png")


def test_import_reports_what_it_skipped(tmp_path, monkeypatch, capsys):
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "a.png")
    conv = [{"from": "human", "value": "<image>\nwhat?"}, {"from": "gpt", "value": "red."}]
    records = [{"id": "p0", "image": "a.png", "conversations": conv,
                "rejected_conversations": [conv[0], {"from": "gpt", "value": "a dog."}]},
               {"id": "p1", "image": "missing.png", "conversations": conv, "rejected_conversations": conv}]
    (tmp_path / "povid.json").write_text(json.dumps(records))
    code, out, err = _main(monkeypatch, capsys, "import", str(tmp_path / "povid.json"), "--out", str(tmp_path / "run"),
                           "--format", "povid")
    text = _flat(err)
    assert code == 0 and _flat("imported 1 pairs") in text and _flat("1 records skipped") in text
    assert _flat(str(tmp_path / "run" / "pairs" / ".errors.jsonl")) in text
    with RunStore(tmp_path / "run").lock():
        code, _, err = _main(monkeypatch, capsys, "import", str(tmp_path / "povid.json"), "--out",
                             str(tmp_path / "run"), "--format", "povid")
    assert code == 2 and _flat("is being written by another process") in _one_error_line(err)
