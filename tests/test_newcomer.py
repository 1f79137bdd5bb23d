"""A user's own data without detours (issue 28): pre-flight checks before the first long stage, no silent
change of a run's config, shortfalls counted, what a stop keeps, one saved-model contract, and the keys a TRL
or LLaMA-Factory user looks for (aliases, QLoRA, prompt and completion lengths, an explicit reference, a
held-out evaluation loss, named chat templates, push_to_hub against a stand-in Hub)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_archs import build_qwen2_vl, random_image
from typer.testing import CliRunner

from vlalign import preflight, run_record
from vlalign.cli import app
from vlalign.config import ConfigError, load_config
from vlalign.data import shortfalls
from vlalign.data.hub import push_finished, push_model, push_run
from vlalign.data.store import RunStore
from vlalign.feedback.judge import ChatReply, ChatRequest, decoded
from vlalign.models.batching import encode
from vlalign.models.load import load, save
from vlalign.models.processors import configure
from vlalign.models.saved import ADAPTER_RECORD, merge, recorded_dtype, save_trained
from vlalign.models.settings import ChatDecoding, LoraSettings, Runtime
from vlalign.plugins import METHODS
from vlalign.train.columns import Columns
from vlalign.train.examples import PreferenceExample
from vlalign.train.fit import fit
from vlalign.train.heldout import held_out
from vlalign.train.settings import OptimConfig, TrainConfig
from vlalign.world.render import render
from vlalign.world.scene import PARTNERS, sample_scene

SRC = Path(__file__).resolve().parents[1] / "src"


def _silkie(*overrides: str):
    return load_config(METHODS.get("silkie").config, None, list(overrides))


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2-VL saved as a user's model directory: its replies follow no rubric."""
    model, processor = build_qwen2_vl(seed=0)
    return save(model, processor, tmp_path_factory.mktemp("qwen") / "model")


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    """Three photos of different sizes and a prompt file naming them (and one record whose image is missing)."""
    root = tmp_path_factory.mktemp("data")
    records = []
    for i in range(3):
        random_image(i, size=40 + 16 * i).save(root / f"p{i}.png")
        records.append({"id": f"r{i}", "image": f"p{i}.png", "instruction": "describe the image.",
                        "reference": "there is a red circle."})
    records.append({"id": "gone", "image": "missing.png", "instruction": "describe the image."})
    (root / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root / "prompts.jsonl"


@pytest.fixture(scope="module")
def examples() -> list[PreferenceExample]:
    out = []
    for i in range(8):
        scene = sample_scene(i, "prompts")
        obj = scene.objects[0]
        out.append(PreferenceExample(id=f"pair-{i}", image=render(scene, 48), instruction="describe the image.",
                                     chosen=f"there is a {obj.color} {obj.shape}.",
                                     rejected=f"there is a {obj.color} {PARTNERS[obj.shape]} and a star."))
    return out


# ---- aliases ----

def test_trl_names_land_in_their_keys_and_clash_with_them():
    config = _silkie("learning_rate=2e-6", "num_train_epochs=3", "per_device_train_batch_size=2",
                     "gradient_accumulation_steps=4", "loss_type=[sigmoid, sft]", "loss_weights=[1.0, 0.5]",
                     "rpo_alpha=0.2", "lora_r=8", "bf16=true", "max_completion_length=64", "hub_model_id=me/m",
                     "push_to_hub=true", "max_steps=-1")
    t = config.train
    assert (t.optim.lr, t.epochs, t.batch_size, t.optim.grad_accum, t.optim.steps) == (2e-6, 3.0, 2, 4, None)
    assert t.loss == {"sigmoid": 1.0, "sft": 0.5, "nll": 0.2} and t.lora.r == 8
    assert config.runtime.dtype == "bf16" and config.runtime.max_completion_length == 64
    assert config.hub.push and config.hub.repo == "me/m"
    nested = _silkie("train.learning_rate=1e-5", "runtime.load_in_4bit=true", "lora_target=q_proj,v_proj")
    assert nested.train.optim.lr == 1e-5 and nested.runtime.quantization == "4bit"
    assert nested.train.lora.target_modules == ("q_proj", "v_proj")
    with pytest.raises(ConfigError) as e:
        _silkie("learning_rate=1e-5", "train.optim.lr=2e-5", "loss_weights=[1, 2]")
    assert "learning_rate: TRL's name for train.optim.lr, which is set too" in str(e.value)
    assert "expected 1 weight(s)" in str(e.value)  # sigmoid alone has one


def test_the_alias_table_in_the_docs_is_generated_from_code():
    from vlalign.config import alias_table
    from vlalign.stages.settings import RunConfig

    table = alias_table(RunConfig)
    assert "| `learning_rate` | TRL | `train.optim.lr` |" in table and "| `pref_beta` | LLaMA-Factory |" in table
    assert table in (SRC.parent / "docs" / "configs.md").read_text()


# ---- pre-flight: the config, before torch ----

def test_semantic_problems_come_with_the_typos_before_torch(tmp_path):
    """A typo, a model path that does not exist, a missing prompt file and a judge style longer than the
    judge's context, all in one report, and torch never imported."""
    code = (f"import sys; sys.path.insert(0, {str(SRC)!r})\n"
            "from vlalign.cli import load_method_config\n"
            "try:\n"
            "    load_method_config('silkie', None, ['polcy=x', 'policy=/no/such/model', 'judge=world:judge',\n"
            "                       'prompts.source=/no/prompts.jsonl', 'pool=[world:base, world:small]',\n"
            "                       'answers_per_prompt=2'], check=True)\n"
            "except ValueError as e:\n"
            "    print(e)\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert "polcy: unknown setting" in out
    assert "policy: no model at /no/such/model" in out
    assert "prompts.source: /no/prompts.jsonl is neither" in out
    assert "judge_style: vlfeedback's request is" in out and "reads at most 256" in out
    assert out.strip().endswith("False")


def test_a_wrong_model_path_leaves_no_run_directory(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["silkie", "--out", str(out), "policy=/no/model", "judge=api:x",
                                      "pool=[world:base, world:small]", "answers_per_prompt=2", "prompts.source=world"])
    assert result.exit_code != 0 and "no model at /no/model" in str(result.exception)
    assert not out.exists()


def test_quantization_without_bitsandbytes_or_lora_is_a_problem_naming_the_fix(monkeypatch):
    import vlalign.preflight as pf

    monkeypatch.setattr(pf, "find_spec", lambda name: None if name == "bitsandbytes" else object())
    found = pf.problems(_silkie("policy=world:base", "judge=api:x", "pool=[world:base, world:small]", "answers_per_prompt=2",
                               "prompts.source=world", "load_in_4bit=true"))
    assert any("runtime.quantization: 4bit loads through bitsandbytes, which is not installed: pip install "
               "bitsandbytes" in p for p in found)
    assert any("trains only through LoRA adapters (QLoRA)" in p for p in found)


def test_loading_quantized_without_bitsandbytes_names_the_fix(monkeypatch, tiny_world_model_dir):
    import transformers.utils

    monkeypatch.setattr(transformers.utils, "is_bitsandbytes_available", lambda: False)
    with pytest.raises(ValueError, match=r"loads through bitsandbytes, which is not installed .*pip install bitsandbytes"):
        load(tiny_world_model_dir, Runtime(quantization="4bit", device="cpu"))


# ---- pre-flight: the trial ----

def test_a_judge_whose_replies_do_not_parse_is_refused_within_a_minute(qwen_dir, prompt_file, tmp_path):
    from vlalign import runner

    config = _silkie(f"policy={qwen_dir}", f"judge={qwen_dir}", f"pool=[{qwen_dir}, {qwen_dir}]",
                     "answers_per_prompt=2", f"prompts.source={prompt_file}", "prompts.per_round=3",
                     "judge_decoding.max_tokens=12", "runtime.dtype=fp32", "runtime.device=cpu")
    out = tmp_path / "run"
    started = time.monotonic()
    with pytest.raises(preflight.Refused) as e:
        runner.run(METHODS.get("silkie"), config, out)
    assert time.monotonic() - started < 60
    message = str(e.value)
    assert f"the judge {qwen_dir} gave no usable rating for any of the 4 answers" in message
    assert "the reply has none of the rubric's sections" in message and "judge_decoding.max_tokens" in message
    assert not out.exists()  # the refused start left nothing behind


def _round_prompts(config, root: Path):
    from vlalign.data.sources import PromptRequest, source_named

    store = RunStore(root)
    stage = store.stage("round1/prompts")
    source_named(config.prompts.source).write(PromptRequest(
        store, stage, config.prompts.per_round, 0, config.prompts.parsed_options(),
        preflight.policy_processor(config), path=config.prompts.source))
    return stage


def test_a_judge_in_the_style_it_was_trained_for_passes(prompt_file, tmp_path):
    from vlalign.runner import ScopedModels

    config = _silkie("policy=world:base", "judge=world:judge", "judge_style=world", f"prompts.source={prompt_file}",
                     "pool=[world:base, world:small]", "answers_per_prompt=2", "runtime.device=cpu")
    assert [what for what, _ in preflight.trials(config)] == ["judge world:judge"]
    prompts = _round_prompts(config, tmp_path)
    assert [p.id for p in preflight.first_prompts(prompts, 5)] == ["r0", "r1", "r2"]  # the missing image skipped
    preflight.trial(config, ScopedModels(config.runtime), prompts)  # no Refused: its replies parse


def test_a_labeler_is_tried_on_the_runs_own_images(tmp_path):
    from vlalign.runner import ScopedModels

    config = _rlaif("labeler=world:labeler", "splitter=sentences", "prompts.per_round=2")
    assert [what for what, _ in preflight.trials(config)] == ["labeler world:labeler"]
    prompts = _round_prompts(config, tmp_path)
    assert len(preflight.first_prompts(prompts)) == 2
    preflight.trial(config, ScopedModels(config.runtime), prompts)


def test_judge_decoding_settings_reach_every_request():
    seen = []

    class Echo:
        name = "echo"

        def complete(self, requests):
            seen.extend(requests)
            return [ChatReply("ok") for _ in requests]

    judge = Echo()
    assert decoded(judge, ChatDecoding()) is judge
    decoded(judge, ChatDecoding(max_tokens=7, temperature=0.5)).complete([ChatRequest("q", max_tokens=1024, n=2)])
    assert (seen[0].max_tokens, seen[0].temperature, seen[0].n) == (7, 0.5, 2)


# ---- no silent change ----

def _finished_run(root: Path, config, rounds_done: int = 1) -> None:
    root.mkdir(parents=True, exist_ok=True)
    run_record.record_start(root, config)
    for k in range(1, rounds_done + 1):
        (root / f"round{k}").mkdir(exist_ok=True)
        (root / f"round{k}" / "round.json").write_text(json.dumps({"round": k}))


def _rlaif(*extra: str):
    return load_config(METHODS.get("rlaif-v").config, None, ["policy=world:base", "labeler=self", "rounds=1",
                                                            "prompts.source=world", "samples=3", *extra])


def test_a_changed_config_on_a_finished_run_is_refused_with_its_keys(tmp_path):
    _finished_run(tmp_path, _rlaif())
    with pytest.raises(ValueError) as e:
        run_record.check_config(tmp_path, _rlaif("train.beta=0.2", "samples=4"))
    assert "is finished (1 round(s)): samples: 3 -> 4; train.beta: 0.1 -> 0.2" in str(e.value)
    assert "rounds=2" in str(e.value)  # the way to go on with them
    assert run_record.check_config(tmp_path, _rlaif("report=false", "api.timeout=5")) == {}  # no model changes
    with pytest.raises(ValueError, match="policy: \"world:base\" -> \"world:small\""):
        run_record.check_config(tmp_path, _rlaif("policy=world:small", "rounds=2"))


def test_more_rounds_take_a_change_from_the_next_round_on(tmp_path, capsys):
    _finished_run(tmp_path, _rlaif())
    diffs = run_record.check_config(tmp_path, _rlaif("rounds=2", "samples=4"))
    assert diffs["samples"] == (3, 4)
    assert "rounds 1-1 keep theirs" in capsys.readouterr().err
    (tmp_path / "round2" / "responses").mkdir(parents=True)
    (tmp_path / "round2" / "responses" / "x").write_text("")
    run_record.record_start(tmp_path, _rlaif("rounds=2", "samples=4"))
    with pytest.raises(ValueError, match="its round 2 has started under the old settings: samples: 4 -> 5"):
        run_record.check_config(tmp_path, _rlaif("rounds=2", "samples=5"))
    rounds = [{"round": 1, "config": {"samples": 3}}, {"round": 2, "config": {"samples": 4}}]
    assert run_record.round_changes(rounds) == [{"round": 2, "changes": {"samples": {"before": 3, "now": 4}}}]
    assert "round 2 ran under changed settings: samples: 3 -> 4" in run_record.summary_notes(
        {"rounds": rounds, "changes": run_record.round_changes(rounds)})


def test_a_changed_eval_list_is_taken_with_a_warning(tmp_path, capsys):
    _finished_run(tmp_path, _rlaif())
    assert "eval" in run_record.check_config(tmp_path, _rlaif("eval=[world]"))
    assert "finished round(s) keep the metrics of the list they ran" in capsys.readouterr().err


def test_a_resumed_run_says_so_and_a_stop_says_what_is_kept(tmp_path, capsys, monkeypatch):
    _finished_run(tmp_path, _rlaif("rounds=2"))
    store = RunStore(tmp_path)
    stage = store.stage("round2/responses")
    stage.write_manifest(complete=True)
    run_record.say_resumed(tmp_path)
    assert "resuming" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["/usr/bin/vlalign", "rlaif-v", "--out", str(tmp_path), "rounds=2"])
    message = run_record.interrupted()
    assert "round 1 finished" in message and "round 2 responses: complete" in message
    assert message.endswith(f"vlalign rlaif-v --out {tmp_path} rounds=2")

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C inside the command, which typer turns into exit code 130

    from vlalign import cli, runner

    monkeypatch.setattr(runner, "run", stopped)
    monkeypatch.setattr(sys, "argv", ["vlalign", "rlaif-v", "--out", str(tmp_path), "rounds=2", "policy=world:base",
                                      "labeler=self", "prompts.source=world", "samples=3", "splitter=world"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 130 and "Resume where it stopped" in capsys.readouterr().err
    run_record.finished()


# ---- shortfalls ----

def test_a_short_prompt_file_and_a_missing_image_are_counted(prompt_file, tmp_path):
    from vlalign.data.prompts import file_prompts
    from vlalign.data.sources import FileOptions, PromptRequest

    store = RunStore(tmp_path)
    file_prompts(PromptRequest(store, store.stage("round1/prompts"), 6, 0, FileOptions(), path=str(prompt_file)))
    found = {s["what"]: s for s in shortfalls.of_round(tmp_path, 1)}
    assert found["prompts"]["count"] == 3 and "fewer than the 6 a round asks for" in found["prompts"]["message"]
    assert found["skipped"]["stage"] == "prompts" and found["skipped"]["count"] == 1


def test_fewer_edits_than_asked_are_counted(tmp_path):
    from vlalign.data.records import PairRecord
    from vlalign.data.store import run_stage
    from vlalign.stages.injection import note_fewer_edits

    stage = RunStore(tmp_path).stage("round1/pairs")
    rows = [PairRecord(id=f"p{i}", prompt_id=str(i), image="x", instruction="q", chosen="a", rejected="b",
                       method="povid", meta={"edits": e}).to_row()
            for i, e in enumerate([["object+: cat", "attribute: red -> blue"], ["object+: cat"], ["answer: yes -> no"]])]
    run_stage(stage, rows, lambda b: b, id_of=lambda r: r["id"], quiet=True)
    note_fewer_edits(stage, 2)
    (entry,) = shortfalls.of_round(tmp_path, 1)
    assert entry["count"] == 1 and "1 of 3 answers took fewer than the 2 edits asked (1 with 1)" in entry["message"]


# ---- one saved-model contract ----

def test_run_dpo_and_merge_save_one_layout_in_the_runs_dtype(examples, tiny_world_model_dir, tmp_path):
    """A LoRA model trained in bf16: policy/ merged in bf16 and adapter/ beside it; `vlalign merge` of that
    adapter rebuilds the same policy to the bit."""
    model, processor = load(tiny_world_model_dir, dtype="bf16", device="cpu")
    config = TrainConfig(batch_size=4, epochs=1, lora=LoraSettings(r=4, alpha=8), optim=OptimConfig(lr=1e-2))
    trained, _ = fit(model, processor, examples, config)
    merged = save_trained(trained, processor, tmp_path / "round1", Runtime(dtype="bf16"))
    assert not hasattr(merged, "peft_config")
    assert recorded_dtype(tmp_path / "round1" / "adapter") == "bf16"
    policy = load_file(tmp_path / "round1" / "policy" / "model.safetensors")
    assert {t.dtype for t in policy.values()} == {torch.bfloat16}
    merge(tmp_path / "round1" / "adapter", tmp_path / "merged")
    again = load_file(tmp_path / "merged" / "policy" / "model.safetensors")
    assert policy.keys() == again.keys() and all(policy[k].equal(again[k]) for k in policy)
    assert (tmp_path / "merged" / "adapter" / ADAPTER_RECORD).exists()


def test_dpo_with_lora_saves_the_merged_policy_and_its_adapter(examples, tiny_world_model_dir, tmp_path):
    from vlalign.data.records import PairRecord
    from vlalign.data.store import run_stage

    store = RunStore(tmp_path / "pairs")
    stage = store.stage("pairs")
    rows = [PairRecord(id=e.id, prompt_id=e.id, image=store.images.put(e.image), instruction=e.instruction,
                       chosen=e.chosen, rejected=e.rejected, method="test").to_row() for e in examples]
    run_stage(stage, rows, lambda b: b, id_of=lambda r: r["id"], quiet=True)
    result = CliRunner().invoke(app, ["dpo", str(stage.dir), "--policy", str(tiny_world_model_dir), "--out",
                                      str(tmp_path / "out"), "--dtype", "bf16", "lora_r=4", "learning_rate=1e-3",
                                      "per_device_train_batch_size=4", f"reference={tiny_world_model_dir}"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "policy" / "config.json").exists()
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").exists()
    assert recorded_dtype(tmp_path / "out" / "adapter") == "bf16"


def test_qlora_trains_and_saves_an_unquantized_policy(examples, tiny_world_model_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    runtime = Runtime(dtype="fp32", quantization="4bit", device="cpu")
    model, processor = load(tiny_world_model_dir, runtime)
    assert model.is_loaded_in_4bit
    config = TrainConfig(batch_size=4, epochs=1, lora=LoraSettings(r=4), optim=OptimConfig(lr=1e-3))
    trained, history = fit(model, processor, examples, config)
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in history)
    again = save_trained(trained, processor, tmp_path / "qlora", runtime)
    assert again.is_loaded_in_4bit  # what comes next loads it as the run loads its policy
    saved = load_file(tmp_path / "qlora" / "policy" / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}  # merged into the unquantized base


# ---- training keys ----

def test_held_out_pairs_give_an_evaluation_loss_in_the_history(examples, tiny_world_model_dir):
    from vlalign.train.preference import make_loss, pair_collate, reference_logps

    model, processor = load(tiny_world_model_dir, dtype="fp32", device="cpu")
    config = TrainConfig(batch_size=8, epochs=2, eval_fraction=0.25, eval_every=1,
                         optim=OptimConfig(lr=1e-3, log_every=1))
    kept, out = held_out(examples, 0.25)
    assert out and len(kept) + len(out) == len(examples)
    reference = reference_logps(model, processor, examples)
    trained, history = fit(model, processor, examples, config)
    assert len([e for e in history if "loss" in e]) == 2  # steps from the 6 training pairs: epochs x 1 batch
    assert all("eval_loss" in e and "eval_reward_accuracy" in e for e in history)
    held = [(examples[p], reference.row(p)) for p in out]
    with torch.no_grad():
        loss, _ = make_loss(config)(trained.eval(), pair_collate(processor, Columns())(held, 0))
    assert history[-1]["eval_loss"] == pytest.approx(float(loss), abs=1e-5)


def test_prompt_and_completion_lengths_cut_as_trl_users_expect(tiny_world_model_dir):
    model, processor = load(tiny_world_model_dir, dtype="fp32", device="cpu")
    image, long = random_image(0), "describe " + "the red circle and " * 12 + "the image."
    full = encode(processor, [image], [long], ["there is a red circle and a blue square."])
    prompt_len = int((full["labels"][0] == -100).sum())
    cut = configure(processor, Runtime(max_prompt_length=prompt_len - 10, max_completion_length=3))
    batch = encode(cut, [image], [long], ["there is a red circle and a blue square."])
    assert int((batch["labels"][0] != -100).sum()) == 3
    assert int((batch["labels"][0] == -100).sum()) <= prompt_len - 10
    image_token = processor.image_token_id
    assert int((batch["input_ids"] == image_token).sum()) == int((full["input_ids"] == image_token).sum())
    with pytest.raises(ValueError, match="besides its instruction .*raise runtime.max_prompt_length"):
        encode(configure(processor, Runtime(max_prompt_length=5)), [image], [long], ["yes"])


def test_a_chat_template_by_name_by_file_or_as_text(tiny_world_model_dir, tmp_path):
    _, processor = load(tiny_world_model_dir, dtype="fp32", device="cpu")
    text = "{% for m in messages %}{{ m['role'] }}:{% endfor %}"
    processor.chat_template = {"default": processor.chat_template, "plain": text}
    assert configure(processor, Runtime(chat_template="plain")).chat_template == text
    (tmp_path / "t.jinja").write_text(text + "!")
    processor.chat_template = {"default": text}
    assert configure(processor, Runtime(chat_template=str(tmp_path / "t.jinja"))).chat_template == text + "!"
    processor.chat_template = {"default": text}
    with pytest.raises(ValueError, match=r"'tools' is not one of this processor's named templates \(default\)"):
        configure(processor, Runtime(chat_template="tools"))


# ---- push_to_hub, against a stand-in Hub on 127.0.0.1 ----

class StandInHub:
    """The three calls a push makes (create a repo, ask how to upload each file: inline, take the commit),
    answered by a local server that keeps what it is sent."""

    def __init__(self):
        self.repos, self.files, self.tokens = {}, {}, set()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, data, status=200):
                body = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._reply({"error": "not here"}, 404)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.tokens.add(self.headers.get("authorization"))
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[:3] == ["api", "repos", "create"]:
                    d = json.loads(body)
                    kind = d.get("type") or "model"
                    name = f"{d.get('organization') or ''}/{d['name']}".strip("/")
                    hub.repos[(kind, name)] = d
                    return self._reply({"url": f"{hub.url}/{'' if kind == 'model' else kind + 's/'}{name}"})
                kind, repo, action = parts[1][:-1], "/".join(parts[2:4]), parts[4]
                if action == "preupload":
                    return self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                  for f in json.loads(body)["files"]]})
                if action == "commit":
                    for line in filter(None, body.decode().splitlines()):
                        entry = json.loads(line)
                        if entry["key"] == "file":
                            hub.files[(kind, repo, entry["value"]["path"])] = base64.b64decode(entry["value"]["content"])
                    return self._reply({"commitUrl": f"{hub.url}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40})
                self._reply({"error": "unknown"}, 404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def names(self, kind: str, repo: str) -> set[str]:
        return {path for k, r, path in self.files if (k, r) == (kind, repo)}


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_standin")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as the command line sets it: a push still goes through
    server = StandInHub()
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_push_a_saved_model_and_a_runs_data_to_a_stand_in_hub(hub, tiny_world_model_dir, tmp_path):
    import shutil

    folder = tmp_path / "run" / "round1"
    shutil.copytree(tiny_world_model_dir, folder / "policy")
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    started = time.monotonic()
    url = push_model(folder, "me/aligned", endpoint=hub.url)
    assert url.startswith(hub.url) and time.monotonic() - started < 30
    names = hub.names("model", "me/aligned")
    assert {"config.json", "model.safetensors", "adapter/adapter_config.json"} <= names
    assert hub.repos[("model", "me/aligned")]["visibility"] == "private" and hub.tokens == {"Bearer hf_standin"}
    assert hub.files[("model", "me/aligned", "config.json")] == (folder / "policy" / "config.json").read_bytes()

    run = tmp_path / "run"
    RunStore(run).stage("round1/pairs").write_manifest(complete=True)
    (run / "summary.json").write_text("{}")
    push_run(run, "me/aligned-data", endpoint=hub.url)
    data = hub.names("dataset", "me/aligned-data")
    assert {"run.json", "summary.json", "round1/pairs/.manifest.json"} <= data
    assert not any(n.startswith(("round1/policy", "round1/adapter")) for n in data)  # weights go to model repos

    from vlalign.data.hub import HubSettings

    pushed = push_finished(run, folder / "policy", HubSettings(push=True, repo="me/final", data_repo="me/final-data",
                                                               endpoint=hub.url))
    assert set(pushed) == {"model", "data"} and "config.json" in hub.names("model", "me/final")


class _Splits:
    """A stand-in chat judge that lists facts for the first `good` claim requests and answers prose after."""

    name = "scripted-splitter"

    def __init__(self, good: int):
        self.good, self.asked = good, 0

    def complete(self, requests):
        replies = []
        for _ in requests:
            self.asked += 1
            replies.append(ChatReply("- There is a red circle." if self.asked <= self.good else "the: the: complies."))
        return replies


class _Chat:
    def __init__(self, judge):
        self.judge = judge

    def chat(self, spec, runtime=None):
        from contextlib import nullcontext

        return nullcontext(self.judge)


@pytest.mark.parametrize(("good", "refused"), [(0, True), (1, True), (2, False)])
def test_a_claim_splitter_that_fails_half_its_trials_is_refused(tmp_path, good, refused):
    config = _rlaif("judge=/some/local/judge", "splitter=llm", "labeler=self", "prompts.per_round=2")
    prompts = preflight.first_prompts(_round_prompts(config, tmp_path))
    assert len(prompts) == 2
    problem = preflight._splitter_trial(config, _Chat(_Splits(good)), prompts)
    assert (problem is not None) == refused
    if refused:
        assert f"gave no list of claims for {2 - good} of the 2 trial answers" in problem
