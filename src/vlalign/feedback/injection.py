"""POVID's first kind of dispreferred answer: the ground truth with hallucinations injected into it.

Three kinds, as in the paper: objects (an absent object that usually co-occurs with a mentioned one is
added, or replaces a mentioned one), attributes (a colour, size or count is changed), and relations (left
and right, above and below, are swapped, which turns a true statement of position or reasoning false; a
yes/no answer says the opposite, which is the whole of its reasoning).

`RuleInjector` does this offline with a vocabulary and co-occurrence statistics fitted on training answers;
vocabularies are registered by name (`english`, COCO's objects, here; plugins add theirs, e.g. `world`).
`LLMInjector` asks a chat model through the judge backends, with POVID's instructions in its own words.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from vlalign.english import article
from vlalign.feedback.claims import YES_NO_REPLY
from vlalign.feedback.judge import ChatRequest, Judge
from vlalign.plugins import VOCABULARIES

if TYPE_CHECKING:
    import numpy as np

KINDS = ("object", "attribute", "relation")


@dataclass(frozen=True)
class Vocabulary:
    """The words an injector may edit. `objects` maps every surface form (plurals, synonyms) to an object."""

    objects: dict[str, str]
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white", "brown")
    sizes: tuple[str, ...] = ("small", "big")
    numbers: tuple[str, ...] = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    opposites: dict[str, str] = field(default_factory=lambda: {
        "left": "right", "right": "left", "above": "below", "below": "above", "top": "bottom", "bottom": "top"})
    positions: tuple[str, ...] = ("on the left", "on the right", "in the background", "in the foreground")
    sentences: tuple[str, ...] = ("there is {a} {color} {object} {position}.", "{a} {color} {object} is {position}.")

    def canonical(self, word: str) -> str | None:
        return self.objects.get(word.lower())


def english_vocabulary() -> Vocabulary:
    """COCO's 80 object classes with their synonyms (the CHAIR table), for plain-English answers."""
    from vlalign.data.coco import SYNONYMS

    return Vocabulary({w: obj for obj, names in SYNONYMS.items() for w in (obj, *names) if " " not in w
                       and " " not in obj})


@dataclass(frozen=True)
class VocabularyEntry:
    """A registered vocabulary, and (optionally) `n` training answers of its own to count co-occurrence on;
    without them the statistics come from the prompts' reference answers."""

    vocabulary: Callable[[], Vocabulary]
    training_texts: Callable[[int], list[str]] | None = None


VOCABULARIES.register("english", VocabularyEntry(english_vocabulary))


_WORD = re.compile(r"[A-Za-z]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_THERE_IS = re.compile(r"\bthere is (no|an?) (\w+)", re.IGNORECASE)


def mentioned_objects(text: str, vocab: Vocabulary) -> list[str]:
    return [o for w in _WORD.findall(text) if (o := vocab.canonical(w)) is not None]


def fit_cooccurrence(texts: Iterable[str], vocab: Vocabulary) -> dict[str, Counter]:
    """For every object, how often each other object is mentioned in the same training answer."""
    table: dict[str, Counter] = {}
    for text in texts:
        found = set(mentioned_objects(text, vocab))
        for a in found:
            table.setdefault(a, Counter()).update(b for b in found if b != a)
    return table


def _rng(seed: int, key: str) -> np.random.Generator:
    import numpy as np  # here: configs check vocabulary names through this module's registry

    return np.random.default_rng([seed, int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")])


@dataclass
class Injection:
    text: str
    edits: list[str]  # what was changed, e.g. "object+: square", "attribute: red -> blue"


class RuleInjector:
    """Offline injection driven by co-occurrence statistics; deterministic per (seed, key)."""

    def __init__(self, vocab: Vocabulary, cooccurrence: dict[str, Counter], edits: int = 2, seed: int = 0,
                 add_objects: bool = True):
        self.vocab, self.cooccurrence, self.edits, self.seed = vocab, cooccurrence, edits, seed
        self.add_objects = add_objects

    def _co_occurring(self, present: set[str], rng: np.random.Generator) -> str | None:
        """An absent object, drawn in proportion to how often it co-occurs with the present ones."""
        counts: Counter = Counter()
        for obj in present:
            counts.update({o: c for o, c in self.cooccurrence.get(obj, {}).items() if o not in present})
        if not counts:
            return None
        names = sorted(counts)
        total = float(sum(counts[n] for n in names))
        return names[int(rng.choice(len(names), p=[counts[n] / total for n in names]))]

    def add_object(self, text: str, rng: np.random.Generator, known: frozenset[str] = frozenset()
                   ) -> Injection | None:
        """A sentence about a co-occurring absent object (neither mentioned nor in `known`, the objects of
        the original answer), in the answer's own style, at a sentence break before the last sentence:
        never at the very end, so the pair does not teach "stop sooner"."""
        obj = self._co_occurring(set(mentioned_objects(text, self.vocab)) | known, rng)
        if obj is None:
            return None
        v = self.vocab
        color = v.colors[int(rng.integers(len(v.colors)))]
        sentence = v.sentences[int(rng.integers(len(v.sentences)))].format(
            a=article(color), color=color, object=obj,
            position=v.positions[int(rng.integers(len(v.positions)))])
        parts = _SENTENCE_END.split(text.strip())
        at = int(rng.integers(1, len(parts))) if len(parts) > 1 else 0
        return Injection(" ".join([*parts[:at], sentence, *parts[at:]]), [f"object+: {obj}"])

    def replace_object(self, text: str, rng: np.random.Generator, known: frozenset[str] = frozenset(),
                       avoid: frozenset[str] = frozenset()) -> Injection | None:
        """One mention of an object (not one in `avoid`, the objects injected already) becomes a co-occurring
        absent object (neither mentioned nor in `known`; a plural stays plural)."""
        found = [m for m in _WORD.finditer(text) if self.vocab.canonical(m.group()) not in (None, *avoid)]
        new = self._co_occurring(set(mentioned_objects(text, self.vocab)) | known, rng)
        if not found or new is None:
            return None
        m = found[int(rng.integers(len(found)))]
        word, obj = m.group(), self.vocab.canonical(m.group())
        plural = word.lower() != obj and word.lower().endswith("s")
        forms = [w for w, o in self.vocab.objects.items() if o == new and w != new and w.endswith("s")]
        replacement = forms[0] if plural and forms else new
        return Injection(text[:m.start()] + replacement + text[m.end():], [f"object: {obj} -> {new}"])

    def _swap_word(self, text: str, options: Sequence[str], rng: np.random.Generator, kind: str) -> Injection | None:
        found = [m for m in _WORD.finditer(text) if m.group().lower() in options]
        if not found:
            return None
        m = found[int(rng.integers(len(found)))]
        old = m.group().lower()
        new = [o for o in options if o != old][int(rng.integers(len(options) - 1))]
        return Injection(text[:m.start()] + new + text[m.end():], [f"{kind}: {old} -> {new}"])

    def change_attribute(self, text: str, rng: np.random.Generator) -> Injection | None:
        order = rng.permutation(3)
        for i in order:
            options = (self.vocab.colors, self.vocab.sizes, self.vocab.numbers)[int(i)]
            done = self._swap_word(text, options, rng, ("attribute", "size", "count")[int(i)])
            if done is not None:
                return done
        return None

    def flip_relation(self, text: str, rng: np.random.Generator) -> Injection | None:
        found = [m for m in _WORD.finditer(text) if m.group().lower() in self.vocab.opposites]
        if not found:
            return None
        m = found[int(rng.integers(len(found)))]
        old = m.group().lower()
        return Injection(text[:m.start()] + self.vocab.opposites[old] + text[m.end():], [f"relation: {old} -> "
                                                                                           f"{self.vocab.opposites[old]}"])

    @staticmethod
    def flip_answer(text: str) -> Injection | None:
        """A yes/no answer turned into its opposite ("no, there is no red square." becomes "yes, there is a
        red square."); None for any other answer."""
        m = YES_NO_REPLY.match(text)
        if m is None:
            return None
        old = m.group(1).lower()
        new = "no" if old == "yes" else "yes"

        def negate(there: re.Match) -> str:
            noun = there.group(2)
            return f"there is {article(noun) if there.group(1).lower() == 'no' else 'no'} {noun}"

        reply = new.capitalize() if m.group(1)[0].isupper() else new
        return Injection(reply + _THERE_IS.sub(negate, text[m.end():]), [f"answer: {old} -> {new}"])

    def inject(self, text: str, key: str = "") -> Injection:
        """`text` with `edits` hallucinations, the first always an object one when possible; a yes/no answer
        is flipped instead (one edit: any other would only garble it). If nothing in the text can be edited,
        the result equals the input (callers drop such pairs)."""
        if (flipped := self.flip_answer(text)) is not None:
            return flipped
        rng = _rng(self.seed, key)
        out, edits = text, []
        known = frozenset(mentioned_objects(text, self.vocab))  # present: never "hallucinated" back in
        injected: frozenset[str] = frozenset()  # a later edit never undoes an earlier one
        for n in range(self.edits):
            object_ops = [*([partial(self.add_object, known=known)] if self.add_objects else []),
                          partial(self.replace_object, known=known, avoid=injected)]
            ops = object_ops if n == 0 else [self.change_attribute, self.flip_relation, *object_ops]
            for i in rng.permutation(len(ops)):
                done = ops[int(i)](out, rng)
                if done is not None:
                    out, edits = done.text, edits + done.edits
                    injected = injected | {e.rsplit(" ", 1)[-1] for e in done.edits if e.startswith("object")}
                    break
        return Injection(out, edits)


INJECT_PROMPT = """Rewrite the answer below so that it contains hallucinations: statements about the image that sound plausible but are false. Make {edits} changes, drawn from these kinds:
1. objects: mention an object that is not in the image but often appears with the objects that are, or replace an object with such one;
2. attributes: change a colour, size, number or position;
3. relations and reasoning: change how objects relate to each other, or a conclusion, so that it becomes wrong.
Keep the style, length and everything else of the answer the same. Reply with the rewritten answer only.

Question: {question}
Answer: {answer}"""


class LLMInjector:
    """Injection by a chat model through the judge backends (GPT-4V in the paper)."""

    def __init__(self, judge: Judge, edits: int = 2, max_tokens: int = 512):
        self.judge, self.edits, self.max_tokens = judge, edits, max_tokens

    def inject_many(self, questions: Sequence[str], answers: Sequence[str], keys: Sequence[str]) -> list[Injection | None]:
        """One injection per answer; None where the judge failed or gave back the answer unchanged."""
        requests = [ChatRequest(INJECT_PROMPT.format(edits=self.edits, question=q, answer=a), max_tokens=self.max_tokens,
                                id=k) for q, a, k in zip(questions, answers, keys, strict=True)]
        out: list[Injection | None] = []
        for answer, reply in zip(answers, self.judge.complete(requests), strict=True):
            text = (reply.text or "").strip().strip('"')
            if text.lower().startswith("answer:"):
                text = text[len("answer:"):].strip()
            out.append(Injection(text, ["llm"]) if reply.ok and text and text != answer.strip() else None)
        return out
