"""LoRA and vision freezing on the tiny world LLaVA, and LoRA adapter directories through save/load."""

from __future__ import annotations

import json
import os

import pytest
import torch

from vlalign.models.batching import encode, model_inputs
from vlalign.models.load import load, resolve, save
from vlalign.models.lora import (
    LANGUAGE_PROJECTIONS,
    apply_lora,
    freeze_vision,
    is_vision_parameter,
    language_targets,
    reference_context,
)
from vlalign.models.settings import LoraSettings
from vlalign.world.render import render
from vlalign.world.scene import sample_scene


@pytest.fixture
def model_and_processor(tiny_world_model_dir):
    return load(tiny_world_model_dir, dtype="float32", device="cpu")


@pytest.fixture
def batch(model_and_processor):
    _, processor = model_and_processor
    images = [render(sample_scene(i, "prompts"), 48) for i in range(2)]
    return encode(processor, images, ["describe the image.", "is there a star?"], ["there is a red circle.", "yes"])


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**model_inputs(batch)).logits


def _perturb_lora(model, scale: float = 0.5) -> None:
    """LoRA B starts at zero; give it values so the adapter actually changes the model."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def test_freeze_vision_freezes_the_tower_only(model_and_processor):
    model, _ = model_and_processor
    tower = [n for n, _ in model.named_parameters() if ".vision_tower." in f".{n}"]
    assert tower
    assert freeze_vision(model) == len(tower)
    for name, param in model.named_parameters():
        assert param.requires_grad == (name not in tower), name
    # the projector and the decoder stay trainable
    assert any("multi_modal_projector" in n and p.requires_grad for n, p in model.named_parameters())
    assert any("language_model" in n and p.requires_grad for n, p in model.named_parameters())


def test_freeze_vision_without_a_vision_tower_raises():
    with pytest.raises(ValueError, match="no vision-encoder parameters"):
        freeze_vision(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_lora_targets_are_decoder_projections_only(model_and_processor):
    model, _ = model_and_processor
    targets = language_targets(model)
    n_layers = model.config.text_config.num_hidden_layers
    assert len(targets) == n_layers * len(LANGUAGE_PROJECTIONS)
    assert all("language_model" in t and not is_vision_parameter(t) for t in targets)
    # the CLIP tower has q/k/v projections of its own, and none of them are targets
    assert any(is_vision_parameter(n) and n.endswith("q_proj") for n, _ in model.named_modules())

    lora = apply_lora(model, LoraSettings(r=4, alpha=8))
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and not is_vision_parameter(n) for n in trainable)
    assert len(trainable) == 2 * len(targets)  # A and B per target


def test_reference_context_is_the_base_model(model_and_processor, batch):
    model, _ = model_and_processor
    base = _logits(model, batch)
    lora = apply_lora(model, LoraSettings(r=4))
    assert torch.allclose(_logits(lora, batch), base, atol=1e-6)
    _perturb_lora(lora)
    adapted = _logits(lora, batch)
    assert not torch.allclose(adapted, base, atol=1e-3)
    with reference_context(lora) as ref:
        assert torch.allclose(_logits(ref, batch), base, atol=1e-6)
    assert torch.allclose(_logits(lora, batch), adapted)
    # a model without adapters is its own reference
    plain = torch.nn.Linear(2, 2)
    with reference_context(plain) as ref:
        assert ref is plain


def test_adapter_dir_saves_and_loads_back(model_and_processor, batch, tmp_path, tiny_world_model_dir):
    model, processor = model_and_processor
    base = _logits(model, batch)
    lora = apply_lora(model, LoraSettings(r=4))
    _perturb_lora(lora)
    adapted = _logits(lora, batch)
    out = save(lora, processor, tmp_path / "adapter")

    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    assert not (out / "config.json").exists()  # only the adapter is written, not the base weights
    base_ref = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert os.path.isabs(base_ref) and resolve(base_ref) == resolve(tiny_world_model_dir)

    reloaded, processor2 = load(out, dtype="float32", device="cpu")
    assert type(reloaded).__name__ == "PeftModel"
    assert torch.allclose(_logits(reloaded, batch), adapted, atol=1e-6)
    with reference_context(reloaded) as ref:
        assert torch.allclose(_logits(ref, batch), base, atol=1e-6)
    assert processor2.tokenizer.get_vocab() == processor.tokenizer.get_vocab()


def test_adapter_of_a_relatively_loaded_base_loads_from_anywhere(tiny_world_model_dir, tmp_path, monkeypatch,
                                                                 batch):
    """A base loaded by a relative path is recorded by its absolute path, so the adapter opens elsewhere."""
    monkeypatch.chdir(tiny_world_model_dir.parent)
    model, processor = load(tiny_world_model_dir.name, dtype="float32", device="cpu")
    lora = apply_lora(model, LoraSettings(r=4))
    _perturb_lora(lora)
    adapted = _logits(lora, batch)
    save(lora, processor, tmp_path / "adapter")
    monkeypatch.chdir(tmp_path)
    reloaded, _ = load(tmp_path / "adapter", dtype="float32", device="cpu")
    assert torch.allclose(_logits(reloaded, batch), adapted, atol=1e-6)


def test_adapter_of_an_unsaved_base_warns_and_fails_clearly(model_and_processor, tmp_path):
    from vlalign.world.model import TinyVLMConfig, build_model

    _, processor = model_and_processor
    config = TinyVLMConfig(vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32, text_layers=1,
                           text_heads=2, text_intermediate=64)
    lora = apply_lora(build_model(processor, config), LoraSettings(r=4))  # built in code: no directory to point at
    with pytest.warns(UserWarning, match="base model"):
        save(lora, processor, tmp_path / "adapter")
    with pytest.raises(FileNotFoundError, match="base"):
        load(tmp_path / "adapter", dtype="float32", device="cpu")


def test_load_rejects_a_directory_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model at"):
        load(tmp_path, dtype="float32", device="cpu")
