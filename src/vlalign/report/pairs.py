"""The pair viewer's data: every pair stage of a run, each pair with what produced its preference.

A pair row carries its prompt's id and its answers' response ids (`meta.chosen_id`, `meta.rejected_id`), so
the viewer joins it to the round's prompts (source, ground truth, the world's scene) and feedback: RLAIF-V's
claims with their questions and P(yes), a judge's three ratings with rationales, POVID's injected edits
(shown as a word diff against the ground truth, with one draw of stage 2's image noise). Answers are marked
by the plugins' answer markers. Images are copied into the report, so it opens anywhere.
"""

from __future__ import annotations

import difflib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlalign.data.records import FeedbackRecord, PairRecord, PromptRecord
from vlalign.data.store import Stage, find_pair_stages, find_run_root, no_pairs_error, stage_dirs
from vlalign.report.gather import ROUND, RunInfo
from vlalign.report.marks import mark_answer

TOKEN = re.compile(r"\w+|[^\w\s]+|\s+")  # words, punctuation and spaces apart, so "heart." matches "heart and"
MAX_PAIRS = 2000  # per pair set: a larger stage is shown evenly thinned, and the page says so


@dataclass
class PairSet:
    """One pair stage as the viewer shows it."""

    slug: str
    title: str
    path: str
    total: int
    rows: list[dict]

    def header(self) -> dict:
        return {"slug": self.slug, "title": self.title, "path": self.path, "total": self.total, "shown": len(self.rows)}


class Lookup:
    """The prompts and feedback of the run a pair stage belongs to, by id, read once per run."""

    def __init__(self) -> None:
        self._prompts: dict[Path, dict[str, PromptRecord]] = {}
        self._feedback: dict[Path, dict[str, FeedbackRecord]] = {}

    def prompts(self, run_root: Path) -> dict[str, PromptRecord]:
        if run_root not in self._prompts:
            found = [d for d in stage_dirs(run_root) if d.name == "prompts"]
            self._prompts[run_root] = {p.id: p for d in found for p in Stage(d, run_root).records(PromptRecord)}
        return self._prompts[run_root]

    def feedback(self, folder: Path, run_root: Path) -> dict[str, FeedbackRecord]:
        """Feedback by response id from every feedback stage under `folder` (a round), main stage first."""
        if folder not in self._feedback:
            found = sorted((d for d in stage_dirs(folder) if d.name == "feedback"), key=lambda d: len(d.parts))
            index: dict[str, FeedbackRecord] = {}
            for d in found:
                for f in Stage(d, run_root).records(FeedbackRecord):
                    if f.response_id not in index or not index[f.response_id].details:
                        index[f.response_id] = f
            self._feedback[folder] = index
        return self._feedback[folder]


def pair_stages(run: RunInfo) -> list[tuple[Path, str]]:
    """(stage folder, title) of every pair stage of the run, and of the pairs it trained on from elsewhere."""
    out = []
    for d in sorted(find_pair_stages(run.root), key=lambda d: (len(d.parts), d)):  # a round's main pairs first
        rel = d.relative_to(run.root)
        m = ROUND.match(rel.parts[0])
        where = f"round {m.group(1)}" if m else "every round"
        out.append((d, f"{where}: {rel.as_posix()}"))
    given = (run.config or {}).get("pairs_from")
    if given and Path(given).exists():
        out += [(d, f"pairs_from: {d}") for d in find_pair_stages(given)]
    return out


def _thin(rows: list[dict], limit: int) -> list[dict]:
    if len(rows) <= limit:
        return rows
    return [rows[i * len(rows) // limit] for i in range(limit)]


def word_diff(truth: str, changed: str) -> list[list[str]]:
    """[op, text] segments turning `truth` into `changed` word by word: eq, del (truth only), ins (changed only)."""
    a, b = TOKEN.findall(truth), TOKEN.findall(changed)
    out: list[list[str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(["eq", "".join(a[i1:i2])])
        else:
            out += [x for x in (["del", "".join(a[i1:i2])], ["ins", "".join(b[j1:j2])]) if x[1]]
    return out


def _side(text: str, score: float | None, model: str, feedback: FeedbackRecord | None,
          prompt: PromptRecord | None) -> dict[str, Any]:
    details = feedback.details if feedback is not None else {}
    side: dict[str, Any] = {"text": text, "score": score, "model": model, "marks": mark_answer(text, prompt)}
    claims = details.get("claims")
    if claims and isinstance(claims[0], dict):  # RLAIF-V's scored claims; Silkie's are plain counted texts
        side["claims"] = [{k: c.get(k) for k in ("claim", "question", "p_yes", "rejected", "holds_if_yes")}
                          for c in claims]
    elif claims:
        side["claim_texts"] = list(claims)
    if details.get("ratings"):
        side["ratings"] = details["ratings"]
        side["rationales"] = details.get("rationales") or {}
    if feedback is not None and feedback.meta.get("error"):
        side["error"] = feedback.meta["error"]
    return side


def pair_row(p: PairRecord, prompt: PromptRecord | None, feedback: dict[str, FeedbackRecord]) -> dict[str, Any]:
    """One pair as the viewer's JSON: both answers with their feedback, the prompt's source and ground truth."""
    meta = p.meta
    edits = meta.get("edits")
    reference = prompt.reference if prompt is not None else None
    chosen_model = meta.get("chosen_model") or ("ground truth" if edits or p.chosen == reference else "")
    rejected_model = meta.get("rejected_model") or ("injected" if edits else "")
    gap = (p.chosen_score - p.rejected_score
           if p.chosen_score is not None and p.rejected_score is not None else None)
    row = {"id": p.id, "prompt_id": p.prompt_id, "image": f"images/{p.image}.png", "instruction": p.instruction,
           "source": prompt.source if prompt is not None else meta.get("source", ""), "reference": reference,
           "gap": gap, "method": p.method,
           "chosen": _side(p.chosen, p.chosen_score, chosen_model, feedback.get(meta.get("chosen_id", "")), prompt),
           "rejected": _side(p.rejected, p.rejected_score, rejected_model, feedback.get(meta.get("rejected_id", "")),
                             prompt)}
    if edits:
        row["edits"] = list(edits)
        row["diff"] = word_diff(p.chosen, p.rejected)
    return row


def read_pair_set(folder: Path, title: str, slug: str, lookup: Lookup, limit: int = MAX_PAIRS) -> PairSet:
    run_root = find_run_root(folder)
    round_folder = next((f for f in [folder, *folder.parents] if ROUND.match(f.name)), None)
    feedback = lookup.feedback(round_folder, run_root) if round_folder is not None else {}
    prompts = lookup.prompts(run_root)
    records = Stage(folder, run_root).records(PairRecord)
    rows = [pair_row(p, prompts.get(p.prompt_id), feedback) for p in _thin(records, limit)]
    return PairSet(slug, title, str(folder), len(records), rows)


def read_pair_sets(run: RunInfo, limit: int = MAX_PAIRS) -> list[PairSet]:
    """Every pair set of the run (an empty list when no pair stage has rows yet)."""
    lookup = Lookup()
    return [read_pair_set(d, title, f"set{i}", lookup, limit) for i, (d, title) in enumerate(pair_stages(run))]


def no_pairs_message(run: RunInfo) -> str:
    return str(no_pairs_error(run.root))


def copy_images(sets: list[PairSet], out: Path, noise: dict | None) -> None:
    """The pairs' images into `out/images` (each once); with POVID's `noise` settings, one noised draw of each."""
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    sources = {}
    for s in sets:
        root = find_run_root(Path(s.path))
        for row in s.rows:
            sources[row["image"]] = root / row["image"]
    for rel, src in sources.items():
        if src.exists() and not (out / rel).exists():
            shutil.copyfile(src, out / rel)
    if noise is not None:
        _noised(sets, out, noise)


def _noised(sets: list[PairSet], out: Path, noise: dict) -> None:
    """POVID's stage-2 image: the DDPM forward noise at its step k (training draws fresh noise every batch)."""
    import torch
    from PIL import Image

    from vlalign.data.corrupt import add_diffusion_noise

    (out / "images" / "noised").mkdir(parents=True, exist_ok=True)
    k, T, seed = int(noise.get("step", 500)), int(noise.get("T", 1000)), int(noise.get("seed", 0))
    for s in sets:
        for row in s.rows:
            if "edits" not in row or not (out / row["image"]).exists():
                continue
            rel = row["image"].replace("images/", "images/noised/", 1)
            if not (out / rel).exists():
                with Image.open(out / row["image"]) as im:
                    add_diffusion_noise(im, k, T, torch.Generator().manual_seed(seed)).save(out / rel)
            row["noised"] = rel
            row["noise"] = f"DDPM forward noise, step {k} of {T}"
