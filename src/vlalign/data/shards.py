"""Reading a stage's Parquet shards as a stage wrote them, or as someone left them afterwards.

A stage writes every shard whole (a temporary file, then a rename) and every record id once, so what
goes wrong here was done to the folder later: a shard that no longer parses (a copy cut short, a full
disk, a bad sector) or the same id in two places (a shard copied by hand, two runs merged into one).

- A damaged shard is named with its remedy (`CorruptShard`). A stage that resumes moves it aside by
  itself (`set_aside`) and makes its records again, since they are reproducible and a long run should not
  wait for someone to delete a file; a reader that cannot make them (training on `pairs_from`, an export)
  stops and says so.
- A record that appears twice with the same content is read once, with a warning naming both files: the
  data is unambiguous, so refusing would only make the user delete a file to get the very same rows. The
  same id with different content is refused (`DuplicateRecords`): which one is right is not ours to guess.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from vlalign.progress import warn

SHARD_GLOB = "shard-*.parquet"
CORRUPT_SUFFIX = ".corrupt"
_INDEX = re.compile(r"shard-(?:r(\d+)-)?(\d+)")
_warned: set[tuple[str, str, str]] = set()
T = TypeVar("T")


class CorruptShard(ValueError):
    """A shard that cannot be read; the message names it and the remedy."""

    def __init__(self, path: Path, cause: BaseException):
        self.path = path
        super().__init__(
            f"the shard {path} is damaged and cannot be read ({type(cause).__name__}: {cause}). Shards are written "
            f"whole, so it was cut short or changed afterwards. Delete it (or move it out of the folder) and run "
            f"the command that made the stage again: it writes those records again (`vlalign run` does this by "
            f"itself when it resumes the stage; an imported stage is imported again)")


class DuplicateRecords(ValueError):
    """The same record id with different content in a stage; the message names the files and the fix."""


def _parsed(path: Path, read: Callable[[], T]) -> T:
    """`read()`, with a shard whose bytes do not parse raised as `CorruptShard` (a missing or unreadable file
    is raised as it is: that is not damage)."""
    try:
        return read()
    except (PermissionError, FileNotFoundError):
        raise
    except (pa.ArrowException, OSError) as e:
        raise CorruptShard(path, e) from e


def read_shard(path: Path, columns: list[str] | None = None) -> pa.Table:
    """The shard's table (or some of its columns), or `CorruptShard`. Read as one Parquet file (not through
    `pq.read_table`, whose dataset layer imports pandas)."""

    def read() -> pa.Table:
        with pq.ParquetFile(path) as f:
            return f.read(columns=columns).replace_schema_metadata(None)

    return _parsed(path, read)


def shard_columns(path: Path) -> list[str]:
    """The column names of a shard (from its footer only), or `CorruptShard`."""
    return _parsed(path, lambda: pq.read_schema(path).names)


def shard_name(index: int, rank: int = 0) -> str:
    """Shard `index` of the process of rank `rank`: "shard-00012.parquet" for the main (or only) process,
    "shard-r01-00012.parquet" for rank 1, so the processes of a launched job never write the same file."""
    return f"shard-{index:05d}.parquet" if rank == 0 else f"shard-r{rank:02d}-{index:05d}.parquet"


def shard_index(path: Path) -> int:
    """The number in a shard's name ("shard-00012.parquet", "shard-r01-00012.parquet", or a copy
    "shard-00012 (1).parquet": 12)."""
    found = _INDEX.match(path.name)
    return int(found.group(2)) if found else -1


def shard_rank(path: Path) -> int:
    """The rank of the process that wrote a shard, as its name says (0 for "shard-00012.parquet")."""
    found = _INDEX.match(path.name)
    return int(found.group(1) or 0) if found else 0


def set_aside(path: Path) -> Path:
    """Move a damaged shard out of the stage's reach, to `.<name>.corrupt` beside it (kept to look at; hidden,
    so pandas and `datasets` skip it too), and say so."""
    target = path.with_name(f".{path.name}{CORRUPT_SUFFIX}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f".{path.name}.{n}{CORRUPT_SUFFIX}")
    path.rename(target)
    warn(f"{path} cannot be read (damaged after it was written); moved it aside to {target.name} and its "
         f"records are made again")
    return target


def _check_repeat(table: pa.Table, first: int, again: int, files: list[Path], where: Path) -> None:
    a, b = table.slice(first, 1).to_pylist()[0], table.slice(again, 1).to_pylist()[0]
    if a == b:
        return
    raise DuplicateRecords(
        f"{where} holds two different records with the id {a['id']!r}, in {files[first].name} and in "
        f"{files[again].name}. A stage writes each id once, so one of these files was copied from another run "
        f"or edited by hand: delete the one that does not belong, or delete {where} to make the stage again")


def _warn_repeats(pairs: dict[tuple[Path, Path], int], where: Path) -> None:
    for (a, b), n in sorted(pairs.items()):
        if (str(where), a.name, b.name) in _warned:
            continue
        _warned.add((str(where), a.name, b.name))
        files = f"{a.name} holds {n} record(s) twice" if a == b else f"{b.name} repeats {n} record(s) of {a.name}"
        warn(f"{where}: {files} (same ids, same content); each is read once. A stage writes every record once, "
             f"so this is a copy: delete the copied shard to silence this warning")


def without_repeats(parts: list[tuple[Path, pa.Table]], where: Path) -> pa.Table:
    """The shards' rows as one table (types promoted across shards), each record id once: a row that repeats
    an earlier one exactly is dropped with a warning; one that differs raises `DuplicateRecords`."""
    table = pa.concat_tables([t for _, t in parts], promote_options="permissive")
    if "id" not in table.column_names:
        return table
    seen: dict[str, int] = {}
    repeats: list[tuple[int, int]] = []
    for i, rid in enumerate(table.column("id").to_pylist()):
        if rid in seen:
            repeats.append((seen[rid], i))
        else:
            seen[rid] = i
    if not repeats:
        return table
    files = [path for path, t in parts for _ in range(t.num_rows)]
    pairs: dict[tuple[Path, Path], int] = {}
    for first, again in repeats:
        _check_repeat(table, first, again, files, where)
        pairs[(files[first], files[again])] = pairs.get((files[first], files[again]), 0) + 1
    _warn_repeats(pairs, where)
    return table.take(sorted(seen.values()))
