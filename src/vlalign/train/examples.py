"""Preference pairs as training reads them: streamed from a run's stages, never all decoded at once.

A pair's image is a reference into the run's image store, decoded when the batch that holds it is collated
(and dropped with the batch). The text is read from the Parquet shards a window of `WINDOW` pairs at a time,
so a stage of any size costs memory for its ids and positions only. `Shuffled` draws the global batches
of every pass: in exactly the order of torch's shuffling DataLoader when the pairs fit in one window, and
otherwise window by window (the windows in random order, each shuffled within), so at most two windows
are read at once.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast, overload

import pyarrow as pa
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vlalign.data.images import ImageStore
from vlalign.data.shards import read_shard, without_repeats
from vlalign.data.store import Stage

WINDOW = 8192  # pairs whose text is read together; shuffling mixes pairs within a window
TEXT = ["id", "image", "instruction", "chosen", "rejected"]


class _Decoded:
    """A dataclass field holding a picture or a function that decodes it; reading it gives the picture."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = f"_{name}"

    def __get__(self, obj: Any, owner: type | None = None) -> Image.Image:
        if obj is None:
            raise AttributeError("no default")  # the dataclass field is required
        value = obj.__dict__[self._slot]
        return value() if callable(value) else value

    def __set__(self, obj: Any, value: Image.Image | Callable[[], Image.Image]) -> None:
        obj.__dict__[self._slot] = value


@dataclass(repr=False)
class PreferenceExample:
    """One pair. `image` is given as a picture, or as a function that decodes it (a reference into the run's
    image store), called each time the image is read, so a long list of pairs holds no pixels."""

    id: str
    image: _Decoded = _Decoded()  # a required field: the descriptor's default raises, so the checker's rule
    instruction: str  # type: ignore[misc]  # (no required field after one with a default) does not apply
    chosen: str  # type: ignore[misc]
    rejected: str  # type: ignore[misc]

    def digest(self) -> str:
        """What the pair trains on (a cached reference or checkpoint of other texts is never used)."""
        return hashlib.sha256("\x1f".join((self.instruction, self.chosen, self.rejected)).encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"PreferenceExample(id={self.id!r}, instruction={self.instruction[:40]!r})"


def stored(images: ImageStore, row: dict[str, Any]) -> PreferenceExample:
    """A pair row of a stage, its image left in `images` until it is read."""
    return PreferenceExample(row["id"], partial(images.get, row["image"]), row["instruction"], row["chosen"],
                             row["rejected"])


@dataclass(frozen=True)
class _Shard:
    path: Path
    rows: Sequence[int]  # the shard's rows that are read (each id once)
    images: ImageStore


def _stage_shards(stage: Stage, seen: set[str]) -> list[_Shard]:
    """The stage's shards with the rows whose ids are not in `seen` (which grows): the first copy of a record
    wins, as `Stage.rows` and `examples_under` always read it. Repeats inside the stage are checked (a
    warning, or `DuplicateRecords` when they differ) on the full rows, as `Stage.rows` checks them."""
    ids = [(path, read_shard(path, ["id"]).column("id").to_pylist()) for path in stage.shards()]
    flat = [i for _, part in ids for i in part]
    if len(set(flat)) < len(flat):
        without_repeats([(path, read_shard(path)) for path, _ in ids], stage.dir)
    out = []
    for path, part in ids:
        keep = [k for k, i in enumerate(part) if i not in seen]
        seen.update(part)
        if keep:
            out.append(_Shard(path, range(len(part)) if len(keep) == len(part) else keep, stage.images))
    return out


class StagePairs(Sequence[PreferenceExample]):
    """The pairs of stages (in stage, shard and row order, each id once), read `WINDOW` at a time. The two
    windows read last stay in memory as Arrow columns (the text only, no Python object per pair); a pair's
    example is made when it is read."""

    def __init__(self, stage_dirs: Sequence[str | Path]):
        seen: set[str] = set()
        self._shards = [s for d in stage_dirs for s in _stage_shards(Stage(d), seen)]
        self._starts = [0]
        for s in self._shards:
            self._starts.append(self._starts[-1] + len(s.rows))
        self._windows: OrderedDict[int, _Window] = OrderedDict()

    def __len__(self) -> int:
        return self._starts[-1]

    @overload
    def __getitem__(self, i: int) -> PreferenceExample: ...

    @overload
    def __getitem__(self, i: slice) -> list[PreferenceExample]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"pair {i} of {len(self)}")
        return self._window(i // WINDOW).example(i % WINDOW)

    def _window(self, w: int) -> _Window:
        if w not in self._windows:
            self._windows[w] = self._read(w * WINDOW, min(len(self), (w + 1) * WINDOW))
            while len(self._windows) > 2:
                self._windows.popitem(last=False)
        self._windows.move_to_end(w)
        return self._windows[w]

    def _read(self, start: int, stop: int) -> _Window:
        parts, stores = [], []
        for k, shard in enumerate(self._shards):
            first = self._starts[k]
            if first >= stop or self._starts[k + 1] <= start:
                continue
            rows = shard.rows[max(start - first, 0):stop - first]
            table = read_shard(shard.path, TEXT)
            # a run of rows is a slice; `take` builds an index array, which makes pyarrow import pandas
            if isinstance(rows, range) and rows.step == 1:
                parts.append(table.slice(rows.start, len(rows)))
            else:
                parts.append(table.take(list(rows)))
            stores.append((len(rows), shard.images))
        table = pa.concat_tables(parts, promote_options="permissive")
        return _Window({c: table.column(c).combine_chunks() for c in TEXT}, stores)


class _Window:
    """Consecutive pairs as Arrow columns, and the image store of each run of rows."""

    def __init__(self, columns: dict[str, pa.Array], stores: list[tuple[int, ImageStore]]):
        self.columns = columns
        self.ends = list(itertools.accumulate(n for n, _ in stores))
        self.stores = [store for _, store in stores]

    def example(self, k: int) -> PreferenceExample:
        row = {c: values[k].as_py() for c, values in self.columns.items()}
        return stored(self.stores[bisect.bisect_right(self.ends, k)], row)


def _orders(n: int, batch_size: int, seed: int, window: int) -> Iterator[list[int]]:
    """The positions of every pass, one pass after another, from one generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    if n <= window:  # the very order of DataLoader(shuffle=True, generator=...) over the pairs
        positions = cast("Dataset[int]", range(n))  # a range is a map-style dataset
        loader = DataLoader(positions, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=list)
        while True:
            yield [p for batch in loader for p in batch]
    starts = range(0, n, window)
    while True:
        order: list[int] = []
        for w in torch.randperm(len(starts), generator=generator).tolist():
            size = min(window, n - starts[w])
            order += (starts[w] + torch.randperm(size, generator=generator)).tolist()
        yield order


class Shuffled:
    """The global batches of (example, its reference log-probs: `ref(position)`) of one pass per iteration,
    reshuffled every pass (the last batch of a pass may be short)."""

    def __init__(self, examples: Sequence[PreferenceExample], ref: Callable[[int], dict[str, float]],
                 batch_size: int, seed: int, window: int = WINDOW):
        self.examples, self.ref, self.batch_size = examples, ref, batch_size
        self._orders = _orders(len(examples), batch_size, seed, window)

    def __iter__(self) -> Iterator[list[tuple[PreferenceExample, dict[str, float]]]]:
        order = next(self._orders)
        for s in range(0, len(order), self.batch_size):
            yield [(self.examples[p], self.ref(p)) for p in order[s:s + self.batch_size]]

