"""Server backends: `vlalign serve` speaks vLLM's sampling API (n, seed, top_p, logprobs / top_logprobs, runtime
LoRA loading), and an RLAIF-V run samples and labels through it, loading each round's adapter between rounds,
with the same samples for the same seeds when it is run again."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest
import torch
from _models import GivenModels
from safetensors.torch import load_file

from vlalign import runner
from vlalign.config import load_config
from vlalign.data.records import FeedbackRecord, ResponseRecord
from vlalign.data.store import Stage
from vlalign.feedback.judge import JudgeUnavailable
from vlalign.feedback.judge_local import ModelJudge
from vlalign.feedback.judges import make_judge
from vlalign.feedback.server_backends import ApiLabeler, load_adapter
from vlalign.models.batching import chat_prompt
from vlalign.models.generate import generate
from vlalign.models.load import load
from vlalign.models.lora import apply_lora, save_stacked_adapter
from vlalign.models.scoring import yes_probability
from vlalign.models.settings import LoraSettings
from vlalign.plugins import METHODS
from vlalign.serve import make_server
from vlalign.stages.round import Round
from vlalign.stages.sample import server_sampler
from vlalign.world.render import render
from vlalign.world.scene import sample_scene


@pytest.fixture(scope="module")
def world_base():
    return load("world:base", dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def world_labeler():
    return load("world:labeler", dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def picture():
    return render(sample_scene(0, "test"), 64)


@pytest.fixture
def serve():
    """Start servers on free ports; returns (server, base URL); all are shut down after the test."""
    running = []

    def start(model, processor, name: str, **kw):
        server = make_server(ModelJudge(model, processor, name=name), port=0, model_name=name, **kw)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        running.append(server)
        return server, f"http://127.0.0.1:{server.server_port}/v1"

    yield start
    for server in running:
        server.shutdown()
        server.server_close()


def _post(url: str, body: dict) -> str:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return response.read().decode()


def _chat(url: str, image_url: str, **fields) -> dict:
    content = [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": "describe the image."}]
    return json.loads(_post(f"{url}/chat/completions", {"model": "base", "max_tokens": 12, **fields,
                                                        "messages": [{"role": "user", "content": content}]}))


def test_n_seed_and_top_logprobs_have_vllm_shapes(serve, world_base, picture):
    from vlalign.feedback.judge_api import image_data_url

    _, url = serve(*world_base, "base")
    image = image_data_url(picture)
    four = _chat(url, image, n=4, seed=11, temperature=1.0)
    assert [c["index"] for c in four["choices"]] == [0, 1, 2, 3]
    # choice i is drawn with seed + i, as vLLM does: the last two are the first two of seed 13
    two = _chat(url, image, n=2, seed=13, temperature=1.0)
    texts = [c["message"]["content"] for c in four["choices"]]
    assert texts[2:] == [c["message"]["content"] for c in two["choices"]]
    assert len(set(texts)) > 1  # different seeds, different answers
    scored = _chat(url, image, max_tokens=1, logprobs=True, top_logprobs=5)
    step = scored["choices"][0]["logprobs"]["content"][0]
    assert {"token", "logprob", "bytes", "top_logprobs"} <= set(step)
    top = step["top_logprobs"]
    assert len(top) == 5 and top[0]["token"] == step["token"] == scored["choices"][0]["message"]["content"]
    assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
    assert sum(torch.tensor([t["logprob"] for t in top]).exp()) <= 1.0 + 1e-5
    with pytest.raises(urllib.error.HTTPError) as bad:
        _chat(url, image, top_logprobs=3)
    assert bad.value.code == 400


def test_finish_reason_and_usage_count_the_models_tokens(serve, world_base, picture):
    from vlalign.feedback.judge_api import image_data_url

    _, url = serve(*world_base, "base")
    image = image_data_url(picture)
    cut = _chat(url, image, max_tokens=2, logprobs=True, top_logprobs=1)
    whole = _chat(url, image, max_tokens=64, logprobs=True, top_logprobs=1)
    assert cut["choices"][0]["finish_reason"] == "length" and cut["usage"]["completion_tokens"] == 2
    assert len(cut["choices"][0]["logprobs"]["content"]) == 2
    steps = whole["choices"][0]["logprobs"]["content"]
    assert whole["choices"][0]["finish_reason"] == "stop" and len(steps) < 64
    assert whole["usage"]["completion_tokens"] == len(steps) + 1  # the end-of-sequence token counts, as in vLLM
    model, processor = world_base
    encoded = processor(images=[[picture]], text=[chat_prompt(processor, "describe the image.")], return_tensors="pt")
    assert whole["usage"]["prompt_tokens"] == cut["usage"]["prompt_tokens"] == encoded["input_ids"].shape[1]
    assert whole["usage"]["total_tokens"] == whole["usage"]["prompt_tokens"] + len(steps) + 1
    assert whole["usage"]["completion_tokens"] != len(whole["choices"][0]["message"]["content"].split())


def test_a_request_sliced_over_steps_draws_the_same_answers(serve, world_base, picture):
    from vlalign.feedback.judge_api import image_data_url

    image = image_data_url(picture)
    (_, whole), (sliced_server, sliced) = serve(*world_base, "base"), serve(*world_base, "base", max_batch=2)
    one = _chat(whole, image, n=6, seed=5, temperature=1.0)
    three = _chat(sliced, image, n=6, seed=5, temperature=1.0)
    assert sliced_server.batcher.batches == [1, 1, 1]  # 2 answers a step
    assert [c["message"]["content"] for c in one["choices"]] == [c["message"]["content"] for c in three["choices"]]
    assert one["usage"] == three["usage"]


def test_a_full_model_directory_loads_and_unloads_by_name(serve, world_base, picture):
    from vlalign.feedback.judge_api import image_data_url
    from vlalign.models.load import resolve

    server, url = serve(*world_base, "base", lora_dirs=[resolve("world:base").parent])
    loaded = _post(f"{url}/load_lora_adapter", {"lora_name": "again", "lora_path": str(resolve("world:base"))})
    assert loaded == "Success: LoRA adapter 'again' added successfully."
    with urllib.request.urlopen(f"{url}/models") as response:
        listed = [m["id"] for m in json.loads(response.read())["data"]]
    assert listed == ["base", "again"]
    image = image_data_url(picture)
    same = _chat(url, image, model="again")["choices"][0]["message"]["content"]
    assert same == _chat(url, image)["choices"][0]["message"]["content"]
    assert server.served.counts == {"base": 1, "again": 1}
    assert _post(f"{url}/unload_lora_adapter", {"lora_name": "again"}).startswith("Success")
    with pytest.raises(urllib.error.HTTPError) as gone:
        _post(f"{url}/unload_lora_adapter", {"lora_name": "again"})
    assert gone.value.code == 404


def test_the_api_labeler_gives_the_local_labelers_p_yes(serve, world_labeler, picture):
    _, url = serve(*world_labeler, "labeler")
    questions = ["is there a circle in the image?", "is there a red square in the image?", "is there a star in the image?"]
    api = ApiLabeler(make_judge(f"api:labeler@{url}"), "api:labeler")
    remote = api.yes_probability([picture] * 3, questions, ["a", "b", "c"])
    local = yes_probability(*world_labeler, [picture] * 3, questions)
    assert remote == pytest.approx(local, abs=1e-4)


def test_a_stacked_adapter_on_the_base_is_the_merged_policy(world_base, picture, tmp_path):
    """Two rounds of LoRA, each merged before the next: one adapter of rank r1 + r2 on the base gives the same
    model (what lets a server keep its base and load one adapter per round)."""
    base, processor = world_base
    model = apply_lora(load("world:base", dtype="fp32", device="cpu")[0], LoraSettings(r=2, alpha=4))
    for round_ in (1, 2):
        torch.manual_seed(round_)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.05)
        save_stacked_adapter(model, tmp_path / f"round{round_}", tmp_path / "round1" if round_ == 2 else None)
        merged = model.merge_and_unload()
        model = apply_lora(merged, LoraSettings(r=3, alpha=3))
    config = json.loads((tmp_path / "round2" / "adapter_config.json").read_text())
    assert config["r"] == 5 and config["lora_alpha"] == 5
    stacked = load(tmp_path / "round2", dtype="fp32", device="cpu")[0]
    inputs = processor(images=[[picture]], text=[chat_prompt(processor, "describe the image.")], return_tensors="pt")
    with torch.no_grad():
        want, got = merged(**inputs).logits, stacked(**inputs).logits
    assert torch.allclose(want, got, atol=1e-4)


def test_an_adapter_load_names_the_server_and_the_fix(serve, world_base, tmp_path):
    judge = make_judge("api:base@http://127.0.0.1:1/v1")
    with pytest.raises(JudgeUnavailable, match=r"cannot reach http://127.0.0.1:1/v1 .*start the server"):
        load_adapter(judge, "x", str(tmp_path))
    server, url = serve(*world_base, "base")
    with pytest.raises(JudgeUnavailable, match="refused to load the adapter"):
        load_adapter(make_judge(f"api:base@{url}"), "x", str(tmp_path))  # no adapter there
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    plain = ThreadingHTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)  # answers POST with 501
    threading.Thread(target=plain.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        with pytest.raises(JudgeUnavailable, match=r"has no /load_lora_adapter endpoint .*--enable-lora.*sampler_restart"):
            load_adapter(make_judge(f"api:base@http://127.0.0.1:{plain.server_port}/v1"), "x", str(tmp_path))
    finally:
        plain.shutdown()
        plain.server_close()


def _config(sampler: str, labeler: str, *extra: str):
    return load_config(METHODS.get("rlaif-v").config, None, [
        "policy=world:base", "runtime.dtype=fp32", f"labeler={labeler}", f"sampler={sampler}", "rounds=2",
        "prompts.source=world", "prompts.per_round=4", "samples=3", "decoding.max_new_tokens=32",
        "decoding.temperature=1.0", "splitter=world", "batch_size=8", "train.batch_size=4", "train.epochs=1",
        "train.optim.lr=1e-2", "train.optim.warmup_ratio=0", "train.lora={r: 4, alpha: 8}", "report=false", *extra])


def _samples(run) -> dict[str, list[tuple[str, int, str]]]:
    return {k: [(r.id, r.seed, r.response) for r in map(ResponseRecord.from_row, Stage(run / k / "responses").rows())]
            for k in ("round1", "round2")}


def test_a_round_samples_and_labels_on_servers_and_reloads_the_adapter(serve, world_base, world_labeler, tmp_path):
    """Two servers of the policy (requests spread over them) and one of the labeler: round 2 samples with round
    1's adapter, loaded into both; a second run in a fresh directory draws the same samples."""
    servers = [serve(*world_base, "base", lora_dirs=[tmp_path]) for _ in range(2)]
    labeler_server, labeler_url = serve(*world_labeler, "labeler")
    config = _config(f"api:base@{servers[0][1]},{servers[1][1]}", f"api:labeler@{labeler_url}")
    started = time.monotonic()
    summary = runner.run(METHODS.get("rlaif-v"), config, tmp_path / "a")
    first = time.monotonic() - started
    samples = _samples(tmp_path / "a")
    assert all(len(v) == 4 * 3 for v in samples.values())
    served = [s.served.counts for s, _ in servers]
    loaded = [name for counts in served for name in counts if name != "base"]
    assert len(set(loaded)) == 1 and loaded[0].endswith("-round1"), served
    # round 1 from the base, round 2 from the adapter, and both servers took a share of each
    assert all(counts["base"] > 0 and counts[loaded[0]] > 0 for counts in served)
    assert sum(c["base"] for c in served) == sum(c[loaded[0]] for c in served) == 12
    round2 = map(ResponseRecord.from_row, Stage(tmp_path / "a" / "round2" / "responses").rows())
    assert {r.meta["served_as"] for r in round2} == {loaded[0]}
    assert labeler_server.served.counts["labeler"] > 0  # every claim question was asked of the server
    assert summary["rounds"][1]["pairs"] >= 0
    # the seeds recorded are the ones drawn: sample k of a prompt has seed base + k
    by_prompt: dict[str, list[int]] = {}
    for rid, seed, _ in samples["round1"]:
        by_prompt.setdefault(rid.rsplit("/", 1)[0], []).append(seed)
    assert all(s == [s[0], s[0] + 1, s[0] + 2] for s in map(sorted, by_prompt.values()))
    weights = load_file(tmp_path / "a" / "round1" / "adapter" / "adapter_model.safetensors")
    assert any(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)  # round 1 trained something
    # the adapter on the base is round 1's merged policy: in this process, the same seeds give the same answers
    policy, processor = load(tmp_path / "a" / "round1" / "policy", dtype="fp32", device="cpu")
    rows = list(map(ResponseRecord.from_row, Stage(tmp_path / "a" / "round2" / "responses").rows()))
    images = [Stage(tmp_path / "a" / "round2" / "responses").images.get(r.image) for r in rows]
    here = generate(policy, processor, images, [r.instruction for r in rows], config.decoding,
                    seeds=[r.seed for r in rows])
    assert here == [r.response for r in rows]
    runner.run(METHODS.get("rlaif-v"), config, tmp_path / "b")
    assert _samples(tmp_path / "b") == samples
    print(f"two api rounds: {first:.1f} s")


def test_round_two_without_an_adapter_says_what_to_do(serve, world_base, tmp_path):
    from vlalign.data.store import RunStore

    _, url = serve(*world_base, "base")
    config = _config(f"api:base@{url}", "world:labeler")
    store = RunStore(tmp_path)
    r = Round(2, config, store, None, None, None, GivenModels(make_judge))
    with pytest.raises(ValueError, match=r"saved no LoRA adapter .* train with LoRA .*sampler_restart"):
        server_sampler(r, make_judge(config.sampler))


def test_a_restart_hook_gets_the_rounds_policy(serve, world_base, tmp_path):
    from vlalign.data.store import RunStore

    _, url = serve(*world_base, "base")
    seen = tmp_path / "restarted"
    config = _config(f"api:base@{url}", "world:labeler", f"sampler_restart=echo {{policy}} > {seen}")
    r = Round(2, config, RunStore(tmp_path / "run"), None, None, None, GivenModels(make_judge))
    sampler = server_sampler(r, make_judge(config.sampler))
    assert sampler.model is None  # the restarted servers serve the new policy under their own name
    assert seen.read_text().strip() == str((tmp_path / "run" / "round1" / "policy").absolute())


def test_grpo_samples_and_scores_on_servers_with_the_rounds_adapter(serve, world_base, world_labeler, tmp_path):
    """GRPO's rollouts on servers: round 2 samples with round 1's adapter loaded into the policy's server, and
    its claim rewards come from a served labeler, which gives the local labeler's verdict on every yes/no claim
    (a server cannot score a count claim's given answers: those are left out, with a warning)."""
    server, url = serve(*world_base, "base", lora_dirs=[tmp_path])
    labeler_server, labeler_url = serve(*world_labeler, "labeler")
    claims = "{splitter: world-implied}"

    def config(labeler: str):
        return load_config(METHODS.get("grpo").config, None, [
            "policy=world:base", "runtime.dtype=fp32", f"sampler=api:base@{url}", "rounds=2", "prompts.source=world",
            "prompts.per_round=3", "samples=4", "decoding.max_new_tokens=24", "decoding.temperature=1.0",
            f"rewards=[{{kind: rejected_claims, model: {labeler}, options: {claims}}}]", "groups.drop_equal=false",
            "batch_size=12", "train.batch_size=3", "train.optim.lr=1e-2", "train.lora={r: 4, alpha: 8}", "report=false"])

    runner.run(METHODS.get("grpo"), config(f"api:labeler@{labeler_url}"), tmp_path / "a")
    loaded = [name for name in server.served.counts if name != "base"]
    assert len(loaded) == 1 and loaded[0].endswith("-round1"), server.served.counts
    round2 = list(map(ResponseRecord.from_row, Stage(tmp_path / "a" / "round2" / "responses").rows()))
    assert len(round2) == 12 and {r.meta["served_as"] for r in round2} == {loaded[0]}
    assert labeler_server.served.counts["labeler"] > 0
    runner.run(METHODS.get("grpo"), config("world:labeler"), tmp_path / "b")

    def verdicts(run: str, k: int) -> dict[tuple[str, str], tuple[float, bool]]:
        rows = Stage(tmp_path / run / f"round{k}" / "rewards" / "rejected_claims").rows()
        assert len(rows) == 12
        return {(f.response_id, c["question"]): (c["p_yes"], c["rejected"]) for f in map(FeedbackRecord.from_row, rows)
                for c in f.details["claims"] if not c.get("answers")}

    # round 1: the same answers (the base on the same server), the same verdicts; the rounds after differ, as the
    # local labeler's count claims change the rewards, and so what round 1 trains
    served, local = verdicts("a", 1), verdicts("b", 1)
    assert served and served.keys() == local.keys()
    assert all(served[q][1] == local[q][1] and served[q][0] == pytest.approx(local[q][0], abs=1e-4) for q in served)
