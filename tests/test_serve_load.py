"""A bounded load test of `vlalign serve` as the command runs it (a process of its own on 127.0.0.1, the
world's base model, an API key from VLALIGN_API_KEY): a fixed mix of 200 requests from 12 clients (valid
chats with images, n up to 128, invalid parameters, wrong keys, unknown models, 50 MB bodies, decompression
bombs), every one answered with its expected status within a time bound, the server's peak memory bounded
(so no 50 MB body was read into memory), and one request-log line per request. It prints the numbers."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_faults_serve_input import _png_bomb, _until_closed

from vlalign.feedback.judge_api import image_data_url
from vlalign.world.render import render
from vlalign.world.scene import sample_scene

KEY = "sk-load-test-5f2c9a"
DEADLINE = 480.0  # seconds for the whole mix (a quiet 2-core machine takes about 90); the test fails past it
CLIENT_TIMEOUT = 300.0  # a client waits this long for its answer


def _vm(pid: int, field: str) -> int:
    """A /proc/<pid>/status memory figure in MB (VmHWM: the peak resident set; VmRSS: now)."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1)) // 1024


def _request(port: int, body: bytes | None, key: str | None, announced: int | None = None) -> int:
    """Send one POST to /v1/chat/completions as raw HTTP (`announced` overrides the Content-Length, sending
    only what `body` holds); the answer's status, or -1 when the connection ended without one."""
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body) if announced is None else announced}\r\n"
    head += f"Authorization: Bearer {key}\r\n" if key else ""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as s:
            s.sendall(head.encode() + b"\r\n")
            for start in range(0, len(body), 2 ** 20):
                s.sendall(body[start:start + 2 ** 20])
            answer = _until_closed(s)
        return int(answer.split(b" ", 2)[1])
    except (OSError, IndexError, ValueError):
        return -1


def _mix(image: str) -> list[tuple[str, bytes, str | None, int | None, set[int]]]:
    """(kind, body, key, announced length, the statuses it may get) of every request, in a fixed order: 200
    requests, 10 of each kind below but the chats (80, one of them asking for 128 answers)."""
    def chat(**fields) -> bytes:
        content = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "describe the image."}]
        return json.dumps({"model": "base", "max_tokens": 4, "messages": [{"role": "user", "content": content}],
                           **fields}).encode()

    bomb = "data:image/png;base64," + base64.b64encode(_png_bomb(30_000, 30_000)).decode()
    huge = b'{"messages": [{"role": "user", "content": "' + b"x" * (50 * 2 ** 20) + b'"}]}'
    invalid = [{"max_tokens": 0}, {"max_tokens": -5}, {"max_tokens": 1e9}, {"n": 0}, {"n": 2.7}, {"seed": 2 ** 80},
               {"temperature": float("nan")}, {"temperature": float("inf")}, {"model": 7}, {"stream": True}]
    ok = {200, 429}  # a full queue may refuse (with Retry-After); nothing else
    mix = []
    for i in range(200):
        kind, cycle = i % 20, i // 20
        if kind < 6 or (kind == 7 and cycle > 0):
            mix.append(("chat", chat(seed=i, temperature=1.0), KEY, None, ok))
        elif kind == 6:
            mix.append(("chat n=4", chat(n=4, seed=i, temperature=1.0), KEY, None, ok))
        elif kind == 7:
            mix.append(("chat n=128", chat(n=128, max_tokens=2, seed=i, temperature=1.0), KEY, None, ok))
        elif kind in (8, 9):
            mix.append(("invalid parameter", chat(**invalid[(2 * cycle + kind) % 10]), KEY, None, {400}))
        elif kind == 10:
            mix.append(("wrong or no key", chat(), "sk-wrong" if cycle % 2 else None, None, {401}))
        elif kind == 11:
            mix.append(("unknown model", chat(model="gpt-4o"), KEY, None, {404}))
        elif kind == 12:
            mix.append(("50 MB announced", b"x" * 2 ** 20, KEY, 50 * 2 ** 20, {413}))
        elif kind == 13:
            mix.append(("50 MB sent", huge, KEY, None, {413}))
        elif kind == 14:
            mix.append(("decompression bomb", json.dumps({"model": "base", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": bomb}}]}]}).encode(), KEY, None, {400}))
        elif kind == 15:
            mix.append(("body shorter than announced", b'{"messages": []', KEY, 4096, {400}))
        elif kind == 16:
            mix.append(("wrong Content-Length", b"{}", KEY, -5, {400}))
        else:
            mix.append(("chat", chat(seed=i), KEY, None, ok))
    return mix


@pytest.mark.slow
def test_serve_under_a_bounded_load(tmp_path):
    env = {**os.environ, "VLALIGN_API_KEY": KEY}
    server = subprocess.Popen([sys.executable, "-m", "vlalign", "serve", "world:base", "--port", "0", "--name", "base",
                               "--max-batch", "16", "--max-queue", "64", "--body-timeout", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(server.stderr), daemon=True)
    reader.start()
    try:
        line = server.stdout.readline()
        port = int(re.search(r"127\.0\.0\.1:(\d+)/v1", line).group(1))
        assert "an API key is required" in line and KEY not in line
        image = image_data_url(render(sample_scene(0, "test"), 64))
        mix = _mix(image)
        assert _request(port, mix[0][1], KEY) == 200  # warm: the model has answered once
        base_mb = _vm(server.pid, "VmRSS")
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=12) as pool:
            statuses = list(pool.map(lambda m: _request(port, m[1], m[2], m[3]), mix, timeout=DEADLINE))
        seconds = time.monotonic() - started
        peak_mb = _vm(server.pid, "VmHWM")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        reader.join(timeout=30)
    by_kind = Counter((kind, status) for (kind, *_), status in zip(mix, statuses, strict=True))
    print(f"\nload: {len(mix)} requests in {seconds:.1f} s from 12 clients; statuses "
          f"{dict(sorted(Counter(statuses).items()))}; by kind {dict(sorted(by_kind.items()))}; server memory "
          f"{base_mb} MB after warm-up, peak {peak_mb} MB")
    wrong = [(kind, status) for (kind, _, _, _, allowed), status in zip(mix, statuses, strict=True)
             if status not in allowed]
    assert not wrong, f"unexpected statuses (-1: no answer): {Counter(wrong)}"
    assert seconds < DEADLINE
    assert peak_mb - base_mb < 160, "a 50 MB body (or a bomb's pixels) was held in memory"
    requests = [line for line in log if " POST /v1/chat/completions " in line]
    logged = Counter(int(line.split()[3]) for line in requests)
    assert logged == Counter([200, *statuses]), f"one log line per request: {logged}; {log[-5:]}"
    assert not any(KEY in line or "Bearer" in line for line in log)
