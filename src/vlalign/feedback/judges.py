"""`make_judge(spec)`: one string names any judge backend, in configs and on the command line.

- `api:MODEL` or `api:MODEL@BASE_URL`: an OpenAI-compatible endpoint (`OpenAIJudge`); the key comes from
  `OPENAI_API_KEY` (or the variable named by `VLALIGN_API_KEY_ENV`), never from the spec.
  `api:MODEL@URL1,URL2,...` spreads the requests over several servers of the same model (`SpreadJudge`). Its settings
  (`concurrency`, `timeout` in seconds, `max_retries`) are keyword arguments, from a config's judge
  section or the command line; unset ones keep `OpenAIJudge`'s defaults.
- anything else (`world:judge`, a model directory): a model loaded in this process (`ModelJudge`), which
  batches instead of running requests concurrently, so the API settings do not apply to it.

`check_judge(judge)` runs a judge's own `check()` where it has one (an endpoint: reachable, key accepted,
model served), so a run can fail in its first second instead of after its first stage.
"""

from __future__ import annotations

import os

from vlalign.feedback.judge import Judge


def make_judge(spec: str, concurrency: int | None = None, device: str | None = None, *,
               timeout: float | None = None, max_retries: int | None = None) -> Judge:
    if spec.startswith("api:"):
        from vlalign.feedback.judge_api import OpenAIJudge, redact_secrets

        model, _, base_url = spec[len("api:"):].partition("@")
        if not model:
            raise ValueError(f"judge spec {redact_secrets(spec)!r} names no model; write api:MODEL or api:MODEL@BASE_URL")
        settings = {k: v for k, v in (("concurrency", concurrency), ("timeout", timeout),
                                      ("max_retries", max_retries)) if v is not None}
        urls = [u.strip() for u in (base_url or os.environ.get("OPENAI_BASE_URL") or "").split(",") if u.strip()]
        judges = [OpenAIJudge(model, url, api_key_env=os.environ.get("VLALIGN_API_KEY_ENV", "OPENAI_API_KEY"),
                              **settings) for url in urls or [None]]
        if len(judges) == 1:
            return judges[0]
        from vlalign.feedback.judge_api import SpreadJudge

        return SpreadJudge(judges)
    from vlalign.feedback.judge_local import ModelJudge
    from vlalign.models.load import load

    model, processor = load(spec, device=device)
    return ModelJudge(model, processor, name=spec)


def check_judge(judge: Judge) -> None:
    """Raise `JudgeUnavailable` (naming the endpoint and the fix) when `judge` cannot be used; judges
    without a `check()` (a model in this process) are usable once loaded."""
    check = getattr(judge, "check", None)
    if callable(check):
        check()
