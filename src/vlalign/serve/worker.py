"""The model's one worker, shared fairly, and the models it answers with.

`Batcher` owns the model. Requests wait in a bounded queue (`Limits.max_queue`: beyond it a request is
refused with 429 and Retry-After, so memory and waiting times stay bounded), and each step of the worker
generates at most `max_batch` answers, shared out evenly among the requests waiting: a request for n
answers is generated in slices, answer i always with seed `seed + i` (vLLM's rule), so its answers are the
same however it was sliced, while a request that arrives behind an `n: 128` request is answered in the
next step instead of after all 128. A request whose client has gone (disconnected, or waited past its
timeout) is dropped before its next slice, so abandoned work costs nothing.

`Served` routes each request to the model its `model` names: the served model, or a LoRA adapter (or a
full model directory) loaded by name at run time, from the folders the operator allowed at start only.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import queue
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vlalign.feedback.judge import ChatReply, ChatRequest, Choice
from vlalign.serve.request import ApiError


def _peer_closed(connection: socket.socket | None) -> bool:
    """Whether the client hung up: its socket reads as end-of-file (or fails) without blocking."""
    if connection is None:
        return False
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        return bool(readable) and connection.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


@dataclass
class Job:
    """One request waiting for the model: the answers made so far, and the time its client stops waiting."""

    request: ChatRequest
    connection: socket.socket | None
    deadline: float
    done: threading.Event = field(default_factory=threading.Event)
    answers: list[Choice] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    scheduled: int = 0  # answers handed to the model so far
    cancelled: bool = False
    finished: bool = False

    @property
    def n(self) -> int:
        return max(self.request.n, 1)

    @property
    def reply(self) -> ChatReply | None:
        """The whole reply once every answer is made; None when the job was dropped."""
        if self.error is not None:
            return ChatReply(None, self.error)
        if len(self.answers) < self.n:
            return None
        return ChatReply(self.answers[0].text, None, self.prompt_tokens, self.completion_tokens,
                         choices=list(self.answers))

    def abandoned(self) -> bool:
        return self.cancelled or time.monotonic() > self.deadline or _peer_closed(self.connection)

    def slice(self, count: int) -> ChatRequest:
        """The request for this job's next `count` answers: answer i of the whole keeps seed `seed + i`."""
        r = self.request
        seed = None if r.seed is None else r.seed + self.scheduled
        self.scheduled += count
        return dataclasses.replace(r, n=count, seed=seed)

    def add(self, reply: ChatReply) -> None:
        if not reply.ok:
            self.error = reply.error or "the model gave no answer"
            return
        self.prompt_tokens = self.prompt_tokens or reply.prompt_tokens  # the prompt counts once, as in vLLM
        self.completion_tokens += reply.completion_tokens
        self.answers += reply.answers()

    def finish(self) -> None:
        self.finished = True
        self.done.set()


def shares(wanted: Sequence[int], budget: int) -> list[int]:
    """How many of `budget` answers each job gets in one step: evenly, in arrival order, no job more than it
    still wants (water-filling), so a big request takes what the others leave."""
    given = [0] * len(wanted)
    while budget > 0:
        hungry = [i for i, w in enumerate(wanted) if given[i] < w]
        if not hungry:
            break
        each = max(1, budget // len(hungry))
        for i in hungry:
            take = min(each, wanted[i] - given[i], budget)
            given[i] += take
            budget -= take
            if budget == 0:
                break
    return given


class Busy(Exception):
    """The queue is full: the request is refused (429) with the seconds after which to try again."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"the server is busy ({waiting} requests waiting); retry after {retry_after} s")
        self.retry_after = retry_after


class Batcher:
    """The model's one worker; see the module docstring."""

    def __init__(self, judge, max_batch: int = 16, max_queue: int = 256, gather: float = 0.005):
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be at least 1, got {max_batch} and {max_queue}")
        self.judge, self.max_batch, self.max_queue, self.gather = judge, max_batch, max_queue, gather
        self.inbox: queue.Queue[Job] = queue.Queue()
        self.active: list[Job] = []
        self.batches: list[int] = []  # requests (or slices of them) in each model call, for tests and logs
        self.dropped = 0
        self._count, self._lock = 0, threading.Lock()
        self._step_seconds = 1.0  # how long a step took lately, for Retry-After
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vlalign-serve-model", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue `job`, or raise `Busy` when `max_queue` requests already wait."""
        with self._lock:
            if self._count >= self.max_queue:  # a place frees up within a step or so
                raise Busy(self._count, max(1, math.ceil(self._step_seconds)))
            self._count += 1
        self.inbox.put(job)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _admit(self) -> None:
        """Move the queued jobs to the active ones; with none active, wait a little for the first (and
        `gather` seconds for those arriving with it, so they share a batch)."""
        try:
            if not self.active:
                self.active.append(self.inbox.get(timeout=0.1))
                time.sleep(self.gather)
            while True:
                self.active.append(self.inbox.get_nowait())
        except queue.Empty:
            pass

    def _close(self, job: Job) -> None:
        job.finish()
        with self._lock:
            self._count -= 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._admit()
            for job in [j for j in self.active if j.abandoned()]:
                self.dropped += 1
                self.active.remove(job)
                self._close(job)
            if not self.active:
                continue
            given = shares([j.n - j.scheduled for j in self.active], self.max_batch)
            picked = [(j, j.slice(k)) for j, k in zip(self.active, given, strict=True) if k > 0]
            started = time.monotonic()
            replies = self._complete([r for _, r in picked])
            self._step_seconds = 0.8 * self._step_seconds + 0.2 * (time.monotonic() - started)
            self.batches.append(len(picked))
            for (job, _), reply in zip(picked, replies, strict=True):
                job.add(reply)
                if job.error is not None or len(job.answers) >= job.n:
                    self.active.remove(job)
                    self._close(job)

    def _complete(self, requests: Sequence[ChatRequest]) -> list[ChatReply]:
        """The model's replies; a model that raises fails this step's requests, not the server."""
        try:
            replies = self.judge.complete(list(requests))
            if len(replies) == len(requests):
                return replies
            error = f"the model answered {len(replies)} of {len(requests)} requests"
        except Exception as e:
            error = f"the model failed: {type(e).__name__}: {e}"
        return [ChatReply(None, error) for _ in requests]


class Served:
    """The models a server answers with: its own, and the adapters loaded onto it by name from the folders
    in `lora_dirs` (none: loading is off). `counts` tallies the answers each gave, so tests and logs can see
    which model served a round."""

    def __init__(self, judge, name: str, lora_dirs: Sequence[str | Path] = ()):
        self.judge, self.name = judge, name
        self.lora_dirs = tuple(Path(d).resolve() for d in lora_dirs)
        self.adapters: dict[str, tuple[object, str]] = {}  # name -> (judge, the path it was loaded from)
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()

    def knows(self, name: str | None) -> bool:
        """Whether a request for model `name` can be answered (None: the served model)."""
        with self.lock:
            return name in (None, self.name) or name in self.adapters

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatReply]:
        groups: dict[str, tuple[object, list[int]]] = {}
        replies: dict[int, ChatReply] = {}
        for i, r in enumerate(requests):
            with self.lock:
                found = self.adapters.get(r.model) if r.model not in (None, self.name) else (self.judge, "")
            if found is None:  # unloaded while the request waited
                replies[i] = ChatReply(None, f"the model {r.model!r} was unloaded while the request waited")
                continue
            groups.setdefault(r.model or self.name, (found[0], []))[1].append(i)
        for name, (judge, idx) in groups.items():
            answered = judge.complete([requests[i] for i in idx])
            if len(answered) != len(idx):
                raise RuntimeError(f"{name} answered {len(answered)} of {len(idx)} requests")
            replies.update(zip(idx, answered, strict=True))
            self.counts[name] += sum(max(requests[i].n, 1) for i in idx)
        return [replies[i] for i in range(len(requests))]

    def allowed(self, path: str) -> Path:
        """`path` resolved (links followed), when it lies in a folder the operator allowed; `ApiError` (403)
        when loading is off or the path lies elsewhere."""
        if not self.lora_dirs:
            raise ApiError(403, "loading adapters is off on this server: start it with --lora-dir DIR, naming the "
                                "folders adapters may be loaded from", "lora_path", "lora_loading_disabled")
        resolved = Path(path).expanduser().resolve()
        if not any(resolved.is_relative_to(d) for d in self.lora_dirs):
            raise ApiError(403, f"lora_path {path} is outside the folders this server loads adapters from; start "
                                f"it with --lora-dir naming a folder that holds it", "lora_path", "lora_path_not_allowed")
        return resolved

    def load(self, name: str, path: str) -> None:
        """Serve the adapter (or model) at `path` as `name`; `ApiError` says why not."""
        if not name or name == self.name or len(name) > 256:
            raise ApiError(400, f"lora_name must be a new name of at most 256 characters, not {name!r}", "lora_name")
        resolved = self.allowed(path)
        with self.lock:
            if name in self.adapters:
                raise ApiError(400, f"the lora adapter {name!r} has already been loaded; unload it first", "lora_name")
        try:
            judge = _load_onto(self.judge, resolved, name)
        except (ValueError, OSError) as e:
            raise ApiError(400, str(e), "lora_path") from None
        with self.lock:
            self.adapters[name] = (judge, path)

    def unload(self, name: str) -> bool:
        with self.lock:
            return self.adapters.pop(name, None) is not None

    def listed(self) -> list[dict]:
        with self.lock:
            loaded = [{"id": n, "object": "model", "parent": self.name, "root": p} for n, (_, p) in self.adapters.items()]
        return [{"id": self.name, "object": "model"}, *loaded]


def _load_onto(judge, path: Path, name: str):
    """A judge answering with the PEFT adapter at `path` on a copy of `judge`'s model, or with the full model
    directory at `path`, on the same device and under the same settings."""
    from vlalign.feedback.judge_local import ModelJudge

    model = getattr(judge, "model", None)
    if model is None:
        raise ValueError(f"this server's backend ({type(judge).__name__}) is not a local model: it cannot load adapters")
    if (path / "adapter_config.json").exists():
        from peft import PeftModel

        loaded = PeftModel.from_pretrained(copy.deepcopy(model), path, is_trainable=False).eval()
        return ModelJudge(loaded, judge.processor, name=name, batch_size=judge.batch_size)
    if (path / "config.json").exists():
        from vlalign.models.load import load

        p = next(model.parameters())
        full, processor = load(path, device=str(p.device), dtype=str(p.dtype).removeprefix("torch."))
        return ModelJudge(full, processor, name=name, batch_size=judge.batch_size)
    raise ValueError(f"no adapter or model at {path} (no adapter_config.json or config.json); lora_path must be a "
                     f"directory on the server's machine")
