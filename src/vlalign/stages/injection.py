"""Injected hallucinations (POVID's first kind of dispreferred answer): each prompt's ground-truth answer is
preferred over the same answer with hallucinations injected, by rules over a vocabulary and co-occurrence
statistics, or by a chat model.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from vlalign.data import shortfalls
from vlalign.data.records import PairRecord, PromptRecord, stable_id
from vlalign.data.store import Stage, run_stage
from vlalign.feedback.injection import Injection, LLMInjector, RuleInjector, fit_cooccurrence
from vlalign.plugins import VOCABULARIES


def rule_injector(prompts: Stage, vocabulary: str, texts: int, edits: int, seed: int, add_objects: bool) -> RuleInjector:
    """The rule injector of a vocabulary, its co-occurrence statistics counted over `texts` training answers:
    the vocabulary's own where it has them, else the prompts' reference answers."""
    entry = VOCABULARIES.get(vocabulary)
    vocab = entry.vocabulary()
    answers = (entry.training_texts(texts) if entry.training_texts is not None
               else [p["reference"] for p in prompts.rows() if p.get("reference")][:texts])
    return RuleInjector(vocab, fit_cooccurrence(answers, vocab), edits, seed, add_objects)


def injection_stage(prompts: Stage, out: Stage, injector: RuleInjector | LLMInjector, settings: dict[str, Any]) -> Stage:
    """(reference, injected) pairs; a record without a reference, or whose answer nothing could be changed
    in, is logged and skipped. `settings` are the injector's, recorded in the manifest."""
    records = [PromptRecord.from_row(row) for row in prompts.rows()]

    def process(batch: list[PromptRecord]) -> list[dict]:
        for p in batch:
            if not p.reference:
                raise ValueError(f"prompt {p.id} has no reference answer; POVID prefers the ground truth, so "
                                 f"give every record a 'reference' (or 'answer') field")
        references = [p.reference or "" for p in batch]
        injections: list[Injection | None]
        if isinstance(injector, LLMInjector):
            injections = injector.inject_many([p.instruction for p in batch], references, [p.id for p in batch])
        else:
            injections = [injector.inject(text, p.id) for p, text in zip(batch, references, strict=True)]
        rows = []
        for p, text, inj in zip(batch, references, injections, strict=True):
            if inj is None or inj.text.strip() == text.strip():
                raise ValueError(f"prompt {p.id}: no hallucination could be injected into its reference")
            rows.append(PairRecord(id=stable_id("povid", p.id), prompt_id=p.id, image=p.image,
                                   instruction=p.instruction, chosen=text, rejected=inj.text,
                                   method="povid", meta={"edits": inj.edits}).to_row())
        return rows

    run_stage(out, records, process, id_of=lambda p: stable_id("povid", p.id), batch_size=64,
              description="injection", manifest={"config": settings})
    if isinstance(injector, RuleInjector):
        note_fewer_edits(out, injector.edits)
    return out


def note_fewer_edits(out: Stage, asked: int) -> None:
    """Count the pairs whose answer took fewer edits than asked (nothing more in it could be changed) as a
    shortfall; a flipped yes/no answer is one edit by design, and is not counted."""
    edits = [PairRecord.from_row(r).meta.get("edits") or [] for r in out.rows()]
    short = Counter(len(e) for e in edits if len(e) < asked and not (e and e[0].startswith("answer:")))
    took = ", ".join(f"{n} with {k}" for k, n in sorted(short.items()))
    shortfalls.note(out, "edits", sum(short.values()),
                    f"injection: {sum(short.values())} of {len(edits)} answers took fewer than the {asked} edits asked "
                    f"({took}): nothing more in them could be changed")
