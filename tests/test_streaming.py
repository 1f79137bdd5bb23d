"""Training reads pairs as a stream: a stage's pairs are read window by window from its shards, each image is
decoded when read, the shuffled order is torch's DataLoader order whenever the pairs fit in one window, and
a launched job's processes split every global batch so that their mean gradient is the batch's."""

from __future__ import annotations

import shutil

import torch
from PIL import Image
from torch.utils.data import DataLoader

import vlalign.train.examples as examples
from vlalign.data.records import PairRecord
from vlalign.data.store import RunStore
from vlalign.stages.pairs import examples_under, preference_examples
from vlalign.train.examples import PreferenceExample, Shuffled, StagePairs
from vlalign.train.loop import share_of


def _stage(root, n: int = 10, shard: int = 4):
    store = RunStore(root)
    stage = store.stage("pairs")
    rows = [PairRecord(id=f"pair-{i:02d}", prompt_id=f"p{i}", image=store.images.put(Image.new("RGB", (8, 8), (i, 0, 0))),
                       instruction=f"question {i}", chosen=f"good {i}", rejected=f"bad {i}").to_row() for i in range(n)]
    for s in range(0, n, shard):
        stage.write_shard(rows[s:s + shard])
    return stage


def test_a_stage_reads_as_its_rows_with_images_decoded_when_read(tmp_path, monkeypatch):
    stage = _stage(tmp_path / "run")
    monkeypatch.setattr(examples, "WINDOW", 3)  # several windows, and pairs read across shards
    pairs = preference_examples(stage)
    assert isinstance(pairs, StagePairs) and len(pairs) == 10
    assert [e.id for e in pairs] == [r["id"] for r in stage.rows()]
    assert pairs[7].chosen == "good 7" and pairs[-1].instruction == "question 9"
    assert pairs[4].image.getpixel((0, 0)) == (4, 0, 0)
    assert "_image" in vars(pairs[4]) and callable(vars(pairs[4])["_image"])  # a reference, not pixels


def test_a_copied_shard_and_a_second_stage_give_each_id_once(tmp_path):
    stage = _stage(tmp_path / "run")
    shutil.copy(stage.shards()[0], stage.dir / "shard-00099.parquet")
    _stage(tmp_path / "run" / "more", n=6)  # a nested stage repeating the first six ids
    assert [e.id for e in examples_under(tmp_path / "run")] == [f"pair-{i:02d}" for i in range(10)]


def test_one_window_shuffles_in_the_dataloader_order_and_more_windows_cover_each_pair_once():
    items = [PreferenceExample(f"e{i}", Image.new("RGB", (2, 2)), "q", "c", "r") for i in range(50)]
    old = DataLoader(items, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3), collate_fn=list)
    new = Shuffled(items, lambda p: {}, batch_size=8, seed=3)
    for _ in range(3):  # every pass reshuffles, as the DataLoader does
        assert [[e.id for e, _ in b] for b in new] == [[e.id for e in b] for b in old]
    windowed = [e.id for b in Shuffled(items, lambda p: {}, batch_size=8, seed=3, window=16) for e, _ in b]
    assert sorted(windowed) == sorted(e.id for e in items) and windowed != [e.id for e in items]


def test_processes_split_a_global_batch_into_weighted_shares():
    batch = list(range(8))
    assert share_of(batch, 2, 0) == ([0, 1, 2, 3], 1.0) and share_of(batch, 2, 1) == ([4, 5, 6, 7], 1.0)
    short = [share_of(list(range(5)), 2, r) for r in range(2)]
    assert short == [([0, 1], 0.8), ([2, 3, 4], 1.2)]  # (0.8 mean(0, 1) + 1.2 mean(2, 3, 4)) / 2 = mean(0..4)
    assert share_of([7], 2, 0) == ([7], 0.0) and share_of([7], 2, 1) == ([7], 2.0)  # every process takes part
    assert share_of({"input_ids": 1}, 2, 1) == ({"input_ids": 1}, 1.0)  # collated already: the whole batch
