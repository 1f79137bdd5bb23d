"""Sampling and labeling on OpenAI-compatible servers (vLLM, SGLang, `vlalign serve`), for when a model in
this process is too slow.

- `sample_requests`: one chat request per run of consecutive samples of a prompt, `n` answers each, with
  seed `base + k` for sample k (vLLM's rule for `n` with a `seed`), so the seeds a run records are the ones
  the server drew with, and a resumed stage asks for exactly the samples it lacks.
- `ApiLabeler`: P(yes) of a claim question from the `top_logprobs` of a one-token answer, normalised as the
  local labeler does (P(yes) + P(Yes) against P(no) + P(No)).
- `load_adapter` / `restart`: how each round's new policy reaches the servers: vLLM's dynamic LoRA endpoint
  (`POST /v1/load_lora_adapter`, which `vlalign serve` implements too), or a shell command that restarts them
  with the new policy.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from vlalign.feedback.judge import ChatReply, ChatRequest, Judge, JudgeUnavailable, checked_logprob
from vlalign.models.scoring import NO_WORDS, YES_WORDS
from vlalign.models.settings import Decoding

LOGPROB_ALTERNATIVES = 20  # top_logprobs asked of a labeler: the most OpenAI and vLLM's default allow
ADAPTER_TIMEOUT = 300.0  # seconds a server may take to load an adapter
RESTART_WAIT = 600.0  # seconds a restarted server has to answer again


class ServerUnavailable(JudgeUnavailable):
    """A server that cannot take a round's policy (unreachable, no LoRA endpoint); names the URL and the fix."""


def endpoints(judge) -> list:
    """The single-URL clients behind an api judge (a `SpreadJudge` has several)."""
    return list(getattr(judge, "judges", [judge]))


# ---------------------------------------------------------------- sampling


@dataclass(frozen=True)
class ServerSampler:
    """Where a round samples: an api judge (one or more servers), the model name its requests ask for (a
    LoRA adapter loaded for the round, or None: the judge's own model), and the spec the stage records."""

    judge: Judge
    spec: str
    model: str | None = None

    @property
    def served_as(self) -> str:
        return self.model or str(getattr(self.judge, "model", ""))


@dataclass(frozen=True)
class SampleRun:
    """Samples `first` .. `first + n - 1` of one prompt, asked for in one request."""

    key: str  # the prompt's record id
    first: int
    n: int


def consecutive(key: str, ks: Sequence[int]) -> list[SampleRun]:
    """The runs of consecutive sample indices among `ks` (a resumed stage may lack only some)."""
    runs: list[SampleRun] = []
    for k in sorted(ks):
        if runs and runs[-1].first + runs[-1].n == k:
            runs[-1] = SampleRun(key, runs[-1].first, runs[-1].n + 1)
        else:
            runs.append(SampleRun(key, k, 1))
    return runs


def sample_request(image: Image.Image, instruction: str, decoding: Decoding, seed: int, run: SampleRun,
                   model: str | None) -> ChatRequest:
    """The request for `run`'s samples: seed `seed + run.first`, so sample k is drawn with `seed + k`."""
    return ChatRequest(instruction, (image,), max_tokens=decoding.max_new_tokens, temperature=decoding.temperature,
                       top_p=decoding.top_p, n=run.n, seed=seed + run.first if decoding.temperature > 0 else None,
                       model=model, id=f"{run.key}/s{run.first}")


# ---------------------------------------------------------------- labeling


def p_yes_of(reply: ChatReply) -> float:
    """P(yes) / (P(yes) + P(no)) from the first token's top log-probs ("Yes" and "yes" count together);
    ValueError when the reply has none, or one that is not a log-probability, or neither yes nor no."""
    answers = reply.answers()
    steps = answers[0].logprobs if answers else None
    if not steps:
        raise ValueError("the labeler's reply holds no token log-probs")
    top = [(t, checked_logprob(lp)) for t, lp in steps[0].top or ((steps[0].token, steps[0].logprob),)]
    p_yes = sum(math.exp(lp) for t, lp in top if t.strip() in YES_WORDS)
    p_no = sum(math.exp(lp) for t, lp in top if t.strip() in NO_WORDS)
    if p_yes + p_no == 0:
        raise ValueError(f"neither yes nor no is among the labeler's {len(top)} likeliest first tokens "
                         f"({', '.join(t for t, _ in top[:5])}, ...): is it a yes/no model?")
    return p_yes / (p_yes + p_no)


class ApiLabeler:
    """A labeler behind an OpenAI-compatible server: each question is a one-token greedy completion with
    `top_logprobs`, its image sent inline as a data URL. `usage` counts its requests, retries and failures
    (a reply with no usable log-probs is a failure too), for the labeling stage's manifest."""

    def __init__(self, judge, name: str):
        self.judge, self.name = judge, name
        self.usage = getattr(judge, "usage", None)

    def yes_probability(self, images: Sequence[Image.Image], questions: Sequence[str],
                        keys: Sequence[str]) -> list[float | Exception]:
        """P(yes) of each question, or the error (naming its record) that kept it from being scored."""
        requests = [ChatRequest(q, (im,), max_tokens=1, temperature=0.0, logprobs=LOGPROB_ALTERNATIVES, id=k)
                    for im, q, k in zip(images, questions, keys, strict=True)]
        out: list[float | Exception] = []
        for request, reply in zip(requests, self.judge.complete(requests), strict=True):
            if not reply.ok:
                out.append(RuntimeError(reply.error))
                continue
            try:
                out.append(p_yes_of(reply))
            except ValueError as e:
                if self.usage is not None:
                    self.usage.add(failures=1)  # answered, but nothing a P(yes) can be read from
                out.append(ValueError(f"record {request.id}: labeler {self.name}: {e}"))
        return out


# ---------------------------------------------------------------- a round's policy on the servers


def _post(url: str, path: str, body: dict, key: str | None, timeout: float) -> tuple[int, str]:
    """(status, text) of a JSON POST to `url` + `path`; an unreachable server raises `URLError`."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url.rstrip("/") + path, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def _message(text: str) -> str:
    try:
        data = json.loads(text)
        error = data.get("error", data)
        return str(error.get("message", text) if isinstance(error, dict) else error)
    except (ValueError, AttributeError):
        return text.strip()[:300]


def load_adapter(judge, name: str, path: str, timeout: float = ADAPTER_TIMEOUT) -> None:
    """Serve the LoRA adapter at `path` as `name` on every server of `judge` (an adapter of that name loaded
    before is replaced); `ServerUnavailable` names the server and the fix when one cannot."""
    for client in endpoints(judge):
        key, url = os.environ.get(client.api_key_env), str(client.client.base_url)
        try:
            _post(url, "/unload_lora_adapter", {"lora_name": name}, key, timeout)
            status, text = _post(url, "/load_lora_adapter",
                                 {"lora_name": name, "lora_path": path}, key, timeout)
        except (urllib.error.URLError, OSError) as e:
            raise ServerUnavailable(client.redact(
                f"sampler {client.name}: cannot reach {client.url} to load the round's LoRA adapter ({e}): start "
                f"the server, or fix the URL in the sampler spec (api:MODEL@URL)")) from None
        if status in (404, 405, 501):
            raise ServerUnavailable(client.redact(
                f"sampler {client.name}: {client.url} has no /load_lora_adapter endpoint (HTTP {status}): start "
                f"vLLM with --enable-lora (and --max-lora-rank at least the adapter's rank) and the environment "
                f"variable VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, or set sampler_restart to a command that "
                f"restarts the server with each round's policy"))
        if status >= 300:
            raise ServerUnavailable(client.redact(
                f"sampler {client.name}: {client.url} refused to load the adapter at {path} as {name!r} "
                f"(HTTP {status}: {_message(text)}); the path must be readable on the server's machine"))


def restart(judge, command: str, policy: str, wait: float = RESTART_WAIT) -> None:
    """Run the restart hook `command` with the new policy (as {policy} in the command, and as the environment
    variable VLALIGN_POLICY), then wait until every server answers again."""
    shell = command.replace("{policy}", shlex.quote(policy))
    done = subprocess.run(shell, shell=True, env={**os.environ, "VLALIGN_POLICY": policy}, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise ServerUnavailable(f"sampler_restart {command!r} failed with exit status {done.returncode}: "
                                f"{(done.stderr or done.stdout).strip()[-500:]}")
    deadline = time.monotonic() + wait
    while True:
        try:
            judge.check()
            return
        except JudgeUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)
