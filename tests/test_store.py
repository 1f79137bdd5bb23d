"""The run store: records, images by hash, atomic shards, and stages that resume after a real kill."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import _stage_worker as worker
import datasets
import pytest
from PIL import Image

from vlalign.data.images import ImageStore, content_hash
from vlalign.data.records import FeedbackRecord, PairRecord, PromptRecord, ResponseRecord, stable_id
from vlalign.data.store import RunStore, Stage, run_stage
from vlalign.world.render import render
from vlalign.world.scene import sample_scene

RECORDS = [
    PromptRecord(id="p1", image="a" * 64, instruction="describe the image.", reference="a red circle.",
                 source="world", meta={"scene": {"seed": 1}, "split": "prompts"}),
    PromptRecord(id="p2", image="b" * 64, instruction="is there a star?", reference=None, source="world"),
    ResponseRecord(id="r1", prompt_id="p1", image="a" * 64, instruction="describe the image.",
                   response="a red circle and a square.", model="world:base", seed=3, meta={"t": 1.0}),
    ResponseRecord(id="r2", prompt_id="p1", image="a" * 64, instruction="describe the image.",
                   response="a red circle.", model="pool/a", seed=None),
    FeedbackRecord(id="f1", response_id="r1", prompt_id="p1", score=-1.0,
                   details={"claims": ["there is a square."], "rejected": [0]}, meta={"labeler": "x"}),
    FeedbackRecord(id="f2", response_id="r2", prompt_id="p1", score=None),
    PairRecord(id="q1", prompt_id="p1", image="a" * 64, instruction="describe the image.",
               chosen="a red circle.", rejected="a red circle and a square.", chosen_score=0.0,
               rejected_score=-1.0, method="rlaif_v", meta={"gap": 1}),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: f"{type(r).__name__}-{r.id}")
def test_record_round_trip(record):
    row = record.to_row()
    assert all(not isinstance(v, dict) for v in row.values()), "dicts are stored as JSON strings"
    assert type(record).from_row(row) == record
    assert type(record).from_row(json.loads(json.dumps(row))) == record


def test_records_round_trip_through_a_stage(tmp_path):
    for cls in (PromptRecord, ResponseRecord, FeedbackRecord, PairRecord):
        kind = [r for r in RECORDS if isinstance(r, cls)]
        stage = RunStore(tmp_path).stage(cls.__name__.lower())
        for part in (kind[:1], kind[1:]):
            if part:
                stage.write_shard([r.to_row() for r in part])
        assert stage.records(cls) == kind
        assert isinstance(stage.dataset(), datasets.Dataset)


def test_scores_are_floats_even_when_given_as_ints():
    row = FeedbackRecord(id="f", response_id="r", prompt_id="p", score=3).to_row()
    assert isinstance(row["score"], float)


def test_stable_id_is_deterministic_and_short():
    assert stable_id("p1", "world:base", 3) == stable_id("p1", "world:base", 3)
    assert stable_id("p1", "world:base", 3) != stable_id("p1", "world:base", 4)
    assert stable_id("a", "bc") != stable_id("ab", "c")
    assert len(stable_id("x")) == 16


def test_images_are_stored_once_by_content(tmp_path):
    images = ImageStore(tmp_path)
    image = render(sample_scene(0))
    h1 = images.put(image)
    h2 = images.put(image.copy())
    h3 = images.put(image.convert("RGBA"))  # same picture, other mode: same content
    assert h1 == h2 == h3 == content_hash(image)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [f"{h1}.png"]
    back = images.get(h1)
    assert back.mode == "RGB" and back.tobytes() == image.convert("RGB").tobytes()
    assert images.put(render(sample_scene(1))) != h1
    assert len(list((tmp_path / "images").iterdir())) == 2


def test_missing_or_corrupt_image_errors_name_hash_path_and_fix(tmp_path):
    images = ImageStore(tmp_path)
    missing = "0" * 64
    with pytest.raises(FileNotFoundError) as err:
        images.get(missing)
    assert missing in str(err.value) and str(images.path(missing)) in str(err.value)
    assert "delete the stage that stored the image" in str(err.value)

    h = images.put(render(sample_scene(2)))
    images.path(h).write_bytes(b"not a png")
    with pytest.raises(ValueError, match="corrupt") as err:
        images.get(h)
    assert h in str(err.value) and str(images.path(h)) in str(err.value)

    Image.new("RGB", (48, 48), "white").save(images.path(h))  # decodes, but is not the stored picture
    with pytest.raises(ValueError, match="do not match its hash"):
        images.get(h)
    with pytest.raises(ValueError, match="not an image hash"):
        images.get("../escape")


def test_shard_writes_are_atomic(tmp_path, monkeypatch):
    stage = RunStore(tmp_path).stage("s")
    stage.write_shard([{"id": "a", "value": 1}])

    def crash(self, path, *args, **kwargs):
        Path(path).write_bytes(b"PAR1 half a shard")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(datasets.Dataset, "to_parquet", crash)
    with pytest.raises(KeyboardInterrupt):
        stage.write_shard([{"id": "b", "value": 2}])
    monkeypatch.undo()
    assert [p.name for p in stage.shards()] == ["shard-00000.parquet"]
    assert not list(stage.dir.glob(".*.tmp"))
    assert stage.done_ids() == {"a"}


def test_leftover_temporary_files_are_ignored_and_cleaned(tmp_path):
    stage = RunStore(tmp_path).stage("s")
    stage.write_shard([{"id": "a", "value": 1}])
    leftover = stage.dir / ".shard-00001.parquet.x1y2.tmp"  # what a kill during a write leaves behind
    leftover.write_bytes(b"PAR1 half")
    assert stage.rows() == [{"id": "a", "value": 1}]
    run_stage(stage, [2], lambda b: [{"id": str(i), "value": i} for i in b], id_of=str, quiet=True)
    assert not leftover.exists()
    assert sorted(r["id"] for r in stage.rows()) == ["2", "a"]


def test_columns_that_start_all_none_read_back_typed(tmp_path):
    stage = RunStore(tmp_path).stage("s")
    stage.write_shard([{"id": "a", "reference": None, "score": None}])
    stage.write_shard([{"id": "b", "reference": "text", "score": 2.5}])
    ds = stage.dataset()
    assert ds.features["reference"] == datasets.Value("string")
    assert ds["score"] == [None, 2.5]


def test_manifest_records_what_produced_the_stage(tmp_path):
    stage = RunStore(tmp_path).stage("responses")
    result = run_stage(stage, range(7), lambda b: worker.make_rows(b), id_of=worker.item_id, batch_size=2,
                       shard_size=3, quiet=True,
                       manifest={"config": {"n": 7, "temperature": 1.0}, "model": "world:base", "seed": 5})
    assert (result.written, result.already_done, result.failed) == (7, 0, 0)
    m = stage.manifest
    assert m["config"] == {"n": 7, "temperature": 1.0} and m["model"] == "world:base" and m["seed"] == 5
    assert set(m["versions"]) == {"vlalign", "torch", "transformers", "datasets", "peft", "python"}
    assert m["versions"]["datasets"] == datasets.__version__
    assert m["counts"] == {"rows": 7, "shards": 3}
    assert m["complete"] is True and stage.is_complete and m["errors"] == 0
    assert m["created"] <= m["updated"]

    again = run_stage(stage, range(7), lambda b: worker.make_rows(b), id_of=worker.item_id, quiet=True,
                      manifest={"config": {"n": 7, "temperature": 1.0}})
    assert (again.written, again.already_done) == (0, 7)
    with pytest.raises(ValueError, match="different config"):
        run_stage(stage, range(7), worker.make_rows, id_of=worker.item_id, quiet=True,
                  manifest={"config": {"n": 7, "temperature": 0.5}})


def test_secrets_never_reach_the_manifest(tmp_path):
    stage = RunStore(tmp_path).stage("judged")
    stage.write_manifest(config={"judge": {"base_url": "http://localhost:8000/v1", "api_key": "sk-secret"},
                                 "hf_token": "hf_abc", "max_new_tokens": 64})
    text = (stage.dir / ".manifest.json").read_text()
    assert "sk-secret" not in text and "hf_abc" not in text
    assert stage.manifest["config"]["max_new_tokens"] == 64
    assert stage.manifest["config"]["judge"]["base_url"] == "http://localhost:8000/v1"


def test_nothing_is_ever_doubled(tmp_path):
    stage = RunStore(tmp_path).stage("s")

    def sloppy(batch):  # returns one row twice and a row that is already written
        rows = [{"id": f"x{i}", "value": i} for i in batch]
        return rows + rows[:1] + [{"id": "x0", "value": 0}]

    run_stage(stage, range(10), sloppy, id_of=lambda i: f"x{i}", batch_size=4, shard_size=3, quiet=True)
    run_stage(stage, range(12), sloppy, id_of=lambda i: f"x{i}", batch_size=4, shard_size=3, quiet=True)
    ids = [r["id"] for r in stage.rows()]
    assert len(ids) == len(set(ids)) == 12


def test_items_that_produce_several_records(tmp_path):
    stage = RunStore(tmp_path).stage("samples")
    prompts = ["p0", "p1", "p2"]

    def sample(batch):
        return [{"id": f"{p}-s{k}", "prompt_id": p, "seed": k} for p in batch for k in range(2)]

    calls = []
    run_stage(stage, prompts[:2], sample, id_of=lambda p: [f"{p}-s0", f"{p}-s1"], quiet=True)
    run_stage(stage, prompts, lambda b: calls.append(b) or sample(b), id_of=lambda p: [f"{p}-s0", f"{p}-s1"],
              quiet=True)
    assert calls == [["p2"]]
    assert len(stage.rows()) == 6


class Killed(BaseException):
    """Stands in for an abrupt stop (not an Exception, so no per-record error handling catches it)."""


def test_items_with_a_varying_number_of_records_resume_exactly_once(tmp_path):
    stage = RunStore(tmp_path).stage("pairs")
    calls: list[list[int]] = []
    kill_at = [4]  # the first run dies on its 4th batch; later runs are left alone

    def pairs(batch):  # item i yields i % 3 records: none, one or two
        calls.append(batch)
        if len(calls) == kill_at[0]:
            kill_at[0] = -1
            raise Killed("killed midway")
        return [{"id": f"{i}-{k}", "prompt": i} for i in batch for k in range(i % 3)]

    def run():
        return run_stage(stage, range(30), pairs, id_of=str, batch_size=4, shard_size=5, per_item_output=False,
                         quiet=True)

    with pytest.raises(Killed):
        run()
    finished = stage.done_items()
    assert finished and finished <= {str(i) for i in range(12)}
    calls.clear()
    run()
    assert not {str(i) for batch in calls for i in batch} & finished
    counts = Counter(r["id"] for r in stage.rows())
    assert set(counts) == {f"{i}-{k}" for i in range(30) for k in range(i % 3)} and set(counts.values()) == {1}
    calls.clear()
    run()
    assert calls == [], "items with no records are remembered as done too"


def test_a_failing_record_is_logged_counted_and_skipped(tmp_path, capsys):
    stage = RunStore(tmp_path).stage("feedback")

    def judge(batch):
        if 7 in batch:
            raise RuntimeError("unparsable judge answer: 'maybe'")
        return worker.make_rows(batch)

    result = run_stage(stage, range(20), judge, id_of=worker.item_id, batch_size=4, shard_size=6,
                       description="judge")
    assert result.failed == 1 and result.written == 19
    ids = sorted(r["id"] for r in stage.rows())
    assert ids == sorted(worker.item_id(i) for i in range(20) if i != 7)
    errors = [json.loads(line) for line in (stage.dir / ".errors.jsonl").read_text().splitlines()]
    assert [e["id"] for e in errors] == ["item-0007"]
    assert "unparsable judge answer" in errors[0]["error"]
    assert stage.manifest["errors"] == 1 and stage.is_complete
    assert "skipped record item-0007" in capsys.readouterr().err

    run_stage(stage, range(20), worker.make_rows, id_of=worker.item_id, quiet=True)  # the judge recovered
    assert len(stage.rows()) == 20 and stage.manifest["errors"] == 0


def test_one_writer_per_stage(tmp_path):
    stage = RunStore(tmp_path).stage("s")
    with stage.lock(), pytest.raises(RuntimeError, match="another process"):
        run_stage(Stage(stage.dir), range(3), worker.make_rows, id_of=worker.item_id, quiet=True)


def test_stage_names_are_plain(tmp_path):
    store = RunStore(tmp_path)
    for bad in ("", "images", "../x", ".hidden", "a//b", "images/x"):
        with pytest.raises(ValueError):
            store.stage(bad)
    store.stage("prompts").write_manifest()
    store.stage("empty")
    nested = store.stage("iter1/pairs")
    nested.write_manifest()
    assert [s.dir.relative_to(tmp_path).as_posix() for s in store.stages()] == ["iter1/pairs", "prompts"]
    assert Stage(nested.dir).images.dir == store.images.dir, "a nested stage finds its run's images"


def test_stage_resumes_after_a_real_kill(tmp_path):
    n = 200
    stage_dir = tmp_path / "run" / "responses"
    worker.run_and_kill(stage_dir, n, 0.1, lambda: len(Stage(stage_dir).shards()) >= 2)

    stage = Stage(stage_dir)
    written_before = len(stage.done_ids())
    assert worker.SHARD_SIZE <= written_before < n
    assert not stage.is_complete

    result = worker.run(str(stage_dir), n)
    assert result.already_done == written_before and result.written == n - written_before
    counts = Counter(r["id"] for r in stage.rows())
    assert set(counts) == {worker.item_id(i) for i in range(n)}
    assert set(counts.values()) == {1}
    assert stage.is_complete and stage.manifest["counts"]["rows"] == n


def test_a_stage_whose_first_records_all_fail_alike_stops_with_that_error(tmp_path):
    """The same exception on every record from the start is the setup's fault: the stage stops and says so,
    instead of skipping every record; failures that differ by record are skipped one by one."""
    from vlalign.data.store import SYSTEMATIC, SystematicFailure

    store = RunStore(tmp_path / "run")

    def broken(batch):
        raise AttributeError("TokenizersBackend has no attribute tokenizer")

    with pytest.raises(SystematicFailure, match="first 5 records all failed with AttributeError.*TokenizersBackend"):
        run_stage(store.stage("a"), list(range(20)), broken, id_of=str, batch_size=4, quiet=True)
    assert len(store.stage("a").errors()) == SYSTEMATIC

    def bad_records(batch):
        raise ValueError(f"record {batch[0]}: no image")

    result = run_stage(store.stage("b"), list(range(8)), bad_records, id_of=str, batch_size=1, quiet=True)
    assert result.failed == 8 and result.written == 0
