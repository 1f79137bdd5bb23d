"""Prompt stages: where every method's data starts (an image, an instruction, maybe a reference answer).

Two sources write the same `PromptRecord`s into a run: the embedded world (scenes drawn from a split and a
scene distribution, instructions of chosen task kinds, the exact answer as the reference), and user files
(JSON lines, or a `datasets` directory saved with `save_to_disk`) with an image path and an instruction per
record. A bad user record (a missing field, an unreadable image) is reported with its line and skipped,
never silently dropped; the stage's error log keeps it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlalign.data.records import PromptRecord, stable_id
from vlalign.data.store import RunStore, Stage, run_stage
from vlalign.world.render import render
from vlalign.world.scene import SceneConfig, scenes
from vlalign.world.text import TaskMix

INSTRUCTION_KEYS = ("instruction", "question", "prompt")
REFERENCE_KEYS = ("reference", "answer", "gt_answer")


def world_prompt_stage(store: RunStore, stage: Stage, n: int, config: SceneConfig, offset: int = 0,
                       image_size: int = 48, mix: TaskMix | None = None, split: str = "prompts") -> Stage:
    """`n` prompts on fresh world scenes of `split` (never the eval split). With `mix`, each scene gets a
    task of a kind drawn from it; without, a describe instruction. The exact answer is the reference
    (POVID prefers it; other methods ignore it) and the task kind is the record's source."""
    mix = mix or TaskMix({"describe": 1.0})

    def process(batch):
        rows = []
        for scene in batch:
            task = mix.sample(scene, np.random.default_rng([scene.seed, 17]))
            rows.append(PromptRecord(id=scene.id, image=store.images.put(render(scene, image_size)),
                                     instruction=task.instruction, reference=task.answer,
                                     source=f"world/{task.kind}", meta={"scene": scene.to_dict()}).to_row())
        return rows

    run_stage(stage, list(scenes(split, n, config, start=offset)), process, id_of=lambda s: s.id,
              batch_size=256, shard_size=1000, description="prompts",
              manifest={"config": {"n": n, "offset": offset, "image_size": image_size, "split": split,
                                   "scenes": config.__dict__, "mix": mix.weights}})
    return stage


@dataclass(frozen=True)
class UserPrompt:
    """One record of a user's prompt file, before its image is read."""

    line: int
    id: str
    image: str | Image.Image
    instruction: str
    reference: str | None
    source: str


def _first(record: dict, keys: Sequence[str]) -> Any:
    return next((record[k] for k in keys if record.get(k) not in (None, "")), None)


def _parse(record: Any, line: int, origin: str, root: Path) -> UserPrompt:
    where = f"{origin} line {line}"
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with 'image' and 'instruction', got {type(record).__name__}")
    image = record.get("image") or record.get("image_path") or record.get("img_path")
    if image is None:
        raise ValueError(f"{where}: no 'image' field (a path, relative to {root}); add one to the record")
    if isinstance(image, dict):  # a datasets Image feature or RLAIF-V's {bytes, path}
        image = image.get("path") if image.get("bytes") is None else Image.open(io.BytesIO(image["bytes"]))
    instruction = _first(record, INSTRUCTION_KEYS)
    if not isinstance(instruction, str):
        raise ValueError(f"{where}: no instruction; give one of the fields {', '.join(INSTRUCTION_KEYS)}")
    reference = _first(record, REFERENCE_KEYS)
    if isinstance(image, str) and not Path(image).is_absolute():
        image = str(root / image)
    rid = str(record.get("id") if record.get("id") is not None else stable_id(origin, line, instruction))
    return UserPrompt(line, rid, image, instruction, reference if isinstance(reference, str) else None,
                      str(record.get("source", origin)))


@dataclass(frozen=True)
class BadRecord:
    line: int
    error: ValueError


def read_prompt_file(path: str | Path) -> Iterator[UserPrompt | BadRecord]:
    """The records of a JSON-lines file or a `datasets` directory; a bad record yields its error instead."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompt data {path} does not exist; pass a JSON-lines file or a datasets directory")
    if path.is_dir():
        import datasets

        data = datasets.load_from_disk(str(path))
        for i, record in enumerate(data, start=1):
            try:
                yield _parse(record, i, str(path), path)
            except ValueError as e:
                yield BadRecord(i, e)
        return
    with open(path, encoding="utf-8") as f:
        lines = [(i, line) for i, line in enumerate(f, start=1) if line.strip()]
    if not lines:
        raise ValueError(f"{path} is empty; it needs one JSON object per line with 'image' and 'instruction'")
    for i, line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            yield BadRecord(i, ValueError(f"{path} line {i}: not valid JSON ({e.msg} at column {e.colno})"))
            continue
        try:
            yield _parse(record, i, str(path), path.parent)
        except ValueError as e:
            yield BadRecord(i, e)


def _open_image(prompt: UserPrompt) -> Image.Image:
    if isinstance(prompt.image, Image.Image):
        return prompt.image.convert("RGB")
    try:
        with Image.open(prompt.image) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"line {prompt.line}: image {prompt.image} does not exist; fix the path or "
                                f"remove the record") from None
    except OSError as e:
        raise ValueError(f"line {prompt.line}: image {prompt.image} cannot be read ({e}); replace the file "
                         f"or remove the record") from e


def user_prompt_stage(store: RunStore, stage: Stage, path: str | Path, limit: int | None = None) -> Stage:
    """Prompts from a user's file into `stage`; bad records are logged in the stage's errors.jsonl."""
    items: list[UserPrompt] = []
    for entry in read_prompt_file(path):
        if isinstance(entry, BadRecord):
            stage.log_error(f"{path}:{entry.line}", entry.error)
            print(f"prompts: skipped a record: {entry.error}", flush=True)
            continue
        items.append(entry)
        if limit is not None and len(items) >= limit:
            break

    def process(batch):
        return [PromptRecord(id=p.id, image=store.images.put(_open_image(p)), instruction=p.instruction,
                             reference=p.reference, source=p.source, meta={"line": p.line}).to_row()
                for p in batch]

    run_stage(stage, items, process, id_of=lambda p: p.id, batch_size=64, shard_size=1000,
              description="prompts", manifest={"config": {"path": str(path), "limit": limit}})
    return stage
