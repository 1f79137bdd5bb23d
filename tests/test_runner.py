"""Every method through the one runner on tiny world models: RLAIF-V rounds and resuming them, Silkie through
a judge behind a real localhost OpenAI-compatible server, POVID's two stages, mDPO and MPO on fixed pairs,
evaluation per round, and a kill during a save. These check the wiring, the run store and resumption; the
quality bars are measured by `vlalign demo`."""

from __future__ import annotations

import json
import re
import threading

import pytest

import vlalign.runner as runner
from vlalign.config import ConfigError, load_config
from vlalign.data.records import FeedbackRecord, PairRecord, ResponseRecord
from vlalign.data.store import RunStore, Stage
from vlalign.feedback.judge import ChatReply
from vlalign.plugins import METHODS
from vlalign.serve import make_server

TINY_TRAIN = ["train.batch_size=4", "train.epochs=1", "train.optim.lr=1e-3", "train.optim.log_every=1"]


def _config(method: str, *overrides: str):
    return load_config(METHODS.get(method).config, None, list(overrides))


def _rlaif_v(*extra: str):
    """The shipped base (a random model names no objects, so its answers hold no claims to label)."""
    return _config("rlaif-v", "policy=world:base", "runtime.dtype=fp32", "labeler=self", "rounds=2",
                   "prompts.source=world", "prompts.per_round=6", "samples=3", "decoding.max_new_tokens=48",
                   "decoding.temperature=1.0", "splitter=world", "batch_size=8", *TINY_TRAIN, *extra)


def _rows(stage_dir):
    return Stage(stage_dir).rows()


def _shard_times(stage_dir):
    return {p.name: p.stat().st_mtime_ns for p in stage_dir.glob("shard-*.parquet")}


def test_rlaif_v_rounds_then_resume_by_round_and_by_stage(tmp_path, monkeypatch):
    method, config = METHODS.get("rlaif-v"), _rlaif_v()
    calls = {"n": 0}
    real_fit = runner.fit

    def train_then_fail_in_round_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("stopped during round 2's training")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(runner, "fit", train_then_fail_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        runner.run(method, config, tmp_path)
    assert (tmp_path / "round1" / "round.json").exists() and (tmp_path / "round1" / "policy").exists()
    assert not (tmp_path / "round2" / "policy").exists()
    round1_responses = _shard_times(tmp_path / "round1" / "responses")
    round2_feedback = _shard_times(tmp_path / "round2" / "feedback")
    assert round1_responses and round2_feedback

    monkeypatch.setattr(runner, "fit", real_fit)
    summary = runner.run(method, config, tmp_path)
    # round 1 came back from disk, round 2 resumed after its finished stages: nothing sampled or labeled twice
    assert _shard_times(tmp_path / "round1" / "responses") == round1_responses
    assert _shard_times(tmp_path / "round2" / "feedback") == round2_feedback
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    for r in summary["rounds"]:
        assert r["responses"] == 6 * 3 and r["pairs"] >= 1
    # round 2 sampled fresh prompts, from the policy of round 1
    prompts = [{row["id"] for row in _rows(tmp_path / f"round{k}" / "prompts")} for k in (1, 2)]
    assert not prompts[0] & prompts[1]
    assert {r["model"] for r in _rows(tmp_path / "round2" / "responses")} == {"policy@round2"}
    feedback = [FeedbackRecord.from_row(f) for f in _rows(tmp_path / "round2" / "feedback")]
    assert {f.meta["labeler"] for f in feedback} == {"policy@round2"}  # self-alignment
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["config"]["labeler"] == "self" and len(on_disk["rounds"]) == 2
    assert on_disk["final"] == "round2/policy" and on_disk["rounds"][0]["checkpoint"] == "round1/policy"  # run-relative
    assert summary["final"] == str(tmp_path / "round2" / "policy")  # and where the run is now, once read back
    assert summary["rounds"][0]["checkpoint"] == str(tmp_path / "round1" / "policy")


def test_rlaif_v_sampling_is_deconfounded_and_reproducible(tmp_path):
    method, config = METHODS.get("rlaif-v"), _rlaif_v("rounds=1")
    runner.run(method, config, tmp_path / "a")
    runner.run(method, config, tmp_path / "b")
    a, b = (sorted(_rows(tmp_path / k / "round1" / "responses"), key=lambda r: r["id"]) for k in "ab")
    assert [(r["id"], r["seed"], r["response"]) for r in a] == [(r["id"], r["seed"], r["response"]) for r in b]
    by_prompt: dict[str, list] = {}
    for r in a:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    for rs in by_prompt.values():
        assert len({r["seed"] for r in rs}) == 3  # one recorded seed per sample
        decodings = {json.dumps(ResponseRecord.from_row(r).meta["decoding"], sort_keys=True) for r in rs}
        assert len(decodings) == 1  # identical decoding


def test_evaluation_runs_on_the_base_and_after_every_round(tmp_path):
    config = _rlaif_v("rounds=1", "eval=[{name: world, limit: 4}]")
    summary = runner.run(METHODS.get("rlaif-v"), config, tmp_path)
    assert 0 <= summary["base"]["world"]["chair_i"] <= 1 and summary["base"]["world"]["n_scenes"] == 4
    assert summary["rounds"][0]["eval"]["world"]["n_scenes"] == 4
    round_json = json.loads((tmp_path / "round1" / "round.json").read_text())
    assert round_json["eval"] == summary["rounds"][0]["eval"]
    # every figure with its interval over scenes, the outcomes kept, and the round paired with the base
    world = summary["rounds"][0]["eval"]["world"]
    assert world["intervals"]["chair_i"][0] <= world["chair_i"] <= world["intervals"]["chair_i"][1]
    assert (tmp_path / "base" / "world.outcomes.json").is_file()
    assert (tmp_path / "round1" / "eval" / "world.outcomes.json").is_file()
    assert world["vs_base"]["chair_i"]["diff"] == pytest.approx(world["chair_i"] - summary["base"]["world"]["chair_i"])


def test_another_method_in_the_same_directory_is_refused(tmp_path):
    runner.run(METHODS.get("rlaif-v"), _rlaif_v("rounds=1"), tmp_path)
    with pytest.raises(ValueError, match="holds a rlaif-v run"):
        runner.run(METHODS.get("mpo"), _config("mpo", "policy=world:base", f"pairs_from={tmp_path}"), tmp_path)


def test_missing_settings_are_reported_before_anything_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "load", lambda *a, **k: pytest.fail("nothing may load before the config is whole"))
    with pytest.raises(ConfigError) as e:
        runner.run(METHODS.get("rlaif-v"), _config("rlaif-v"), tmp_path)
    text = str(e.value)
    assert "policy: not set" in text and "prompts.source: not set" in text and "labeler: not set" in text
    assert "judge" in text  # the default splitter (llm) asks a judge no one named


def test_a_kill_during_a_save_never_leaves_a_checkpoint_that_is_used(tmp_path, monkeypatch):
    """Killed while the round's policy is written, a run leaves only a temporary folder; a rerun trains the
    round again and saves it whole."""
    import vlalign.models.load as load_mod

    real = load_mod._check_safetensors

    def die_while_saving(folder):
        raise KeyboardInterrupt("killed during the save")

    monkeypatch.setattr(load_mod, "_check_safetensors", die_while_saving)
    method, config = METHODS.get("rlaif-v"), _rlaif_v("rounds=1")
    with pytest.raises(KeyboardInterrupt):
        runner.run(method, config, tmp_path)
    assert not (tmp_path / "round1" / "policy").exists() and (tmp_path / "round1" / ".policy.saving").exists()
    assert not (tmp_path / "round1" / "round.json").exists() and not (tmp_path / "round1" / "arm.json").exists()
    monkeypatch.setattr(load_mod, "_check_safetensors", real)
    summary = runner.run(method, config, tmp_path)
    assert summary["rounds"][0]["checkpoint"] == str(tmp_path / "round1" / "policy")
    load_mod.check_complete(tmp_path / "round1" / "policy")


def test_a_truncated_checkpoint_is_named_with_the_fix(tmp_path):
    runner.run(METHODS.get("rlaif-v"), _rlaif_v("rounds=1"), tmp_path)
    weights = tmp_path / "round1" / "policy" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    from vlalign.models.load import load

    with pytest.raises(ValueError, match="incomplete.*Delete"):
        load(tmp_path / "round1" / "policy")


class LengthJudge:
    """A judge for the server: rates each listed answer by its length (longer is more helpful, and faithful
    up to 12 words), in VLFeedback's reply format, leaving one rating out when an answer says 'star'."""

    name = "length-judge"

    def complete(self, requests):
        replies = []
        for r in requests:
            answers = re.findall(r"<answer \d+> (.*)", r.prompt)
            blocks = []
            for aspect in ("Helpfulness", "Ethical Considerations", "Visual Faithfulness"):
                blocks.append(f"#### {aspect}")
                for k, a in enumerate(answers, start=1):
                    n = len(a.split())
                    rating = min(5, 1 + n // 4) if aspect != "Visual Faithfulness" else (5 if n <= 12 else 2)
                    if "star" in a and aspect == "Helpfulness":
                        continue
                    blocks.append(f"##### Answer {k}\nRating: {rating}\nRationale: {n} words.")
            replies.append(ChatReply("\n".join(blocks), prompt_tokens=10, completion_tokens=20))
        return replies


@pytest.fixture
def judge_server():
    server = make_server(LengthJudge(), port=0, model_name="length-judge")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"api:length-judge@http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_silkie_pool_judge_pairs_train(tiny_world_model_dir, tmp_path, judge_server):
    model = str(tiny_world_model_dir)
    pool = (f"pool=[{{model: {model}, max_new_tokens: 8}}, {{model: {model}, temperature: 1.0, max_new_tokens: 16}},"
            f" {{model: {model}, name: long, temperature: 1.0, max_new_tokens: 30}}]")
    config = _config("silkie", f"policy={model}", "runtime.dtype=fp32", "prompts.source=world",
                     "prompts.per_round=6", "prompts.options={mix: {describe: 0.5, exist: 0.5}}", f"judge={judge_server}",
                     "judge_style=vlfeedback", pool, "answers_per_prompt=3", "claim_balance=[world/describe]",
                     "splitter=world", *TINY_TRAIN)
    summary = runner.run(METHODS.get("silkie"), config, tmp_path)
    responses = _rows(tmp_path / "round1" / "responses")
    assert len(responses) == 6 * 3
    by_prompt: dict[str, set] = {}
    for r in responses:
        by_prompt.setdefault(r["prompt_id"], set()).add(r["model"])
    assert all(len(models) == 3 for models in by_prompt.values())  # each answer from a different member
    feedback = {f.response_id: f for f in map(FeedbackRecord.from_row, _rows(tmp_path / "round1" / "feedback"))}
    texts = {r["id"]: r["response"] for r in responses}
    for rid, f in feedback.items():
        ratings = f.details["ratings"]
        if "star" in texts[rid]:
            assert ratings["Helpfulness"] is None and f.score is None  # missing, never guessed
        else:
            assert f.score == pytest.approx(sum(ratings.values()) / 3)
    sources = {r["id"]: r["source"] for r in _rows(tmp_path / "round1" / "prompts")}
    for f in feedback.values():  # claims are counted for the answers to descriptions, for claim balance
        assert ("claims" in f.details) == (sources[f.prompt_id] == "world/describe")
    claims = {f.response_id: len(f.details.get("claims", [])) for f in feedback.values()}
    for p in map(PairRecord.from_row, _rows(tmp_path / "round1" / "pairs")):
        assert p.chosen_score > p.rejected_score
        assert claims[p.meta["chosen_id"]] >= claims[p.meta["rejected_id"]]
    arms = summary["rounds"][0]["arms"]
    assert arms["policy"]["pairs"] == len(_rows(tmp_path / "round1" / "pairs")) > 0
    assert arms["longest"]["pairs"] == len(_rows(tmp_path / "round1" / "longest" / "pairs")) > 0
    assert (tmp_path / "round1" / "longest" / "policy" / "config.json").exists()
    usage = arms["policy"]["judge_usage"]
    assert usage["requests"] == 6 and usage["failures"] == 0
    again = runner.run(METHODS.get("silkie"), config, tmp_path)  # resumes from the finished stages and models
    assert again["rounds"] == summary["rounds"]


def test_silkie_counts_claims_only_for_the_configured_sources():
    from vlalign.stages.ratings import ClaimCounting
    from vlalign.world.claims import WorldClaims

    counting = ClaimCounting("world", ["world/describe"], {"p1"}, WorldClaims())
    answers = [ResponseRecord(id="p1/a", prompt_id="p1", image="", instruction="describe the image.",
                              response="there is a red circle and a blue square. there is no star.", model="a"),
               ResponseRecord(id="p2/a", prompt_id="p2", image="", instruction="is there a star?",
                              response="no.", model="a")]
    assert counting(answers) == [["there is a red circle.", "there is a blue square.", "there is no star."], None]
    assert counting.describe() == {"splitter": "world", "sources": ["world/describe"]}


def test_povid_two_stages_from_injected_pairs(tiny_world_model_dir, tmp_path):
    config = _config("povid", f"policy={tiny_world_model_dir}", "runtime.dtype=fp32", "prompts.source=world",
                     "prompts.per_round=8", "vocabulary=world", "cooccurrence_texts=200", *TINY_TRAIN,
                     "stage2.batch_size=4", "stage2.optim.lr=1e-3", "stage2.optim.log_every=1")
    summary = runner.run(METHODS.get("povid"), config, tmp_path)
    pairs = _rows(tmp_path / "pairs")
    assert [r["pairs"] for r in summary["rounds"]] == [8, 8]
    for p in map(PairRecord.from_row, pairs):
        assert p.chosen != p.rejected and p.meta["edits"]
    history = json.loads((tmp_path / "round2" / "training" / "train_history.json").read_text())["history"]
    assert all("noisy_loss" in h and "injected_loss" in h for h in history)
    assert not (tmp_path / "round2" / "prompts").exists()  # both stages train on round 1's prompts


@pytest.mark.parametrize(("method", "term"), [("mdpo", "loss_conditional"), ("mpo", "loss_bco_pair")])
def test_mdpo_and_mpo_train_on_another_runs_pairs(tmp_path, method, term):
    runner.run(METHODS.get("rlaif-v"), _rlaif_v("rounds=1"), tmp_path / "rlaif_v")
    pairs = tmp_path / "rlaif_v" / "round1" / "pairs"
    config = _config(method, "policy=world:base", "runtime.dtype=fp32", f"pairs_from={pairs}", *TINY_TRAIN)
    summary = runner.run(METHODS.get(method), config, tmp_path / method)
    assert summary["rounds"][0]["pairs"] == len(_rows(pairs)) > 0
    history = json.loads((tmp_path / method / "round1" / "training" / "train_history.json").read_text())
    assert term in history["history"][0]
    if method == "mdpo":
        cache = json.loads((tmp_path / method / "round1" / "training" / "reference_logps.json").read_text())
        assert cache["columns"][:3] == ["chosen", "rejected", "chosen_corrupt"]


def test_an_unreachable_api_backend_stops_the_run_before_its_first_stage(tmp_path, monkeypatch):
    from vlalign.feedback.judge import JudgeUnavailable

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    config = _rlaif_v("rounds=1", "splitter=llm", "judge=api:gpt-4o@http://127.0.0.1:9/v1", "api.timeout=2")
    with pytest.raises(JudgeUnavailable, match="127.0.0.1:9"):
        runner.run(METHODS.get("rlaif-v"), config, tmp_path)
    assert not (tmp_path / "round1").exists()  # nothing was sampled for a run that could not finish
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        runner.run(METHODS.get("rlaif-v"), _rlaif_v("rounds=1", "splitter=llm", "judge=api:gpt-4o"), tmp_path)


def test_a_prompt_file_too_short_for_the_rounds_is_reused_with_a_warning(tmp_path, capsys):
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    lines = []
    for i in range(4):
        Image.new("RGB", (48, 48), (40 * i, 90, 200)).save(data / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "instruction": "describe the image in detail."}))
    (data / "p.jsonl").write_text("\n".join(lines) + "\n")
    config = _rlaif_v(f"prompts.source={data / 'p.jsonl'}", "prompts.per_round=3", "rounds=2")
    store = RunStore(tmp_path / "run")
    first = runner.round_prompts(store, METHODS.get("rlaif-v"), config, 1, None)
    assert "reuses" not in capsys.readouterr().err
    second = runner.round_prompts(store, METHODS.get("rlaif-v"), config, 2, None)
    assert "round 2 reuses 2 prompt(s)" in capsys.readouterr().err
    ids = [{r["id"] for r in stage.rows()} for stage in (first, second)]
    assert len(ids[1]) == 3 and len(ids[0] & ids[1]) == 2  # the file's 4 records, cycled


def test_a_run_on_user_data_gets_pope_and_chair_every_round(tmp_path, capsys):
    """eval: names real benchmarks with their data files; a run on a user's prompt file scores the base and
    every round on them (here POPE's question files and CHAIR against COCO's annotations, on four images),
    and its end-of-run tables are its own benchmarks': POPE's figures, the base's and the round's against it."""
    from pathlib import Path

    from PIL import Image

    coco = Path(__file__).parent / "data" / "bench" / "coco"
    images = tmp_path / "val2014"
    images.mkdir()
    questions, prompts = [], []
    for i in range(1, 5):
        name = f"COCO_val2014_{i:012d}.jpg"
        Image.new("RGB", (60, 48), (50 * i, 120, 90)).save(images / name)
        questions.append(json.dumps({"question_id": i, "image": name, "text": "Is there a dog in the image?",
                                     "label": "yes" if i % 2 else "no"}))
        prompts.append(json.dumps({"image": name, "instruction": "describe the image in detail."}))
    (tmp_path / "coco_pope_random.json").write_text("\n".join(questions) + "\n")
    (tmp_path / "chair.jsonl").write_text("".join(json.dumps({"image_id": i}) + "\n" for i in range(1, 5)))
    (images / "prompts.jsonl").write_text("\n".join(prompts) + "\n")
    evals = (f"eval=[{{name: pope, data: {tmp_path / 'coco_pope_random.json'}, images: {images}}}, "
             f"{{name: chair, data: {tmp_path / 'chair.jsonl'}, images: {images}, annotations: [{coco}]}}]")
    config = _rlaif_v(f"prompts.source={images / 'prompts.jsonl'}", "prompts.per_round=4", "rounds=1", evals)
    summary = runner.run(METHODS.get("rlaif-v"), config, tmp_path / "run")
    for metrics in (summary["base"], summary["rounds"][0]["eval"]):
        assert set(metrics) == {"pope", "chair"}
        assert metrics["pope"]["random_n"] == 4 and 0 <= metrics["pope"]["accuracy"] <= 1
        assert 0 <= metrics["chair"]["chair_s"] <= 1
    assert (tmp_path / "run" / "round1" / "eval" / "pope.answers.jsonl").exists()

    from vlalign.cli import print_summary
    from vlalign.glossary import change, glossary

    capsys.readouterr()
    print_summary(summary, tmp_path / "run")
    printed = capsys.readouterr().err
    base, round1 = summary["base"]["pope"], summary["rounds"][0]["eval"]["pope"]
    assert "rlaif-v on pope" in printed and "rlaif-v on chair" in printed and "world" not in printed
    assert "F1 [95% CI]" in printed and "vs base [95% CI]" in printed
    assert f"{base['f1']:.3f} [{base['intervals']['f1'][0]:.3f}, {base['intervals']['f1'][1]:.3f}]" in printed
    assert "vs_base" in round1 and change("f1", base, round1, glossary(["pope"])).text in printed
    assert "F1 harmonic mean of yes-precision and yes-recall (higher is better)" in " ".join(printed.split())


def _live_weights() -> int:
    """Bytes of every model weight alive in this process (each storage once)."""
    import gc

    import torch

    gc.collect()
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in gc.get_objects()
                if type(p) is torch.nn.Parameter}
    return sum(storages.values())


def test_the_labeler_is_gone_before_the_policy_trains(tmp_path, monkeypatch):
    """A separate labeler is held for its stage only: while the policy trains, the weights in memory are the
    ones a self-labeled run holds (the policy and its frozen copy, if any), to the byte."""
    seen: dict[str, tuple[int, list[str]]] = {}
    real_fit, real_models = runner.fit, runner.ScopedModels
    held: list = []

    class Watched(real_models):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            held.append(self)

    def watched_fit(*args, **kwargs):
        seen[label] = (_live_weights(), held[-1].held())
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(runner, "fit", watched_fit)
    monkeypatch.setattr(runner, "ScopedModels", Watched)
    for label, labeler in (("separate", "world:labeler"), ("self", "self")):
        runner.run(METHODS.get("rlaif-v"), _rlaif_v("rounds=1", f"labeler={labeler}"), tmp_path / label)
    assert seen["separate"][1] == seen["self"][1] == [], "no model but the policy is held while it trains"
    assert seen["separate"][0] == seen["self"][0] > 0


@pytest.mark.parametrize("cycle", [False, True])
def test_a_scoped_model_is_gone_before_the_next_load(monkeypatch, cycle):
    """A model whose last block has ended is gone by the next load (or training), with a full collection (a
    third of a second with the libraries loaded) only when a reference cycle keeps it alive."""
    import gc
    import weakref

    import torch

    collections: list[int] = []
    real_collect = gc.collect

    def counted(*args):
        collections.append(1)
        return real_collect(*args)

    def made(spec, runtime):
        model = torch.nn.Linear(4, 4)
        if cycle:
            model.__dict__["loop"] = [model]
        return model, None

    monkeypatch.setattr(runner, "load", made)
    monkeypatch.setattr(gc, "collect", counted)
    models = runner.ScopedModels(runner.Runtime())
    gc.disable()
    try:
        with models.using("labeler") as (model, _):
            with models.using("labeler") as (again, _):
                assert again is model, "a model held by two blocks is loaded once"
            assert models.held() == ["labeler"], "held until its last block ends"
            alive = weakref.ref(model)
        del model, again
        assert models.held() == []
        with models.using("judge"):
            assert alive() is None, "the labeler is gone before the judge loads"
        assert len(collections) == int(cycle)
    finally:
        gc.enable()


def test_a_parked_model_waits_in_host_memory_and_comes_back_without_a_load(monkeypatch):
    """GRPO's reference, used every rollout, is parked: loaded once, kept off the accelerator between its blocks
    (in host memory), and handed back to the next block on the device it was loaded on; a model that is not
    parked is loaded again."""
    import torch

    loads: list[str] = []
    moves: list[str] = []

    class Tracked(torch.nn.Module):
        def __init__(self, device: str):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.empty(4, 4, device=device))

        def to(self, device):
            moves.append(str(device))
            self.weight = torch.nn.Parameter(torch.empty(4, 4, device=device))
            return self

    def made(spec, runtime):  # "meta" stands for an accelerator, as far as the parking can tell
        loads.append(spec)
        return Tracked("meta" if spec == "on accelerator" else "cpu"), None

    monkeypatch.setattr(runner, "load", made)
    models = runner.ScopedModels(runner.Runtime())
    seen = []
    for _ in range(3):
        with models.using("reference", park=True) as (model, _):
            seen.append(model)
        assert models.held() == [], "a parked model is not held: training may begin"
    assert loads == ["reference"] and all(m is seen[0] for m in seen)
    assert moves == [], "a model already in host memory is not moved"
    for _ in range(2):
        with models.using("labeler"):
            pass
    assert loads == ["reference", "labeler", "labeler"], "a model not parked is loaded for each block"
    for _ in range(2):
        with models.using("on accelerator", park=True) as (model, _):
            assert model.weight.device.type == "meta"
    assert loads.count("on accelerator") == 1
    assert moves == ["cpu", "meta", "cpu"], "off the accelerator after each block, back on it for the next"
