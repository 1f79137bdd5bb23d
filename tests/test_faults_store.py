"""Faults of the run store: a kill mid-stage, shards copied or damaged by hand, edited manifests, a second
writer, and runs made before the side files were renamed. Each ends in the right rows or in one message
that names the file and the fix."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter

import _stage_worker as worker
import pyarrow.parquet as pq
import pytest

from vlalign.data.shards import CorruptShard, DuplicateRecords
from vlalign.data.store import Busy, RecordErrors, RunStore, Stage, run_stage


def _stage(tmp_path, name="s") -> Stage:
    return RunStore(tmp_path / "run").stage(name)


def _fill(stage: Stage, n: int = 12, **kwargs) -> None:
    run_stage(stage, range(n), worker.make_rows, id_of=worker.item_id, batch_size=4, shard_size=4, quiet=True,
              **kwargs)


@pytest.mark.parametrize("kill_after", [3, 7, 11])
def test_a_kill_loses_at_most_the_batch_in_flight(tmp_path, kill_after):
    """96 items in batches of 8 fit one shard of 256: before the open shard was rewritten per batch, a kill
    lost every record of the stage; now at most the batch that was running."""
    n, batch = 96, 8
    stage_dir, calls = tmp_path / "run" / "responses", tmp_path / "calls"

    def far_enough() -> bool:
        return calls.exists() and len(calls.read_text().splitlines()) >= kill_after

    worker.run_and_kill(stage_dir, n, 0.05, far_enough, str(calls), str(batch), "256")
    started = len(calls.read_text().splitlines())  # batches begun by the time the kill landed
    stage = Stage(stage_dir)
    on_disk = len(stage.done_ids())
    assert on_disk >= (started - 1) * batch, f"{started} batches had started, only {on_disk} records survived"
    assert on_disk < n and not stage.is_complete
    result = worker.run(str(stage_dir), n, batch_size=batch, shard_size=256)
    assert result.already_done == on_disk and result.written == n - on_disk
    counts = Counter(r["id"] for r in stage.rows())
    assert set(counts) == {worker.item_id(i) for i in range(n)} and set(counts.values()) == {1}
    assert [r["value"] for r in stage.rows()] == list(range(n)), "rows keep the order of an unkilled run"


def test_shards_come_out_as_without_the_rewrites(tmp_path):
    """The open shard is rewritten per batch but closed at `shard_size` rows: 10 items, batches of 3, shards
    of 4 give shards of 4, 4 and 2 rows, in order, as before."""
    stage = _stage(tmp_path)
    run_stage(stage, range(10), worker.make_rows, id_of=worker.item_id, batch_size=3, shard_size=4, quiet=True)
    assert [r["value"] for r in stage.rows()] == list(range(10))
    assert [pq.ParquetFile(s).metadata.num_rows for s in stage.shards()] == [4, 4, 2]
    assert stage.manifest["counts"] == {"rows": 10, "shards": 3}


def test_a_copied_shard_is_read_once_with_a_warning(tmp_path, capsys):
    stage = _stage(tmp_path)
    _fill(stage)
    first = stage.shards()[0]
    shutil.copy(first, stage.dir / "shard-00000 (1).parquet")  # what a file manager's copy is called
    rows = stage.rows()
    assert len(rows) == 12 and len({r["id"] for r in rows}) == 12
    err = capsys.readouterr().err
    assert "shard-00000 (1).parquet" in err and "shard-00000.parquet" in err and "delete" in err
    assert stage.counts()["rows"] == 12
    _fill(stage, 14)  # the stage resumes past the copy, and numbers its next shard after the highest
    assert sorted(r["value"] for r in stage.rows()) == list(range(14))


def test_the_same_id_with_other_content_is_refused_naming_both_shards(tmp_path):
    stage = _stage(tmp_path)
    _fill(stage, 4)
    stage.write_shard([{"id": worker.item_id(2), "value": 99, "text": "edited"}])
    with pytest.raises(DuplicateRecords) as e:
        stage.rows()
    text = str(e.value)
    assert "item-0002" in text and "shard-00000.parquet" in text and "shard-00001.parquet" in text
    assert "delete the one that does not belong" in text


def test_a_truncated_shard_is_named_with_the_fix_and_a_resume_makes_its_records_again(tmp_path, capsys):
    stage = _stage(tmp_path)
    _fill(stage)
    damaged = stage.shards()[1]
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(CorruptShard) as e:
        stage.rows()
    assert str(damaged) in str(e.value) and "Delete it" in str(e.value)
    result = run_stage(stage, range(12), worker.make_rows, id_of=worker.item_id, batch_size=4, shard_size=4,
                       quiet=True)
    assert result.written == 4 and result.already_done == 8
    assert sorted(r["value"] for r in stage.rows()) == list(range(12))
    aside = stage.dir / f".{damaged.name}.corrupt"
    assert aside.exists() and "moved it aside" in capsys.readouterr().err


@pytest.mark.parametrize(("key", "before", "after"), [("model", "world:labeler", "world:careful"), ("seed", 1, 2),
                                                      ("config", {"n": 1}, {"n": 2})])
def test_resuming_under_another_model_seed_or_config_is_refused(tmp_path, key, before, after):
    stage = _stage(tmp_path)
    _fill(stage, 4, manifest={key: before})
    with pytest.raises(ValueError, match=f"different {key}") as e:
        _fill(stage, 8, manifest={key: after})
    assert str(stage.dir) in str(e.value) and "delete" in str(e.value)
    _fill(stage, 8, manifest={key: before})
    assert len(stage.rows()) == 8


def test_an_edited_manifest_is_refused_on_resume(tmp_path):
    stage = _stage(tmp_path)
    _fill(stage, 4, manifest={"model": "world:labeler", "seed": 0})
    path = stage.dir / ".manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "model": "edited"}))
    with pytest.raises(ValueError, match="different model"):
        _fill(stage, 8, manifest={"model": "world:labeler", "seed": 0})


def test_a_second_writer_meets_busy(tmp_path):
    stage = _stage(tmp_path)
    with stage.lock(), pytest.raises(Busy, match="another process") as e:
        _fill(Stage(stage.dir))
    assert str(stage.dir) in str(e.value) and "run the same command again" in str(e.value)
    store = RunStore(tmp_path / "run")
    with store.lock(), pytest.raises(Busy, match="the run directory"), RunStore(tmp_path / "run").lock():
        pass


def test_partial_failures_keep_the_good_rows_without_asking_again(tmp_path):
    stage = _stage(tmp_path)
    calls: list[list[int]] = []

    def process(batch):
        calls.append(list(batch))
        good = [i for i in batch if i % 5 != 3]
        raise RecordErrors(worker.make_rows(good), {k: RuntimeError(f"request {i} timed out")
                                                    for k, i in enumerate(batch) if i % 5 == 3})

    result = run_stage(stage, range(10), process, id_of=worker.item_id, batch_size=5, quiet=True)
    assert calls == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], "the good items were not processed again"
    assert result.failed == 2 and result.written == 8
    assert {e["id"] for e in stage.errors()} == {"item-0003", "item-0008"}
    assert stage.manifest["errors"] == 2
    calls.clear()
    run_stage(stage, range(10), worker.make_rows, id_of=worker.item_id, batch_size=5, quiet=True)
    assert len(stage.rows()) == 10 and stage.manifest["errors"] == 0


def test_a_stage_folder_reads_with_pandas_and_datasets(tmp_path):
    import datasets
    import pandas as pd

    stage = _stage(tmp_path)
    stage.log_error("item-0099", ValueError("a failure, so the error log exists"))
    run_stage(stage, range(30), worker.make_rows, id_of=lambda i: [worker.item_id(i)], batch_size=4,
              shard_size=8, quiet=True)
    run_stage(_stage(tmp_path, "pairs"), range(3), lambda b: [], id_of=str, per_item_output=False, quiet=True)
    assert {p.name for p in stage.dir.iterdir() if not p.name.startswith("shard-")} == {
        ".manifest.json", ".errors.jsonl", ".lock"}
    frame = pd.read_parquet(stage.dir)
    assert sorted(frame["id"]) == sorted(r["id"] for r in stage.rows())
    loaded = datasets.load_dataset("parquet", data_dir=str(stage.dir), cache_dir=str(tmp_path / "hf"))["train"]
    assert sorted(loaded["id"]) == sorted(r["id"] for r in stage.rows()) and len(loaded) == 30


def test_a_run_made_before_the_rename_is_read_and_moved_to_the_new_names(tmp_path):
    """Older runs wrote manifest.json, errors.jsonl and done_items.jsonl; they read as they are, and the next
    write of the stage moves them to the dot names (so the folder then reads with pandas too)."""
    stage = _stage(tmp_path, "pairs")
    run_stage(stage, range(6), lambda b: [{"id": f"r{i}", "v": i} for i in b if i % 2], id_of=str, batch_size=2,
              per_item_output=False, quiet=True, manifest={"config": {"rule": 1}})
    stage.log_error("x", ValueError("an old failure"))
    for new, old in ((".manifest.json", "manifest.json"), (".errors.jsonl", "errors.jsonl"),
                     (".done_items.jsonl", "done_items.jsonl")):
        os.replace(stage.dir / new, stage.dir / old)
    old = Stage(stage.dir)
    assert old.manifest["config"] == {"rule": 1} and old.done_items() == {str(i) for i in range(6)}
    assert [e["id"] for e in old.errors()] == ["x"]
    with pytest.raises(ValueError, match="different config"):
        run_stage(old, range(6), lambda b: [], id_of=str, per_item_output=False, quiet=True,
                  manifest={"config": {"rule": 2}})
    calls = []
    run_stage(old, range(8), lambda b: calls.append(b) or [], id_of=str, batch_size=2, per_item_output=False,
              quiet=True, manifest={"config": {"rule": 1}})
    assert calls == [[6, 7]]
    assert not any((stage.dir / n).exists() for n in ("manifest.json", "errors.jsonl", "done_items.jsonl"))
    assert old.done_items() == {str(i) for i in range(8)} and [e["id"] for e in old.errors()] == ["x"]
    assert RunStore(tmp_path / "run").stages()[0].dir == stage.dir
