"""Export the preference pairs of a run in other tools' formats: TRL, POVID and VLFeedback.

`trl`: TRL's conversational vision preference format, which `trl.DPOTrainer` (1.16) trains on as it is:
`prompt` is a user turn whose content holds an image placeholder and the instruction, `chosen` and
`rejected` are one assistant turn each, and `images` holds the picture the placeholder stands for. TRL's
`DataCollatorForVisionPreference` fills the placeholder with the image and applies the processor's chat
template on the fly, so the dataset carries no model-specific tokens.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets

from vlalign.data.store import Stage, find_pair_stages, no_pairs_error, quiet_datasets, stage_dirs

_TEXT_PART = {"type": datasets.Value("string"), "text": datasets.Value("string")}
_MESSAGES = datasets.List({"role": datasets.Value("string"), "content": datasets.List(_TEXT_PART)})
TRL_FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "prompt_id": datasets.Value("string"),
    "method": datasets.Value("string"),
    "prompt": _MESSAGES,
    "chosen": _MESSAGES,
    "rejected": _MESSAGES,
    "images": datasets.List(datasets.Image()),
})


def _user(instruction: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": instruction}]}]


def _assistant(text: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def _trl_rows(stage_dirs: list[str]) -> Iterator[dict[str, Any]]:
    seen: set[str] = set()
    for stage_dir in stage_dirs:
        stage = Stage(stage_dir)
        for row in stage.rows():
            if row["id"] in seen:  # the same pair id in two stages is the same pair: export it once
                continue
            seen.add(row["id"])
            yield {
                "id": row["id"],
                "prompt_id": row.get("prompt_id"),
                "method": row.get("method"),
                "prompt": _user(row["instruction"]),
                "chosen": _assistant(row["chosen"]),
                "rejected": _assistant(row["rejected"]),
                "images": [stage.images.get(row["image"])],
            }


def _check_out(out: Path, marker: str) -> None:
    """`out` may be new, empty, or an earlier export of the same format (which holds `marker`): never a file
    or a folder of something else, which the export would replace or mix its files into."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; pass a new or empty directory for the export")
    if out.exists() and any(out.iterdir()) and not (out / marker).exists():
        raise FileExistsError(f"--out {out} exists and is not an earlier export of this format (no {marker} "
                              f"there); choose an empty or new directory (an earlier export there would be replaced)")


def _generated(cache: Path, stage_dirs: list[str]) -> datasets.Dataset:
    """The TRL rows as a dataset; an error while making them is raised as it is (a missing image names the
    image and the fix), not as the `datasets` wrapper that only says generation failed."""
    try:
        return datasets.Dataset.from_generator(_trl_rows, features=TRL_FEATURES, cache_dir=str(cache),
                                               gen_kwargs={"stage_dirs": stage_dirs})
    except datasets.exceptions.DatasetGenerationError as e:
        if isinstance(e.__cause__, Exception):
            raise e.__cause__ from None
        raise


def export_trl(src: str | Path, out: str | Path) -> Path:
    """Write the pairs under `src` to `out` (`datasets.save_to_disk`) in TRL's vision preference format.

    Rows are streamed through a temporary Arrow cache next to `out`, so a large export never holds all its
    images in memory; an earlier export at `out` is replaced only once the new one is complete. Load the
    result with `datasets.load_from_disk(out)`.
    """
    src, out = Path(src), Path(out)
    stage_dirs = find_pair_stages(src)
    if not stage_dirs:
        raise no_pairs_error(src)
    _check_out(out, "state.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        with quiet_datasets():
            dataset = _generated(work / "cache", [str(d) for d in stage_dirs])
            dataset.save_to_disk(str(work / "dataset"))
        if out.exists():
            shutil.rmtree(out)
        os.replace(work / "dataset", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


def _copy_image(stage: Stage, hash: str, folder: Path) -> str:
    """The image as `folder/<hash>.png` (written once); returns the file name records refer to."""
    name = f"{hash}.png"
    if not (folder / name).exists():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stage.images.path(hash), folder / name)
    return name


def export_povid(src: str | Path, out: str | Path) -> Path:
    """POVID's format: `out/povid.json` (id, image, conversations, rejected_conversations) and `out/images/`;
    image paths are relative to `out`, so the export imports back as it is (`--images out`, or no --images)."""
    src, out = Path(src), Path(out)
    stage_dirs = find_pair_stages(src)
    if not stage_dirs:
        raise no_pairs_error(src)
    _check_out(out, "povid.json")
    records, seen = [], set()
    for d in stage_dirs:
        stage = Stage(d)
        for row in stage.rows():
            if row["id"] in seen:
                continue
            seen.add(row["id"])
            human = {"from": "human", "value": f"<image>\n{row['instruction']}"}
            records.append({"id": row["id"], "image": f"images/{_copy_image(stage, row['image'], out / 'images')}",
                            "conversations": [human, {"from": "gpt", "value": row["chosen"]}],
                            "rejected_conversations": [human, {"from": "gpt", "value": row["rejected"]}]})
    _write_json_atomic(out / "povid.json", records)
    return out


def export_vlfeedback(src: str | Path, out: str | Path) -> Path:
    """VLFeedback's format from a run's `responses` and rating `feedback` stages: `out/vlfeedback.json` and
    `out/images/`. Ratings are written as strings, missing ones as "N/A", as in the released data."""
    from vlalign.feedback.ratings import ASPECTS

    src, out = Path(src), Path(out)
    found = {d.name: d for d in stage_dirs(src) if d.name in ("responses", "feedback")}
    if set(found) != {"responses", "feedback"}:
        raise ValueError(f"{src} has no 'responses' and 'feedback' stages with ratings; export a Silkie run "
                         f"or a VLFeedback import")
    _check_out(out, "vlfeedback.json")
    responses, feedback = Stage(found["responses"]), Stage(found["feedback"])
    notes = {r["response_id"]: json.loads(r["details"] or "{}") for r in feedback.rows()}
    by_prompt: dict[str, dict] = {}
    for r in responses.rows():
        entry = by_prompt.setdefault(r["prompt_id"], {
            "id": r["prompt_id"], "prompt": r["instruction"], "models": [],
            "img_path": f"images/{_copy_image(responses, r['image'], out / 'images')}", "completions": []})
        details = notes.get(r["id"], {})
        ratings, rationales = details.get("ratings", {}), details.get("rationales", {})
        entry["models"].append(r["model"])
        entry["completions"].append({"model": r["model"], "response": r["response"], "annotations": {
            a: {"Rating": "N/A" if ratings.get(a) is None else str(ratings[a]), "Rationale": rationales.get(a) or ""}
            for a in ASPECTS}})
    _write_json_atomic(out / "vlfeedback.json", list(by_prompt.values()))
    return out


EXPORTERS: dict[str, Callable[[str | Path, str | Path], Path]] = {
    "trl": export_trl, "povid": export_povid, "vlfeedback": export_vlfeedback}


def export(src: str | Path, out: str | Path, format: str = "trl") -> Path:
    """`vlalign export --format FORMAT SRC --out DIR`: one entry point for every export format."""
    try:
        exporter = EXPORTERS[format]
    except KeyError:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(EXPORTERS)}") from None
    return exporter(src, out)
