"""Prompts from a user's file: where every method's data starts (an image, an instruction, maybe a
reference answer).

A prompt file is JSON lines, or a `datasets` directory saved with `save_to_disk`, with an image path and an
instruction per record; an image may also be given as bytes (`{"bytes": ..., "path": ...}`, as `datasets` stores
one, the bytes base64-encoded in JSON). A bad record (a missing field, an image field of the wrong kind, bytes
that are no picture) is reported with its line and skipped, never silently dropped; the stage's error log
keeps it. Plugins write the same `PromptRecord`s
from their own sources (`vlalign.data.sources`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from vlalign import ranks
from vlalign.data import shortfalls
from vlalign.data.images import decode_image, image_value
from vlalign.data.records import PromptRecord, stable_id
from vlalign.data.store import ERRORS, RunStore, Stage, run_stage
from vlalign.progress import log, warn

if TYPE_CHECKING:
    from vlalign.data.sources import PromptRequest

INSTRUCTION_KEYS = ("instruction", "question", "prompt")
REFERENCE_KEYS = ("reference", "answer", "gt_answer")


@dataclass(frozen=True)
class UserPrompt:
    """One record of a user's prompt file, before its image is read."""

    line: int
    id: str
    image: str | bytes | Image.Image  # a path, the image's bytes, or the picture (a `datasets` Image feature)
    instruction: str
    reference: str | None
    source: str


def _first(record: dict, keys: Sequence[str]) -> Any:
    return next((record[k] for k in keys if record.get(k) not in (None, "")), None)


def _inside(image: str, root: Path, allow_outside: bool, where: str) -> str:
    """The image path, resolved against `root`; a path that leaves `root` is refused unless allowed, since a
    data file could otherwise have any readable file on the machine stored in the run (and sent to an API)."""
    path = (root / image).resolve()
    if not allow_outside and not path.is_relative_to(root.resolve()):
        raise ValueError(f"{where}: image {image!r} lies outside {root}; move it into that folder, or allow it "
                         f"with prompts.options.allow_outside: true")
    return str(path)


def _parse(record: Any, line: int, origin: str, root: Path, allow_outside: bool = False) -> UserPrompt:
    where = f"{origin} line {line}"
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with 'image' and 'instruction', got {type(record).__name__}")
    image = record.get("image") or record.get("image_path") or record.get("img_path")
    if image is None:
        raise ValueError(f"{where}: no 'image' field (a path, relative to {root}); add one to the record")
    if not isinstance(image, Image.Image):  # a datasets directory gives its Image feature as a picture
        image = image_value(image, where)  # RLAIF-V's {bytes, path} gives its bytes
    instruction = _first(record, INSTRUCTION_KEYS)
    if not isinstance(instruction, str):
        raise ValueError(f"{where}: no instruction; give one of the fields {', '.join(INSTRUCTION_KEYS)}")
    reference = _first(record, REFERENCE_KEYS)
    if isinstance(image, str):
        image = _inside(image, root, allow_outside, where)
    # without an id of its own, a record is named by what it holds and where it sits in its file, never by
    # where the file lies: moving the data keeps its ids (and so its samples' seeds and a run's resume)
    written = record.get("image") if isinstance(record.get("image"), str) else None
    rid = str(record.get("id") if record.get("id") is not None else stable_id(line, written, instruction))
    return UserPrompt(line, rid, image, instruction, reference if isinstance(reference, str) else None,
                      str(record.get("source", origin)))


@dataclass(frozen=True)
class BadRecord:
    line: int
    error: ValueError


def read_prompt_file(path: str | Path, images: str | Path | None = None,
                     allow_outside: bool = False) -> Iterator[UserPrompt | BadRecord]:
    """The records of a JSON-lines file or a `datasets` directory; a bad record yields its error instead.
    Image paths are relative to `images` (default: the file's folder) and must stay inside it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompt data {path} does not exist; pass a JSON-lines file or a datasets directory")
    if path.is_dir():
        import datasets

        data = datasets.load_from_disk(str(path))
        for i, record in enumerate(data, start=1):
            try:
                yield _parse(record, i, str(path), Path(images or path), allow_outside)
            except ValueError as e:
                yield BadRecord(i, e)
        return
    with open(path, encoding="utf-8-sig") as f:
        lines = [(i, line) for i, line in enumerate(f, start=1) if line.strip()]
    if not lines:
        raise ValueError(f"{path} is empty; it needs one JSON object per line with 'image' and 'instruction'")
    for i, line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            yield BadRecord(i, ValueError(f"{path} line {i}: not valid JSON ({e.msg} at column {e.colno})"))
            continue
        except RecursionError:
            yield BadRecord(i, ValueError(f"{path} line {i}: nested deeper than a JSON reader follows; not a "
                                          f"prompt record"))
            continue
        try:
            yield _parse(record, i, str(path), Path(images or path.parent), allow_outside)
        except ValueError as e:
            yield BadRecord(i, e)


def open_image(prompt: UserPrompt) -> Image.Image:
    """The record's image in RGB, or an error naming its line and the fix (missing, not a file, unreadable)."""
    if isinstance(prompt.image, Image.Image):
        return prompt.image.convert("RGB")
    if isinstance(prompt.image, bytes):
        return decode_image(prompt.image, f"line {prompt.line}", "the image bytes")
    if Path(prompt.image).exists() and not Path(prompt.image).is_file():
        raise ValueError(f"line {prompt.line}: image {prompt.image} is not a regular file (a folder, a pipe or a "
                         f"device); point the record at an image file")
    try:
        with Image.open(prompt.image) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"line {prompt.line}: image {prompt.image} does not exist; fix the path or "
                                f"remove the record") from None
    except OSError as e:
        raise ValueError(f"line {prompt.line}: image {prompt.image} cannot be read ({e}); replace the file "
                         f"or remove the record") from e


def user_prompt_stage(store: RunStore, stage: Stage, path: str | Path, limit: int | None = None,
                      images: str | Path | None = None, allow_outside: bool = False) -> Stage:
    """Prompts from a user's file into `stage`; bad records are logged in the stage's error log."""
    items: list[UserPrompt] = []
    for entry in read_prompt_file(path, images, allow_outside):
        if isinstance(entry, BadRecord):
            if ranks.is_main():  # every process reads the file; one logs what is wrong with it
                stage.log_error(f"{path}:{entry.line}", entry.error)
            warn(f"prompts: skipped a record: {entry.error}")
            continue
        items.append(entry)
        if limit is not None and len(items) >= limit:
            break

    def process(batch):
        return [PromptRecord(id=p.id, image=store.images.put(open_image(p)), instruction=p.instruction,
                             reference=p.reference, source=p.source, meta={"line": p.line}).to_row()
                for p in batch]

    run_stage(stage, items, process, id_of=lambda p: p.id, batch_size=64, shard_size=1000,
              description=f"reading {Path(path).name}", manifest={"config": {"path": str(path), "limit": limit}})
    return stage


def file_prompts(request: PromptRequest) -> Stage:
    """`request.n` prompts of a file from `request.offset` on, into `request.stage`. The whole file is read
    once into the run's `prompts` stage; a run that asks for more prompts than the file holds starts over
    at its first record, and the stage's manifest counts those repeats (`repeated`)."""
    options = request.options
    pool = user_prompt_stage(request.store, request.store.stage("prompts"), request.path,
                             images=options.images, allow_outside=options.allow_outside)
    rows = pool.rows()
    if not rows:
        raise ValueError(f"no usable prompts in {request.path}; see {pool.dir / ERRORS}")
    n = min(request.n, len(rows))
    picked = [rows[(request.offset + i) % len(rows)] for i in range(n)]
    repeated = max(0, request.offset + n - len(rows))
    run_stage(request.stage, picked, lambda batch: batch, id_of=lambda r: r["id"], batch_size=1024, quiet=True,
              manifest={"config": {"from": str(request.path), "offset": request.offset, "n": request.n}})
    request.stage.annotate(repeated=min(repeated, n))
    log(f"prompts: {n} of the {len(rows)} usable records of {request.path}, from record "
        f"{request.offset % len(rows) + 1} on")
    shortfalls.note(request.stage, "prompts", request.n - n,
                    f"prompts: {request.path} has {len(rows)} usable record(s), fewer than the {request.n} a round "
                    f"asks for (prompts.per_round); the round uses {n}")
    return request.stage
