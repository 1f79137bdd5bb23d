"""The run report on small runs written by hand (`report_runs`): every page and file is there and opens
offline, the pair viewer's data holds what made each preference, the world's highlights come through the
plugin registry, the demo's page compares every method, and bad input gets one clear message."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import report_runs
from typer.testing import CliRunner

from vlalign.cli import app
from vlalign.data.records import PromptRecord
from vlalign.report import MARKER, write_report

PAGES = ("index.html", "metrics.html", "training.html", "pairs.html", "errors.html")
LINK = re.compile(r"""(?:src|href)="([^"#]*)(?:#([^"]*))?\"""")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, Path]:
    root = report_runs.collection(tmp_path_factory.mktemp("report") / "demo")
    return root, write_report(root).parent


def _pairs(report: Path, slug: str = "set0") -> list[dict]:
    text = (report / "data" / f"{slug}.js").read_text()
    return json.loads(text[text.index("] = ") + 4:].rstrip().rstrip(";"))


def test_every_page_links_only_files_inside_the_report(demo):
    root, report = demo
    assert (report / MARKER).exists() and (report / "index.html").exists()
    for run in ("rlaif_v", "silkie", "povid"):
        for page in PAGES:
            assert (report / run / page).exists(), (run, page)
    for html in report.rglob("*.html"):
        text = html.read_text()
        assert "http://" not in text and "https://" not in text, html  # no CDN, no web font: opens offline
        for target, anchor in LINK.findall(text):
            if target:
                assert (html.parent / target).resolve().is_file(), (html, target)
                assert report in (html.parent / target).resolve().parents, (html, target)
            if anchor:
                linked = (html.parent / target) if target else html
                assert f'id="{anchor}"' in linked.read_text(), (html, anchor)
    for asset in ("style.css", "pairs.js"):
        text = (report / "rlaif_v" / asset).read_text()
        assert "http://" not in text and "https://" not in text and "@import" not in text
    assert report_runs.SECRET not in "".join(p.read_text() for p in report.rglob("*.html"))  # config is redacted


def test_overview_shows_method_models_stages_errors_and_versions(demo):
    _, report = demo
    page = (report / "rlaif_v" / "index.html").read_text()
    for text in ("rlaif-v", "world:labeler", "round1/feedback", "round1/pairs", "round1: training (policy)",
                 "round1: saving and evaluation (policy)", "transformers", "labeler: world:labeler"):
        assert text in page, text
    assert 'href="errors.html#stage-round1-feedback"' in page  # the stage's errors are linked
    errors = (report / "rlaif_v" / "errors.html").read_text()
    assert 'id="stage-round1-feedback"' in errors and "the labeler&#39;s answer could not be read" in errors


def test_metrics_and_training_pages_have_their_plots_and_tables(demo):
    _, report = demo
    metrics = (report / "silkie" / "metrics.html").read_text()
    for label in ("base", "round 1 (final)", "round 1 longest"):
        assert f"<th>{label}</th>" in metrics, label
    assert "the base&#39;s metrics are the collection&#39;s" in metrics  # the demo's base, evaluated once
    svg = (report / "silkie" / "plots" / "metrics-0.svg").read_text()
    assert svg.startswith("<?xml") and "<svg" in svg
    training = (report / "povid" / "training.html").read_text()
    assert 'src="plots/training.svg"' in training and 'src="plots/training-other.svg"' in training
    assert "loss_nll" in training


def test_rlaif_v_pairs_carry_claims_and_the_scene_marks(demo):
    _, report = demo
    rows = _pairs(report / "rlaif_v")
    first = next(r for r in rows if r["prompt_id"] == "world-prompts-0")
    assert first["source"] == "world/describe" and first["gap"] == 2.0
    assert first["chosen"]["model"] == "policy@round1" and first["rejected"]["model"] == "bad"
    claim = first["rejected"]["claims"][0]
    assert claim["question"] == "is there a red heart in the image?" and claim["p_yes"] == 0.02 and claim["rejected"]
    text = first["rejected"]["text"]
    marked = {text[s:e]: kind for s, e, kind, _ in first["rejected"]["marks"]}
    assert marked == {"red heart": "attribute", "green star": "hallucinated"}
    assert first["chosen"]["marks"] == []
    assert (report / "rlaif_v" / first["image"]).is_file()


def test_silkie_pairs_carry_the_judges_ratings_with_rationales(demo):
    _, report = demo
    sets = (report / "silkie" / "data" / "sets.js").read_text()
    assert sets.index("round1/pairs") < sets.index("round1/longest/pairs")  # the round's main pairs first
    rejected = _pairs(report / "silkie")[0]["rejected"]
    assert rejected["ratings"] == {"Ethical Considerations": 5, "Helpfulness": 5, "Visual Faithfulness": 2}
    assert rejected["rationales"]["Visual Faithfulness"] == "names a star that is absent."
    longest = _pairs(report / "silkie", "set1")[0]
    assert longest["method"] == "longest" and longest["rejected"]["ratings"]  # the judge's view of the baseline


def test_povid_pairs_carry_the_edits_as_a_diff_and_the_noised_image(demo):
    _, report = demo
    row = _pairs(report / "povid")[0]
    assert row["edits"] == ["attribute: yellow -> red", "object: add star"]
    assert ["del", "yellow"] in row["diff"] and ["ins", "red"] in row["diff"] and ["eq", " heart"] in row["diff"]
    assert "".join(t for op, t in row["diff"] if op != "ins") == row["chosen"]["text"]
    assert "".join(t for op, t in row["diff"] if op != "del") == row["rejected"]["text"]
    assert row["chosen"]["model"] == "ground truth" and row["rejected"]["model"] == "injected"
    assert row["noised"].startswith("images/noised/") and (report / "povid" / row["noised"]).is_file()
    assert "step 500 of 1000" in row["noise"]


def test_the_demo_page_compares_every_method(demo):
    _, report = demo
    page = (report / "index.html").read_text()
    for label in ("base", "rlaif_v", "silkie", "silkie_longest", "povid"):
        assert f"<th>{label}</th>" in page, label
    assert 'src="plots/compare.svg"' in page and (report / "plots" / "compare.svg").exists()
    assert 'href="rlaif_v/index.html"' in page and "method_seconds" not in page
    assert 'href="../index.html"' in (report / "povid" / "index.html").read_text()


def test_world_marks_come_through_the_registry():
    from vlalign.plugins import ANSWER_MARKERS
    from vlalign.report.marks import mark_answer
    from vlalign.world.text import split_words, word_spans

    assert "world" in ANSWER_MARKERS.names()
    scene = report_runs.SCENES[0]
    prompt = PromptRecord("p", "h", "describe the image.", meta={"scene": scene.to_dict()})
    text = "There is no star. A red heart, and a blue triangle; a green  stars!"
    marks = mark_answer(text, prompt)
    assert [(text[s:e], kind) for s, e, kind, _ in marks] == [("red heart", "attribute"), ("green  stars", "hallucinated")]
    assert mark_answer(text, PromptRecord("q", "h", "describe the image.")) is None  # no scene: no opinion
    assert [w for w, _, _ in word_spans(text)] == split_words(text)
    assert all(text[s:e].lower() == w for w, s, e in word_spans(text))


def test_report_cli_writes_where_asked_and_replaces_only_a_report(tmp_path):
    from vlalign.data.store import RunStore

    run = report_runs.claimed(RunStore(tmp_path / "run"), "povid").root
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / "r" / "index.html")
    again = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "r")])
    assert again.exit_code == 0, again.output  # an earlier report is replaced
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="is not a vlalign report, so it is left as it is"):
        write_report(run, tmp_path / "notes")
    with pytest.raises(ValueError, match="cannot replace"):
        write_report(run, run)
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep"


def test_bad_input_gets_one_clear_message(tmp_path, monkeypatch):
    from vlalign.cli import main
    from vlalign.progress import console

    monkeypatch.setattr("sys.argv", ["vlalign", "report", str(tmp_path / "nope")])
    with console.capture() as captured, pytest.raises(SystemExit) as stop:
        main()
    message = " ".join(captured.get().split())  # the console wraps long lines
    assert stop.value.code == 2 and message.startswith("error: ") and "Traceback" not in message
    assert "nope does not exist; pass a run directory (the --out of `vlalign run` or `vlalign demo`)" in message
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="is not a run directory"):
        write_report(tmp_path / "plain")


def test_a_run_with_no_pairs_yet_still_gets_a_report(tmp_path):
    from vlalign.data.store import RunStore

    store = report_runs.claimed(RunStore(tmp_path / "run"), "rlaif-v")
    report_runs.prompts(store)
    report = write_report(store.root).parent
    page = (report / "pairs.html").read_text()
    assert 'id="no-pairs"' in page and "no preference pairs found under" in page
    assert "nothing trained yet" in (report / "index.html").read_text()
    assert "No metrics yet" in (report / "metrics.html").read_text()
