"""`make_judge(spec)`: one string names any judge backend, in configs and on the command line.

- `api:MODEL` or `api:MODEL@BASE_URL`: an OpenAI-compatible endpoint (`OpenAIJudge`); the key comes from
  `OPENAI_API_KEY` (or the variable named by `VLALIGN_API_KEY_ENV`), never from the spec.
- anything else (`world:judge`, a model directory): a model loaded in this process (`ModelJudge`).
"""

from __future__ import annotations

import os

from vlalign.feedback.judge import Judge


def make_judge(spec: str, concurrency: int = 8, device: str | None = None) -> Judge:
    if spec.startswith("api:"):
        from vlalign.feedback.judge_api import OpenAIJudge

        model, _, base_url = spec[len("api:"):].partition("@")
        if not model:
            raise ValueError(f"judge spec {spec!r} names no model; write api:MODEL or api:MODEL@BASE_URL")
        return OpenAIJudge(model, base_url or os.environ.get("OPENAI_BASE_URL"),
                           api_key_env=os.environ.get("VLALIGN_API_KEY_ENV", "OPENAI_API_KEY"),
                           concurrency=concurrency)
    from vlalign.feedback.judge_local import ModelJudge
    from vlalign.models.load import load

    model, processor = load(spec, device=device)
    return ModelJudge(model, processor, name=spec)
