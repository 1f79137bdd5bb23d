"""Import released preference data into a run directory, ready to train on or to export.

- `rlaif-v`: the RLAIF-V-Dataset parquet files (`ds_name`, `image` {bytes, path}, `question`, `chosen`,
  `rejected`, `origin_dataset`, `origin_split`, `idx`, `image_path`), read a row group at a time so the
  images never all sit in memory.
- `povid`: POVID's JSON (a list, or JSON lines) of `id`, `image` (a file under `--images`),
  `conversations` and `rejected_conversations` (human turn with `<image>`, then the gpt turn).
- `vlfeedback`: VLFeedback records (`id`, `prompt`, `models`, `img_path`, `completions` with `model`,
  `response` and `annotations` of three aspects, each `{Rating, Rationale}`, ratings as strings); the
  responses and their ratings are stored, and pairs are built with VLFeedback's rule.

A record that cannot be used (a missing field, a missing image) is logged in the stage's errors.jsonl
with its position and skipped; the rest of the file is imported.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from vlalign.data.records import PairRecord, ResponseRecord, stable_id
from vlalign.data.store import RunStore, Stage, run_stage
from vlalign.feedback.pairs import PairRules
from vlalign.feedback.ratings import ASPECTS


def _image(value: Any, images_dir: Path | None, where: str) -> Image.Image:
    """An image from bytes ({bytes, path} as in parquet), or from a path (relative to `images_dir`)."""
    if isinstance(value, dict) and value.get("bytes"):
        return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
    path = value.get("path") if isinstance(value, dict) else value
    if not path:
        raise ValueError(f"{where}: no image (neither bytes nor a path)")
    full = Path(path) if Path(path).is_absolute() or images_dir is None else images_dir / path
    if not full.exists():
        raise FileNotFoundError(f"{where}: image {full} does not exist; pass the folder that holds the "
                                f"images with --images")
    with Image.open(full) as im:
        return im.convert("RGB")


def _json_records(path: Path) -> Iterator[tuple[int, Any]]:
    """(position, record) of a JSON list or a JSON-lines file; positions are 1-based lines or indices."""
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"{path} is empty")
    if text.lstrip().startswith("["):
        yield from enumerate(json.loads(text), start=1)
        return
    for i, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                yield i, ValueError(f"{path} line {i}: not valid JSON ({e.msg})")


def _require(record: dict, keys: tuple[str, ...], where: str) -> None:
    if isinstance(record, Exception):
        raise record
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in keys if record.get(k) in (None, "")]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")


def _parquet_rows(src: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    files = sorted(src.rglob("*.parquet")) if src.is_dir() else [src]
    if not files:
        raise FileNotFoundError(f"no .parquet files under {src}")
    for f in files:
        parquet = pq.ParquetFile(f)
        for g in range(parquet.num_row_groups):
            for i, row in enumerate(parquet.read_row_group(g).to_pylist()):
                yield f"{f.name} group {g} row {i}", row


def import_rlaif_v(src: str | Path, out: str | Path, images: str | Path | None = None) -> Stage:
    store = RunStore(out)
    stage = store.stage("pairs")
    items = list(_parquet_rows(Path(src)))

    def process(batch):
        rows = []
        for where, r in batch:
            _require(r, ("question", "chosen", "rejected"), where)
            pid = stable_id("rlaif-v", r.get("ds_name"), r.get("idx"), r.get("image_path"), r["question"])
            image = store.images.put(_image(r.get("image") or r.get("image_path"), _dir(images), where))
            rows.append(PairRecord(
                id=stable_id("rlaif-v-pair", pid, r["chosen"], r["rejected"]), prompt_id=pid, image=image,
                instruction=r["question"], chosen=r["chosen"], rejected=r["rejected"], method="rlaif_v",
                meta={k: r.get(k) for k in ("ds_name", "origin_dataset", "origin_split", "idx", "image_path")}).to_row())
        return rows

    run_stage(stage, items, process, id_of=lambda item: item[0], per_item_output=False, batch_size=64,
              description="import rlaif-v", manifest={"config": {"format": "rlaif-v", "src": str(src)}})
    return stage


def _turn(conversation: list, speaker: str, where: str) -> str:
    for turn in conversation or []:
        if turn.get("from") == speaker:
            return str(turn.get("value", ""))
    raise ValueError(f"{where}: no '{speaker}' turn in the conversation")


def import_povid(src: str | Path, out: str | Path, images: str | Path | None = None) -> Stage:
    store = RunStore(out)
    stage = store.stage("pairs")
    src = Path(src)
    items = [(f"{src.name} record {i}", r) for i, r in _json_records(src)]

    def process(batch):
        rows = []
        for where, r in batch:
            _require(r, ("image", "conversations", "rejected_conversations"), where)
            question = _turn(r["conversations"], "human", where).replace("<image>", "").strip()
            chosen = _turn(r["conversations"], "gpt", where)
            rejected = _turn(r["rejected_conversations"], "gpt", where)
            pid = str(r.get("id") or stable_id("povid", r["image"], question))
            rows.append(PairRecord(
                id=stable_id("povid-pair", pid, chosen, rejected), prompt_id=pid,
                image=store.images.put(_image(r["image"], _dir(images), where)), instruction=question,
                chosen=chosen, rejected=rejected, method="povid", meta={"image_file": r["image"]}).to_row())
        return rows

    run_stage(stage, items, process, id_of=lambda item: item[0], per_item_output=False, batch_size=64,
              description="import povid", manifest={"config": {"format": "povid", "src": str(src)}})
    return stage


def parse_rating(value: Any) -> int | None:
    """A 1-5 rating from VLFeedback's string form ("4"); anything else (missing, "N/A", 7) is None."""
    try:
        rating = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return rating if 1 <= rating <= 5 else None


def _completions(record: Any, where: str) -> Iterator[tuple[str, str, int, dict]]:
    _require(record, ("prompt", "img_path", "completions"), where)
    pid = str(record.get("id") or stable_id("vlfeedback", record["img_path"], record["prompt"]))
    for k, completion in enumerate(record["completions"]):
        yield pid, f"{pid}/{k}", k, completion if isinstance(completion, dict) else {}


def import_vlfeedback(src: str | Path, out: str | Path, images: str | Path | None = None,
                      rules: PairRules | None = None, aspect: str | None = None) -> Stage:
    """Responses into `responses`, their ratings into `feedback`, pairs into `pairs` (VLFeedback's rule:
    every two responses of a prompt with different mean ratings; `aspect` pairs by one aspect instead)."""
    from vlalign.feedback.ratings import rating_feedback, rating_score, vlfeedback_rules
    from vlalign.stages import pair_stage

    store = RunStore(out)
    src = Path(src)
    items = [(f"{src.name} record {i}", r) for i, r in _json_records(src)]
    manifest = {"config": {"format": "vlfeedback", "src": str(src)}}

    def responses(batch):
        rows = []
        for where, r in batch:
            image = None
            for pid, rid, _, c in _completions(r, where):
                image = image or store.images.put(_image(r["img_path"], _dir(images), where))
                rows.append(ResponseRecord(id=rid, prompt_id=pid, image=image, instruction=r["prompt"],
                                           response=c.get("response", ""), model=c.get("model", "")).to_row())
        return rows

    def feedback(batch):
        rows = []
        for where, r in batch:
            for pid, rid, _, c in _completions(r, where):
                notes = c.get("annotations") or {}
                rows.append(rating_feedback(
                    rid, pid, {a: parse_rating((notes.get(a) or {}).get("Rating")) for a in ASPECTS},
                    {a: (notes.get(a) or {}).get("Rationale") for a in ASPECTS}, judge="vlfeedback"))
        return rows

    stages = {}
    for name, process in (("responses", responses), ("feedback", feedback)):
        stages[name] = store.stage(name)
        run_stage(stages[name], items, process, id_of=lambda item: item[0], per_item_output=False, batch_size=64,
                  description=f"import vlfeedback {name}", manifest=manifest)
    return pair_stage(stages["responses"], stages["feedback"], store.stage("pairs"), rules or vlfeedback_rules(),
                      method="vlfeedback", score=rating_score(aspect), scoring=aspect or "mean rating")


def _dir(images: str | Path | None) -> Path | None:
    return Path(images) if images is not None else None


IMPORTERS: dict[str, Callable[..., Stage]] = {
    "rlaif-v": import_rlaif_v, "povid": import_povid, "vlfeedback": import_vlfeedback}


def import_data(format: str, src: str | Path, out: str | Path, images: str | Path | None = None) -> Stage:
    """`vlalign import --format FORMAT SRC --out DIR`."""
    try:
        importer = IMPORTERS[format]
    except KeyError:
        raise ValueError(f"unknown import format {format!r}; choose one of {', '.join(IMPORTERS)}") from None
    if not Path(src).exists():
        raise FileNotFoundError(f"{src} does not exist")
    return importer(src, out, images)
