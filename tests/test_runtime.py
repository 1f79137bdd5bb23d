"""Runtime settings a TRL user looks for: LoRA target modules and modules_to_save, a system prompt, a chat
template override, max_length (answers cut, image tokens never), and merging a saved adapter."""

from __future__ import annotations

import pytest
import torch
from tiny_archs import build_llava, build_qwen2_vl, random_image
from typer.testing import CliRunner

from vlalign.cli import app
from vlalign.models.batching import IGNORE, chat_prompt, encode, model_inputs
from vlalign.models.generate import generate
from vlalign.models.load import load, save
from vlalign.models.lora import apply_lora
from vlalign.models.processors import configure
from vlalign.models.settings import Decoding, LoraSettings, Runtime


def test_lora_target_modules_and_modules_to_save():
    model, _ = build_llava()
    lora = apply_lora(model, LoraSettings(r=4, target_modules=("q_proj", "v_proj"), modules_to_save=("lm_head",)))
    # adapter weights are named ...self_attn.q_proj.lora_A.default.weight
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in lora.named_parameters() if "lora_A" in n}
    assert adapted == {"q_proj", "v_proj"}
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert any("lm_head" in n and "modules_to_save" in n for n in trainable)
    assert not any("k_proj" in n for n in trainable)


def test_system_prompt_reaches_the_prompt_and_a_template_without_one_is_refused():
    _, processor = build_qwen2_vl()
    configure(processor, Runtime(system_prompt="You are helpful"))
    assert "You are helpful" in chat_prompt(processor, "describe the image.")
    _, world = build_llava()  # the world's LLaVA template has no system role
    with pytest.raises(ValueError, match="drops the system message"):
        configure(world, Runtime(system_prompt="You are helpful"))


def test_chat_template_override():
    _, processor = build_llava()
    configure(processor, Runtime(chat_template="{% for m in messages %}Q: {{ m['content'][-1]['text'] }}{% endfor %}"
                                               "{% if add_generation_prompt %} A:{% endif %}"))
    assert chat_prompt(processor, "describe the image.") == "Q: describe the image. A:"


def test_max_length_cuts_answers_and_never_the_image():
    model, processor = build_llava()
    image = random_image(0)
    full = encode(processor, [image], ["describe the image."], ["there is a red circle and a blue square ."])
    prompt = int((full["labels"][0] == IGNORE).sum())
    configure(processor, Runtime(max_length=prompt + 3))
    cut = encode(processor, [image], ["describe the image."], ["there is a red circle and a blue square ."])
    assert cut["input_ids"].shape[1] == prompt + 3 and int((cut["labels"][0] != IGNORE).sum()) == 3
    assert torch.equal(cut["input_ids"][0, :prompt], full["input_ids"][0, :prompt])
    out = generate(model, processor, [image], ["describe the image."], Decoding(max_new_tokens=50))
    assert len(processor.tokenizer(out[0], add_special_tokens=False)["input_ids"]) <= 3
    configure(processor, Runtime(max_length=prompt))
    with pytest.raises(ValueError, match="leaves no room"):
        encode(processor, [image], ["describe the image."], ["yes"])


def test_merge_folds_an_adapter_into_a_plain_checkpoint(tmp_path):
    model, processor = build_llava()
    base = save(model, processor, tmp_path / "base")
    lora = apply_lora(load(base, dtype="fp32")[0], LoraSettings(r=4))
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # a trained adapter changes the outputs
    adapter = save(lora, processor, tmp_path / "adapter")
    result = CliRunner().invoke(app, ["merge", str(adapter), "--out", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    policy = tmp_path / "merged" / "policy"  # a saved model's layout: policy/ merged, adapter/ beside it
    assert (policy / "config.json").exists() and not (policy / "adapter_config.json").exists()
    assert (tmp_path / "merged" / "adapter" / "adapter_config.json").exists()
    merged, _ = load(policy, dtype="fp32")
    batch = encode(processor, [random_image(1)], ["describe the image."], ["yes"])
    with torch.no_grad():
        a = lora.eval()(**model_inputs(batch)).logits
        b = merged(**model_inputs(batch)).logits
        c = load(base, dtype="fp32")[0](**model_inputs(batch)).logits
    assert torch.allclose(a, b, atol=1e-4) and not torch.allclose(b, c, atol=1e-3)
