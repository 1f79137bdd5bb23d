"""Held-out pairs (`train.eval_fraction`): a share of a training's pairs, chosen by id, that it never trains on
and scores with its own loss as it goes (`vlalign.train.loop.Evaluation`), so the history shows an evaluation
loss and reward accuracy beside the training ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from vlalign.train.examples import PreferenceExample
from vlalign.train.loop import Evaluation
from vlalign.train.preference import Reference
from vlalign.train.settings import TrainConfig


class Picked(Sequence[PreferenceExample]):
    """The examples at `positions` of another sequence (the pairs left for training once some are held out)."""

    def __init__(self, examples: Sequence[PreferenceExample], positions: Sequence[int]):
        self.examples, self.positions = examples, list(positions)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i):  # an int or a slice, as a list's
        return [self.examples[p] for p in self.positions[i]] if isinstance(i, slice) else self.examples[self.positions[i]]


def held_out(examples: Sequence[PreferenceExample], fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """(training positions, held-out positions): each pair is held out by a hash of its id and the seed, so the
    split does not depend on the pairs' order or number, and a resumed run holds out the same ones. At least
    one pair is held out and at least one trains when `fraction` is above 0 and there are two."""
    if fraction <= 0 or len(examples) < 2:
        return list(range(len(examples))), []
    draws = [int.from_bytes(hashlib.sha256(f"{seed}:{e.id}".encode()).digest()[:8], "little") / 2.0 ** 64
             for e in examples]
    kept = [p for p, d in enumerate(draws) if d >= fraction]
    if not kept or len(kept) == len(draws):  # a tiny set: hold out the pair with the smallest draw
        first = min(range(len(draws)), key=draws.__getitem__)
        kept = [p for p in range(len(draws)) if p != first]
    out = set(kept)
    return kept, [p for p in range(len(examples)) if p not in out]



def held_out_split(examples: Sequence[PreferenceExample], ref: Reference, config: TrainConfig
                   ) -> tuple[Sequence[PreferenceExample], Callable[[int], dict], Evaluation | None]:
    """The pairs that train (all of them, unless `config.eval_fraction` holds some out), their reference
    values by position, and the held-out pairs' batches, which the loop evaluates (`train.loop.Evaluation`)."""
    kept, out = held_out(examples, config.eval_fraction, config.seed)
    if not out:
        return examples, ref.row, None
    pairs = [(examples[p], ref.row(p)) for p in out]
    batches = [pairs[s:s + config.batch_size] for s in range(0, len(pairs), config.batch_size)]
    return Picked(examples, kept), lambda p: ref.row(kept[p]), Evaluation(batches, config.eval_every)
