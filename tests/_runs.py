"""Comparing two runs of the same config: what the kill and corrupt-run tests assert."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from safetensors.torch import load_file

from vlalign.data.store import Stage, stage_dirs


def normal(value, *runs: Path):
    """`value` with the paths of `runs` replaced (a copied run's markers name the run it was copied from),
    and the run's duration left out."""
    text = json.dumps(value, sort_keys=True)
    for run in runs:
        text = text.replace(str(run), "<run>")
    data = json.loads(text)
    if isinstance(data, dict):
        data.pop("seconds", None)
    return data


def differences(ref: Path, out: Path, shards: bool = True) -> list[str]:
    """What differs between run `out` and the reference run `ref` (empty when nothing does): the stages, their
    rows in order, each id written once (with `shards`), no errors or temporary files left, the trained
    weights bit for bit, the summary but for the paths and the duration."""
    problems = []
    ref_stages = [d.relative_to(ref) for d in stage_dirs(ref)]
    if ref_stages != [d.relative_to(out) for d in stage_dirs(out)]:
        problems.append(f"stages differ: {ref_stages}")
    for rel in ref_stages:
        raw = [i for s in Stage(out / rel).shards() for i in pq.read_table(s, columns=["id"]).column("id").to_pylist()]
        if shards and len(raw) != len(set(raw)):
            problems.append(f"{rel}: ids written more than once: {[i for i, n in Counter(raw).items() if n > 1]}")
        if Stage(out / rel).rows() != Stage(ref / rel).rows():
            problems.append(f"{rel}: rows differ from the unkilled run's")
        if Stage(out / rel).errors():
            problems.append(f"{rel}: errors logged: {Stage(out / rel).errors()[:2]}")
        if list((out / rel).glob(".*.tmp")):
            problems.append(f"{rel}: temporary files left")
    for weights in sorted(ref.rglob("policy/model.safetensors")):
        a, b = load_file(weights), load_file(out / weights.relative_to(ref))
        if a.keys() != b.keys() or any(not a[k].equal(b[k]) for k in a):
            problems.append(f"{weights.relative_to(ref)}: trained weights differ")
    if list(out.rglob(".*.saving")):
        problems.append("a half-written model folder is left")
    summaries = [normal(json.loads((d / "summary.json").read_text()), ref, out) for d in (ref, out)]
    if summaries[0] != summaries[1]:
        problems.append("the summary differs")
    return problems


