"""`export_trl` writes pairs in TRL's vision preference format, and `trl.DPOTrainer` trains on it as it is."""

from __future__ import annotations

import math

import datasets
import numpy as np
import pytest
import torch

from vlalign.data.records import PairRecord, PromptRecord, stable_id
from vlalign.data.store import RunStore, run_stage
from vlalign.formats.export import export, export_trl, find_pair_stages
from vlalign.world.render import render
from vlalign.world.scene import sample_scene
from vlalign.world.text import caption, describe_task


def _write(stage, records):
    run_stage(stage, records, lambda batch: [r.to_row() for r in batch], id_of=lambda r: r.id, quiet=True)


def build_run(root, n_pairs: int = 4) -> RunStore:
    """A run with a prompts stage and a pairs stage over world scenes."""
    store = RunStore(root)
    prompts, pairs = [], []
    for i in range(n_pairs):
        scene, rng = sample_scene(i, split="prompts"), np.random.default_rng(i)
        task = describe_task(scene, rng)
        image = store.images.put(render(scene))
        prompt = PromptRecord(id=stable_id(scene.id, task.instruction), image=image,
                              instruction=task.instruction, reference=task.answer, source="world")
        prompts.append(prompt)
        wrong = caption(sample_scene(1000 + i, split="prompts"), rng)
        pairs.append(PairRecord(id=stable_id(prompt.id, task.answer, wrong), prompt_id=prompt.id, image=image,
                                instruction=task.instruction, chosen=task.answer, rejected=wrong,
                                chosen_score=1.0, rejected_score=0.0, method="test"))
    _write(store.stage("prompts"), prompts)
    _write(store.stage("pairs"), pairs)
    return store


def test_export_writes_trl_conversational_vision_format(tmp_path):
    store = build_run(tmp_path / "run")
    assert find_pair_stages(store.root) == [store.root / "pairs"]
    assert find_pair_stages(store.root / "pairs") == [store.root / "pairs"]
    assert find_pair_stages(store.root / "prompts") == []

    out = export_trl(store.root, tmp_path / "trl")
    ds = datasets.load_from_disk(str(out))
    assert {"prompt", "chosen", "rejected", "images"} <= set(ds.column_names)
    assert ds.features["images"] == datasets.List(datasets.Image())
    pairs = {p.id: p for p in store.stage("pairs").records(PairRecord)}
    assert len(ds) == len(pairs) == 4
    for row in ds:
        pair = pairs[row["id"]]
        assert row["prompt"] == [{"role": "user", "content": [
            {"type": "image", "text": None}, {"type": "text", "text": pair.instruction}]}]
        assert row["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": pair.chosen}]}]
        assert row["rejected"] == [{"role": "assistant", "content": [{"type": "text", "text": pair.rejected}]}]
        [image] = row["images"]
        assert image.tobytes() == store.images.get(pair.image).tobytes()

    again = export(store.root / "pairs", tmp_path / "trl", format="trl")  # replaces the earlier export
    assert len(datasets.load_from_disk(str(again))) == 4


def test_export_gathers_pairs_of_nested_stages(tmp_path):
    store = build_run(tmp_path / "run", n_pairs=2)
    moved = store.stage("iter2/pairs")
    _write(moved, [PairRecord(id="extra", prompt_id="p", image=p.image, instruction=p.instruction,
                              chosen=p.rejected, rejected=p.chosen, method="swap")
                   for p in store.stage("pairs").records(PairRecord)[:1]])
    assert find_pair_stages(store.root) == [store.root / "iter2" / "pairs", store.root / "pairs"]
    ds = datasets.load_from_disk(str(export_trl(store.root, tmp_path / "trl")))
    assert len(ds) == 3 and "extra" in ds["id"]


def test_export_errors_say_what_was_looked_for(tmp_path):
    store = build_run(tmp_path / "run", n_pairs=1)
    with pytest.raises(ValueError, match="no preference pairs found under") as err:
        export_trl(store.root / "prompts", tmp_path / "out")
    assert str(store.root / "prompts") in str(err.value) and "'chosen' and 'rejected'" in str(err.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_trl(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        export_trl(store.root, tmp_path / "taken")
    with pytest.raises(ValueError, match="unknown export format"):
        export(store.root, tmp_path / "out", format="csv")


def test_trl_dpo_trainer_trains_on_the_export_as_it_is(tmp_path, tiny_world_model_dir):
    from transformers import AutoProcessor
    from trl import DPOConfig, DPOTrainer

    store = build_run(tmp_path / "run", n_pairs=4)
    dataset = datasets.load_from_disk(str(export_trl(store.root, tmp_path / "trl")))
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo"), per_device_train_batch_size=2, max_steps=2, learning_rate=1e-3,
        logging_steps=1, report_to=[], save_strategy="no",
        bf16=False,  # DPOConfig defaults to bf16=True, which fails on a machine without a GPU
    )
    trainer = DPOTrainer(model=str(tiny_world_model_dir), args=args, train_dataset=dataset,
                         processing_class=AutoProcessor.from_pretrained(tiny_world_model_dir))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    result = trainer.train()

    assert result.global_step == 2
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    changed = [n for n, p in trainer.model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert any("language_model" in n for n in changed) and any("vision" in n for n in changed)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen2_vl", "idefics3", "qwen3_vl", "qwen3_vl_moe", "internvl", "gemma4", "glm4v",
                                  "glm46v", "llava_onevision1_5"])
def test_trl_trains_on_the_export_with_other_families(tmp_path, arch):
    """The export carries no model-specific tokens, so TRL's DPOTrainer trains on it with any family's
    processor (tiny checkpoints of each, saved as real ones). On the mixture of experts TRL adds the routers'
    loss with the coefficient vlalign takes by the same convention."""
    from tiny_archs import ARCHS
    from trl import DPOConfig, DPOTrainer

    from vlalign.models.load import save
    from vlalign.models.moe import is_moe, router_coefficient
    from vlalign.models.processors import load_processor

    model, processor = ARCHS[arch]()
    path = save(model, processor, tmp_path / arch)
    store = build_run(tmp_path / "run", n_pairs=4)
    dataset = datasets.load_from_disk(str(export_trl(store.root, tmp_path / "trl")))
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), per_device_train_batch_size=2, max_steps=2,
                     learning_rate=1e-3, logging_steps=1, report_to=[], save_strategy="no", bf16=False, use_cpu=True)
    trainer = DPOTrainer(model=str(path), args=args, train_dataset=dataset, processing_class=load_processor(path))
    result = trainer.train()
    assert result.global_step == 2
    assert all(math.isfinite(log["loss"]) for log in trainer.state.log_history if "loss" in log)
    assert trainer.router_aux_loss_coef == router_coefficient(model, None)
    logged = [log for log in trainer.state.log_history if "loss" in log]
    assert all(("aux_loss" in log) == is_moe(model) for log in logged)
