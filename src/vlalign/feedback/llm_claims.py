"""RLAIF-V's divide and conquer with a chat model: split an answer into atomic facts, then turn each fact
into a yes/no question whose answer is "yes" exactly when the fact holds.

Both steps go through the judge backends (an OpenAI-compatible endpoint or an in-process model), one
request per answer for each step, sent together so an API backend runs them concurrently. Replies are
read robustly: numbered or bulleted lists, a JSON array, or plain lines. When the questions do not line
up with the facts one for one, each fact is asked again on its own. A failed request raises a
`JudgeError` that names the record, so the stage logs it and goes on with the rest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from vlalign.feedback.claims import Claim
from vlalign.feedback.judge import ChatRequest, Judge, JudgeError

SPLIT_PROMPT = """Break the answer below into atomic facts about the image. Each fact is one short, self-contained sentence that states exactly one thing (an object, an attribute, a count, a position or a relation) and can be checked by looking at the image on its own: replace pronouns with the nouns they stand for, and keep negations ("there is no dog"). Leave out opinions, greetings and statements that are not about the image.

Reply with a numbered list, one fact per line, and nothing else. If the answer states no fact about the image, reply "none".

Question: {instruction}
Answer: {answer}"""

QUESTION_PROMPT = """Turn every statement below into a yes/no question about the image whose correct answer is "yes" exactly when the statement is true. Keep negations: "There is no dog." becomes "Is there no dog in the image?". Keep every detail of the statement in its question.

Reply with a numbered list with one question per statement, in the same order, and nothing else.

{facts}"""

SINGLE_QUESTION_PROMPT = """Turn this statement into one yes/no question about the image whose correct answer is "yes" exactly when the statement is true, keeping any negation. Reply with the question only.

Statement: {fact}"""

_ITEM = re.compile(r"^\s*(?:\d+\s*[.):-]|[-*\u2022])\s*(.+?)\s*$")
_NONE = re.compile(r"^\W*(none|no facts?|n/?a)\W*$", re.IGNORECASE)


def parse_list(text: str) -> list[str]:
    """The items of a list reply: a JSON array of strings, numbered or bulleted lines, or else plain lines."""
    text = text.strip()
    if text.startswith("```"):
        text = re.sub(r"^```\w*\s*|\s*```$", "", text)
    if _NONE.match(text) or not text:
        return []
    if text.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError:
            items = None
        if isinstance(items, list) and all(isinstance(i, str) for i in items):
            return [i.strip() for i in items if i.strip()]
    lines = [line for line in text.splitlines() if line.strip()]
    listed = [m.group(1) for line in lines if (m := _ITEM.match(line))]
    items = listed or [line.strip() for line in lines]
    return [i.strip().strip('"') for i in items if i.strip() and not _NONE.match(i)]


def _question(text: str) -> str:
    text = text.strip().strip('"')
    if text.lower().startswith("question:"):
        text = text[len("question:"):].strip()
    return text if text.endswith("?") else text.rstrip(".") + "?"


class LLMClaims:
    """The LLM-prompted splitter: `split_many(answers, instructions)` -> the claims of each answer."""

    def __init__(self, judge: Judge, max_tokens: int = 512):
        self.judge, self.max_tokens = judge, max_tokens

    def _ask(self, prompts: Sequence[str], keys: Sequence[str]) -> list[str]:
        replies = self.judge.complete([ChatRequest(p, max_tokens=self.max_tokens, id=k)
                                       for p, k in zip(prompts, keys, strict=True)])
        for reply, key in zip(replies, keys, strict=True):
            if not reply.ok:
                raise JudgeError(f"record {key}: the claim splitter's judge failed: {reply.error}")
        return [r.text or "" for r in replies]

    def split_many(self, answers: Sequence[str], instructions: Sequence[str] | None = None,
                   keys: Sequence[str] | None = None) -> list[list[Claim]]:
        instructions = instructions or [""] * len(answers)
        keys = keys or [str(i) for i in range(len(answers))]
        facts = [parse_list(t) for t in self._ask(
            [SPLIT_PROMPT.format(instruction=q, answer=a) for q, a in zip(instructions, answers, strict=True)], keys)]
        asked = [i for i, f in enumerate(facts) if f]
        numbered = ["\n".join(f"{n}. {fact}" for n, fact in enumerate(facts[i], start=1)) for i in asked]
        questions: list[list[str]] = [[] for _ in answers]
        replies = self._ask([QUESTION_PROMPT.format(facts=f) for f in numbered], [keys[i] for i in asked])
        for i, reply in zip(asked, replies, strict=True):
            questions[i] = [_question(q) for q in parse_list(reply)]
        retry = [(i, j) for i in asked if len(questions[i]) != len(facts[i]) for j in range(len(facts[i]))]
        if retry:
            single = self._ask([SINGLE_QUESTION_PROMPT.format(fact=facts[i][j]) for i, j in retry],
                               [f"{keys[i]}#{j}" for i, j in retry])
            for i in {i for i, _ in retry}:
                questions[i] = []
            for (i, _), q in zip(retry, single, strict=True):
                questions[i].append(_question(q))
        return [[Claim(f, q) for f, q in zip(fs, qs, strict=True)] for fs, qs in zip(facts, questions, strict=True)]

    def __call__(self, answer: str) -> list[Claim]:
        return self.split_many([answer])[0]
