"""RLAIF-V's divide and conquer with a chat model: split an answer into atomic facts, then turn each fact
into a yes/no question whose answer is "yes" exactly when the fact holds.

Both steps go through the judge backends (an OpenAI-compatible endpoint or an in-process model), one
request per answer for each step, sent together so an API backend runs them concurrently. Replies are
read robustly: numbered or bulleted lists, a JSON array of strings, plain lines, or "none" for an answer
that states nothing. A reply that is none of these (empty, one line of prose, a JSON object, a broken
array) is not read as claims: "no claims" would be a guessed score. When the questions do not line up
with the facts one for one, each fact is asked again on its own.

`split_each` gives every answer its claims or the `JudgeError` that says why it has none (the failed
request, the unreadable reply), so one bad answer costs only itself; `split_many` raises that error,
naming the records, when any answer has one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from vlalign.feedback.claims import Claim, first_failure
from vlalign.feedback.judge import ChatReply, ChatRequest, Judge, JudgeError
from vlalign.feedback.judge_api import excerpt

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


def _unfenced(text: str) -> str:
    text = text.strip()
    return re.sub(r"^```\w*\s*|\s*```$", "", text) if text.startswith("```") else text


def _string_array(text: str) -> list[str] | None:
    """The items of a JSON array of strings, or None when `text` is not one."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError:
        return None
    return items if isinstance(items, list) and all(isinstance(i, str) for i in items) else None


def parse_list(text: str) -> list[str]:
    """The items of a list reply: a JSON array of strings, numbered or bulleted lines, or else plain lines."""
    text = _unfenced(text)
    if _NONE.match(text) or not text:
        return []
    if text.startswith("[") and (items := _string_array(text)) is not None:
        return [i.strip() for i in items if i.strip()]
    lines = [line for line in text.splitlines() if line.strip()]
    listed = [m.group(1) for line in lines if (m := _ITEM.match(line))]
    items = listed or [line.strip() for line in lines]
    return [i.strip().strip('"') for i in items if i.strip() and not _NONE.match(i)]


def list_problem(text: str) -> str | None:
    """Why a reply cannot be read as a list (see the module docstring), or None when it can."""
    text = _unfenced(text)
    if not text:
        return "the reply is empty"
    if _NONE.match(text):
        return None
    if text[0] in "[{" and _string_array(text) is None:
        return f"the reply is JSON but not an array of strings: {excerpt(text)}"
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) == 1 and not _ITEM.match(lines[0]):
        return f"the reply is one line of prose, not a list: {excerpt(text)}"
    return None


def _question(text: str) -> str:
    text = text.strip().strip('"')
    if text.lower().startswith("question:"):
        text = text[len("question:"):].strip()
    return text if text.endswith("?") else text.rstrip(".") + "?"


def _one_question(text: str) -> str | None:
    """The question of a reply asked for exactly one, or None when the reply is empty or several lines."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return _question(lines[0]) if len(lines) == 1 and lines[0].strip().strip('"?.') else None


Outcome = list[Claim] | JudgeError


def _failed(key: str, reply: ChatReply) -> JudgeError:
    return JudgeError(f"record {key}: the claim splitter's judge failed: {reply.error}")


class LLMClaims:
    """The LLM-prompted splitter: `split_many(answers, instructions)` -> the claims of each answer."""

    def __init__(self, judge: Judge, max_tokens: int = 512):
        self.judge, self.max_tokens = judge, max_tokens

    def _ask(self, prompts: Sequence[str], keys: Sequence[str]) -> list[ChatReply]:
        return self.judge.complete([ChatRequest(p, max_tokens=self.max_tokens, id=k)
                                    for p, k in zip(prompts, keys, strict=True)])

    def _facts(self, reply: ChatReply, key: str) -> list[str] | JudgeError:
        if not reply.ok:
            return _failed(key, reply)
        problem = list_problem(reply.text or "")
        if problem:
            return JudgeError(f"record {key}: the claim splitter's reply has no list of facts ({problem})")
        return parse_list(reply.text or "")

    def split_each(self, answers: Sequence[str], instructions: Sequence[str] | None = None,
                   keys: Sequence[str] | None = None) -> list[Outcome]:
        """Per answer: its claims, or the `JudgeError` that says why it has none."""
        instructions = instructions or [""] * len(answers)
        keys = keys or [str(i) for i in range(len(answers))]
        facts = [self._facts(r, k) for r, k in zip(self._ask(
            [SPLIT_PROMPT.format(instruction=q, answer=a) for q, a in zip(instructions, answers, strict=True)], keys),
            keys, strict=True)]
        asked = [i for i, f in enumerate(facts) if isinstance(f, list) and f]
        replies = self._ask([QUESTION_PROMPT.format(facts="\n".join(f"{n}. {fact}" for n, fact in
                                                                     enumerate(facts[i], start=1))) for i in asked],
                            [keys[i] for i in asked])
        out: list[Outcome] = [f if isinstance(f, JudgeError) else [] for f in facts]
        single = []
        for i, reply in zip(asked, replies, strict=True):
            if not reply.ok:
                out[i] = _failed(keys[i], reply)
                continue
            questions = [] if list_problem(reply.text or "") else [_question(q) for q in parse_list(reply.text or "")]
            if len(questions) == len(facts[i]):
                out[i] = [Claim(f, q) for f, q in zip(facts[i], questions, strict=True)]
            else:
                single.append(i)
        for i, outcome in zip(single, self._ask_one_by_one([facts[i] for i in single], [keys[i] for i in single]),
                              strict=True):
            out[i] = outcome
        return out

    def _ask_one_by_one(self, facts: Sequence[list[str]], keys: Sequence[str]) -> list[Outcome]:
        """Each fact's question asked on its own, when an answer's question list did not line up."""
        flat = [(k, j, fact) for fs, k in zip(facts, keys, strict=True) for j, fact in enumerate(fs)]
        replies = iter(self._ask([SINGLE_QUESTION_PROMPT.format(fact=fact) for _, _, fact in flat],
                                 [f"{k}#{j}" for k, j, _ in flat]))
        out: list[Outcome] = []
        for fs, key in zip(facts, keys, strict=True):
            claims, errors = [], []
            for j, fact in enumerate(fs):
                reply = next(replies)
                question = _one_question(reply.text or "") if reply.ok else None
                if question is not None:
                    claims.append(Claim(fact, question))
                elif reply.ok:
                    errors.append(f"fact {j + 1}: the reply is not one question: {excerpt(reply.text or '')}")
                else:
                    errors.append(f"fact {j + 1}: the request failed: {reply.error}")
            out.append(JudgeError(f"record {key}: the claim splitter gave no question for "
                                  f"{'; '.join(errors)}") if errors else claims)
        return out

    def split_many(self, answers: Sequence[str], instructions: Sequence[str] | None = None,
                   keys: Sequence[str] | None = None) -> list[list[Claim]]:
        """The claims of each answer; raises a `JudgeError` naming every answer that has none to give."""
        outcomes = self.split_each(answers, instructions, keys)
        first_failure(outcomes)
        return outcomes  # type: ignore[return-value]

    def __call__(self, answer: str) -> list[Claim]:
        return self.split_many([answer])[0]
