"""`vlalign serve`: an OpenAI-compatible chat endpoint in front of a local model, hardened like a server.

`POST /v1/chat/completions` (text and `image_url` parts with data URLs) and `GET /v1/models`, enough for the
`openai` SDK and for every judge-backed step here, so a world model can stand in for GPT-4o and the API path
is tested against a real HTTP server. Sampling follows vLLM's chat API, so the path a run takes to vLLM or
SGLang is tested here: `n` answers per request, answer i drawn with seed `seed + i`, `temperature` (0 when not
given, unlike vLLM's 1), `top_p`, `max_tokens`, and `logprobs` with `top_logprobs` (from the model's raw
distribution). Each choice says `finish_reason: "length"` when `max_tokens` cut it, and `usage` counts the
model tokenizer's tokens. `POST /v1/load_lora_adapter {lora_name, lora_path}` puts a PEFT adapter directory
(or a full model directory) onto the server under that name, from the folders `--lora-dir` allowed only;
`POST /v1/unload_lora_adapter {lora_name}` drops it; a request for any other model name is a 404, as vLLM
answers it.

The parts: `request` (what a request may ask: `Limits`, `parse_chat`, OpenAI's error shape), `worker` (the
model's one worker, shared fairly among the requests waiting, with a bounded queue; the adapters), `server`
(HTTP: the API key, the body limit, routes, the request log). `fail_every` makes every k-th request fail with
503 (or `fail_status`), to test clients' retries.
"""

from vlalign.serve.request import ApiError, Limits, parse_chat
from vlalign.serve.server import make_server

__all__ = ["ApiError", "Limits", "make_server", "parse_chat"]
