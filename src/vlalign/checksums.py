"""Checksums of the files a run relies on (saved models, training checkpoints, imported data), so a file
changed after it was written is noticed before anything uses it.

A file's `FileSum` is its size, its modification time and an xxh3-128 hash of its bytes (xxhash, which
`datasets` depends on; several times faster than sha256: bench/checksum_cost.py measures both). The hash
guards against accidents (a copy cut short, bytes overwritten, a disk error), not against someone who
forges a file on purpose.

Checking costs what the caller can afford:
- `difference(path, recorded)`: a file of another size differs; one whose modification time is unchanged
  is taken as unchanged without reading it (every write sets the time, so an edit is caught); one whose
  time changed (an edit, or a copy) is hashed. This is what a resume runs on every model it only names:
  no byte is read, however large the model.
- `difference(path, recorded, full=True)`: always hashed. This is what loading a model runs: the load reads
  every byte anyway, so the hash adds one pass of its CPU time over bytes in the page cache, and catches
  what a forged or preserved modification time would hide.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

ALGORITHM = "xxh3_128"
_CHUNK = 16 * 2 ** 20


@dataclass(frozen=True)
class FileSum:
    """What a file held when it was summed."""

    size: int
    mtime_ns: int
    digest: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "mtime_ns": self.mtime_ns, ALGORITHM: self.digest}

    @classmethod
    def from_json(cls, data: Any) -> FileSum:
        """The sum `to_json` wrote; ValueError when `data` is not one (a damaged record)."""
        try:
            size, mtime, digest = data["size"], data["mtime_ns"], data[ALGORITHM]
        except (TypeError, KeyError) as e:
            raise ValueError(f"not a file checksum: {str(data)[:80]}") from e
        if not (isinstance(size, int) and isinstance(mtime, int) and isinstance(digest, str)):
            raise ValueError(f"not a file checksum: {str(data)[:80]}")
        return cls(size, mtime, digest)


def digest(path: str | Path) -> str:
    """The xxh3-128 hash of the file's bytes, read in chunks."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_sum(path: str | Path) -> FileSum:
    info = Path(path).stat()
    return FileSum(info.st_size, info.st_mtime_ns, digest(path))


def difference(path: str | Path, recorded: FileSum, full: bool = False) -> str | None:
    """None when `path` still holds what `recorded` describes; else what differs, in words (see the module
    notes for what is read when)."""
    path = Path(path)
    if not path.is_file():
        return f"{path.name} is missing"
    info = path.stat()
    if info.st_size != recorded.size:
        return f"{path.name} is {info.st_size:,} bytes, {recorded.size:,} when it was written"
    if not full and info.st_mtime_ns == recorded.mtime_ns:
        return None
    found = digest(path)
    if found != recorded.digest:
        return (f"{path.name} holds other bytes than when it was written (same size; {ALGORITHM} {found[:12]}..., "
                f"{recorded.digest[:12]}... then)")
    return None


def sums(folder: str | Path, names: list[str]) -> dict[str, FileSum]:
    """The sums of the files `names` in `folder`."""
    return {name: file_sum(Path(folder) / name) for name in names}


def read_sums(data: Any) -> dict[str, FileSum]:
    """Sums as `sums_json` wrote them; ValueError when the record is damaged."""
    if not isinstance(data, dict):
        raise ValueError(f"not a record of file checksums: {str(data)[:80]}")
    return {str(name): FileSum.from_json(value) for name, value in data.items()}


def sums_json(found: dict[str, FileSum]) -> dict[str, dict[str, Any]]:
    return {name: s.to_json() for name, s in found.items()}


def differences(folder: str | Path, recorded: dict[str, FileSum], full: bool = False) -> list[str]:
    """What differs in `folder` from the recorded sums (empty when nothing does)."""
    return [d for name, s in recorded.items() if (d := difference(Path(folder) / name, s, full)) is not None]


def moved(folder: str | Path, recorded: dict[str, FileSum]) -> dict[str, FileSum]:
    """The recorded sums with the modification times the files have now: for a folder whose files were just
    verified in full after a copy, so the next cheap check need not read them again."""
    return {name: FileSum(s.size, (Path(folder) / name).stat().st_mtime_ns, s.digest) for name, s in recorded.items()}
