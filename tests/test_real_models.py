"""Tiny models of real architectures, saved as real checkpoints, through the runner: every family loads in a
fresh process as its own processor class and runs `generate` and an RLAIF-V round there; a run with
`runtime: {dtype: bf16}` loads, samples, labels and trains in bf16."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_archs import ARCHS, random_image

import vlalign.feedback.labeler as labeler_mod
import vlalign.models.generate as generation
import vlalign.train.preference as preference
from vlalign.config import load_config
from vlalign.models.load import save
from vlalign.plugins import METHODS
from vlalign.runner import ScopedModels, run

HERE = Path(__file__).resolve().parent


def prompt_file(folder: Path, n: int = 6) -> Path:
    """A user's prompt file: images next to it, one JSON object per line, relative paths."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        random_image(i, size=32 + 4 * i).save(folder / f"img{i}.png")
        lines.append(json.dumps({"id": f"q{i}", "image": f"img{i}.png", "instruction": "describe the image."}))
    (folder / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "prompts.jsonl"


def round_overrides(model: Path, prompts: Path) -> list[str]:
    """One small RLAIF-V round on user prompts. A random model's answers name shapes at random, and the world's
    labeler tells whether a random image shows them, so the answers' scores differ and make pairs."""
    return [f"policy={model}", "labeler=world:labeler", f"prompts.source={prompts}", "prompts.per_round=6",
            "rounds=1", "samples=4", "decoding.max_new_tokens=12", "decoding.temperature=1.0", "splitter=world",
            "rules.length_balance=false", "train.batch_size=4", "train.optim.lr=1e-3", "batch_size=8"]


# The families the README names first and today's, and the processor class each must load back as (LLaVA-OneVision
# -1.5's is the class transformers maps it to).
PROCESSORS = {"llava": "LlavaProcessor", "qwen2_vl": "Qwen2VLProcessor", "idefics3": "Idefics3Processor",
              "qwen3_vl": "Qwen3VLProcessor", "qwen3_vl_moe": "Qwen3VLProcessor", "internvl": "InternVLProcessor",
              "gemma4": "Gemma4Processor", "glm4v": "Glm4vProcessor", "glm46v": "Glm46VProcessor",
              "llava_onevision1_5": "Exaone4_5_Processor"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name in PROCESSORS:
        model, processor = ARCHS[name]()
        out[name] = save(model, processor, tmp_path_factory.mktemp(name) / "model")
    return out


FRESH = """
import json, subprocess, sys
from vlalign.models.load import load
model, processor = load(sys.argv[1])
print(json.dumps({"processor": type(processor).__name__}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(PROCESSORS))
def test_a_saved_checkpoint_generates_and_runs_a_round_in_a_fresh_process(arch, saved, tmp_path):
    model = saved[arch]
    prompts = prompt_file(tmp_path / "data")
    expected = PROCESSORS[arch]
    loaded = subprocess.run([sys.executable, "-c", FRESH, str(model)], capture_output=True, text=True, timeout=300)
    assert json.loads(loaded.stdout.splitlines()[-1])["processor"] == expected, loaded.stderr
    answers = tmp_path / "answers.jsonl"
    gen = subprocess.run([sys.executable, "-m", "vlalign.cli", "generate", "--model", str(model), "--prompts",
                          str(prompts), "--out", str(answers), "--max-new-tokens", "8"],
                         capture_output=True, text=True, timeout=300)
    assert gen.returncode == 0, gen.stderr
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [f"q{i}" for i in range(6)]
    assert all(r["instruction"] == "describe the image." and r["model"] == str(model) for r in rows)
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "vlalign.cli", "run", "rlaif-v", "--out", str(out),
                           *round_overrides(model, prompts)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"][0]["responses"] == 24 and summary["rounds"][0]["pairs"] > 0
    assert (out / "round1" / "policy" / "config.json").exists()


LABEL_AND_RANK = """
import json, sys
from PIL import Image
from vlalign.models.best_of_n import best_of_n
from vlalign.models.load import load
from vlalign.models.scoring import yes_probability
from vlalign.models.settings import Decoding
model, processor = load(sys.argv[1])
reference, _ = load(sys.argv[2])
images = [Image.open(p) for p in sys.argv[3:]]
questions = ["is there a red circle?", "is there a blue square on the left?", "is it yellow?"]
probs = yes_probability(model, processor, [images[0]] * 3, questions)
ranked = best_of_n(model, reference, processor, images, ["describe the image."] * len(images), n=3,
                   decoding=Decoding(max_new_tokens=6, temperature=1.0))
print(json.dumps({"probs": probs, "ranked": [[r.text, r.reward, r.candidates] for r in ranked]}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(PROCESSORS))
def test_a_saved_checkpoint_labels_and_ranks_best_of_n_in_a_fresh_process(arch, saved, tmp_path):
    """In a fresh process the checkpoint is the labeler (P(yes) of questions about one image, the same values as
    the model it was saved from) and ranks best-of-N samples by the implicit reward against a reference."""
    from vlalign.models.scoring import yes_probability

    reference = save(*ARCHS[arch](seed=1), tmp_path / "reference")
    paths = [tmp_path / f"img{i}.png" for i in range(2)]
    for i, path in enumerate(paths):
        random_image(i, size=32 + 8 * i).save(path)
    done = subprocess.run([sys.executable, "-c", LABEL_AND_RANK, str(saved[arch]), str(reference), *map(str, paths)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    model, processor = ARCHS[arch]()
    questions = ["is there a red circle?", "is there a blue square on the left?", "is it yellow?"]
    from PIL import Image

    here = yes_probability(model, processor, [Image.open(paths[0])] * 3, questions)
    assert out["probs"] == pytest.approx(here, abs=1e-5)
    assert len(out["ranked"]) == 2
    for text, reward, candidates in out["ranked"]:
        assert len(candidates) == 3 and [text, reward] == max(candidates, key=lambda c: c[1])
        assert len({c[1] for c in candidates}) > 1  # the policy and its reference differ, so the rewards do


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_bf16_runtime_loads_samples_labels_and_trains_in_bf16(arch, saved, tmp_path, monkeypatch):
    seen: dict[str, set] = {"sample": set(), "label": set(), "train": set(), "pixels": set()}

    def spy(where, fn, dtype_of):
        def wrapped(model, *args, **kwargs):
            seen[where].add(next(model.parameters()).dtype)
            if where == "train":
                batch = args[0]
                seen["pixels"] |= {v.dtype for k, v in batch.items() if "pixel" in k}
            return dtype_of(fn(model, *args, **kwargs))
        return wrapped

    same = lambda out: out  # noqa: E731
    monkeypatch.setattr(generation, "generate", spy("sample", generation.generate, same))
    monkeypatch.setattr(labeler_mod, "yes_probability", spy("label", labeler_mod.yes_probability, same))
    monkeypatch.setattr(preference, "continuation_logps", spy("train", preference.continuation_logps, same))
    model = saved[arch]
    prompts = prompt_file(tmp_path / "data")
    # the labeler (world:labeler, a bf16 checkpoint) loads through the run's runtime settings too
    overrides = [*round_overrides(model, prompts), "runtime.dtype=bf16"]
    config = load_config(METHODS.get("rlaif-v").config, None, overrides)
    summary = run(METHODS.get("rlaif-v"), config, tmp_path / "run")
    assert summary["rounds"][0]["pairs"] > 0
    assert seen["sample"] == seen["label"] == seen["train"] == seen["pixels"] == {torch.bfloat16}
    saved_config = json.loads((tmp_path / "run" / "round1" / "policy" / "config.json").read_text())
    assert saved_config["dtype"] == "bfloat16"
    # every other model of a run (labeler, judge, pool) inherits the runtime: an fp32 checkpoint loads in bf16
    assert json.loads((model / "config.json").read_text())["dtype"] == "float32"
    with ScopedModels(config.runtime).using(str(model)) as (other, _):
        assert {p.dtype for p in other.parameters()} == {torch.bfloat16}
