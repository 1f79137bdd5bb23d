"""Stages and runs under `torchrun` (gloo on the CPU): every process takes its share of the items and writes
shards of its own, and a stage resumes under any number of processes, so killing one rank and launching
again (with the same N or another) leaves every record exactly once, the same records as one process makes.
An RLAIF-V round launched on two processes makes the same records and, trained with the same global batch,
the same weights as one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from _stage_worker import run as run_one_process

from vlalign.data.shards import shard_rank
from vlalign.data.store import Stage, stage_dirs

TESTS = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
N_ITEMS = 120


def launch(n: int, *program: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python PROGRAM...` on `n` processes under torchrun (this interpreter's, on a free port), the launcher
    ending the job as soon as one process fails."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "--monitor-interval=0.1", *program]
    return subprocess.run(command, capture_output=True, text=True, env={**ENV, **(env or {})}, timeout=timeout,
                          cwd=TESTS)


def stage_job(n: int, stage_dir: Path, sleep: float = 0.0, exit_rank: str | None = None):
    """The toy stage of `_stage_worker.py` (batches of 5, shards of 20) on `n` processes; with `exit_rank`
    ("RANK:K") that rank dies after K batches, and the launcher ends the job."""
    env = {"VLALIGN_TEST_EXIT": exit_rank} if exit_rank else {}
    return launch(n, str(TESTS / "_stage_worker.py"), str(stage_dir), str(N_ITEMS), str(sleep), "", env=env)


def ids_on_disk(stage_dir: Path) -> list[str]:
    """Every id in every shard, repeats included."""
    return [i for s in Stage(stage_dir).shards() for i in pq.read_table(s, columns=["id"]).column("id").to_pylist()]


def as_set(stage_dir: Path) -> set[tuple]:
    return {tuple(sorted(row.items())) for row in Stage(stage_dir).rows()}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The toy stage run by one process, without a launcher: the records every launch must end with."""
    stage_dir = tmp_path_factory.mktemp("one") / "stage"
    run_one_process(str(stage_dir), N_ITEMS)
    return stage_dir


def check_exactly_once(stage_dir: Path, reference: Path) -> None:
    ids = ids_on_disk(stage_dir)
    assert len(ids) == len(set(ids)) == N_ITEMS, "every record is on disk exactly once"
    assert as_set(stage_dir) == as_set(reference)
    stage = Stage(stage_dir)
    assert stage.is_complete and stage.manifest["counts"]["rows"] == N_ITEMS and not stage.errors()
    assert not list(stage_dir.glob(".*.tmp"))


def test_stage_on_two_processes_writes_every_record_once_in_shards_per_rank(tmp_path, one_process):
    stage_dir = tmp_path / "run" / "stage"
    job = stage_job(2, stage_dir)
    assert job.returncode == 0, job.stderr[-3000:]
    check_exactly_once(stage_dir, one_process)
    shards = Stage(stage_dir).shards()
    assert {shard_rank(s) for s in shards} == {0, 1}
    assert {s.name for s in shards if shard_rank(s) == 1} >= {"shard-r01-00000.parquet"}
    for s in shards:  # each rank wrote its own share: a half of the items
        ids = pq.read_table(s, columns=["id"]).column("id").to_pylist()
        assert {int(i.removeprefix("item-")) * 2 // N_ITEMS for i in ids} == {shard_rank(s)}
    assert [r["id"] for r in Stage(stage_dir).rows()] == [r["id"] for r in Stage(one_process).rows()]

    with Stage(stage_dir).lock():  # another process holds the stage: both ranks of a job stop at once
        busy = stage_job(2, stage_dir)
    assert busy.returncode != 0 and "Busy" in busy.stderr


@pytest.mark.slow
def test_kill_a_rank_then_resume_on_two_one_and_three_processes(tmp_path, one_process):
    killed = tmp_path / "killed" / "stage"
    job = stage_job(2, killed, sleep=0.05, exit_rank="1:3")
    assert job.returncode != 0
    written = ids_on_disk(killed)
    assert 0 < len(written) < N_ITEMS and not Stage(killed).is_complete, "the job must die mid-stage"
    assert {shard_rank(s) for s in Stage(killed).shards()} == {0, 1}

    copies = {name: tmp_path / name / "stage" for name in ("two", "one", "three")}
    for copy in copies.values():
        shutil.copytree(killed.parent, copy.parent)
    assert stage_job(2, copies["two"]).returncode == 0
    result = run_one_process(str(copies["one"]), N_ITEMS)
    assert result.already_done == len(set(written)) and result.written == N_ITEMS - len(set(written))
    # on three processes, rank 2 dies too; one process then finishes what the two killed jobs left
    assert stage_job(3, copies["three"], sleep=0.05, exit_rank="2:2").returncode != 0
    assert not Stage(copies["three"]).is_complete
    run_one_process(str(copies["three"]), N_ITEMS)
    for copy in copies.values():
        check_exactly_once(copy, one_process)


ROUND = ["policy=world:base", "labeler=self", "rounds=1", "prompts.source=world", "prompts.per_round=12", "samples=4",
         "decoding.max_new_tokens=24", "decoding.temperature=1.0", "splitter=world", "batch_size=4",
         "runtime.dtype=fp32", "report=false", "train.batch_size=2", "train.epochs=2", "train.optim.lr=1e-3",
         "train.optim.warmup_ratio=0", "train.optim.log_every=1", "eval=[{name: world, limit: 4}]"]
# Two processes sum their halves of each global batch's gradients in another order than one process does, and
# Adam magnifies that float noise where a gradient is near zero: a few weights move by up to a few per cent of
# the largest change (how far depends on the machine's kernels), so the runs are compared by the distance
# between their weights, over all of them, against the distance training moved them (3e-5 of it here).
WEIGHT_TOLERANCE = 2e-3


def rounded(value):
    """`value` with its floats (inside JSON text too: a record's details) to 5 significant digits: P(yes) of a
    claim depends in its 7th digit on which other answers shared its labeling batch."""
    if isinstance(value, str) and value[:1] in "[{":
        return rounded(json.loads(value))
    if isinstance(value, float):
        return float(f"{value:.5g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def record_set(stage_dir: Path) -> set[str]:
    return {json.dumps(rounded(row), sort_keys=True, default=str) for row in Stage(stage_dir).rows()}


def distance(a: dict, b: dict) -> float:
    """The L2 distance between two sets of weights, over every tensor together."""
    return sum(float((a[k].float() - b[k].float()).pow(2).sum()) for k in a) ** 0.5


def run_alone(out: Path) -> dict:
    """The small round in this process, without a launcher."""
    from vlalign.config import load_config
    from vlalign.plugins import METHODS
    from vlalign.runner import run

    method = METHODS.get("rlaif-v")
    return run(method, load_config(method.config, None, ROUND), out)


@pytest.fixture(scope="module")
def round_alone(tmp_path_factory) -> tuple[Path, dict]:
    """The small round run by one process: what the launched runs must match."""
    out = tmp_path_factory.mktemp("round") / "one"
    return out, run_alone(out)


def check_same_round(out: Path, reference: Path) -> None:
    """Every stage of `out` holds the reference's records, each once; the trained weights agree."""
    from safetensors.torch import load_file

    from vlalign.models.load import resolve

    stages = [d.relative_to(reference) for d in stage_dirs(reference)]
    assert stages == [d.relative_to(out) for d in stage_dirs(out)] and len(stages) == 4
    for rel in stages:
        ids = ids_on_disk(out / rel)
        assert len(ids) == len(set(ids)), f"{rel}: a record written twice"
        assert record_set(out / rel) == record_set(reference / rel), f"{rel}: other records than one process's"
        assert Stage(out / rel).is_complete and not Stage(out / rel).errors()
    base = load_file(Path(resolve("world:base")) / "model.safetensors")
    trained = [load_file(run_dir / "round1" / "policy" / "model.safetensors") for run_dir in (reference, out)]
    moved, apart = distance(trained[0], base), distance(trained[1], trained[0])
    assert moved > 1e-2, "training must change the weights for the comparison to mean anything"
    assert apart <= WEIGHT_TOLERANCE * moved, f"weights are {apart:.2e} apart; training moved them {moved:.2e}"


@pytest.mark.slow
def test_rlaif_v_round_on_two_processes_matches_one_process(tmp_path, round_alone):
    one, alone = round_alone
    two = tmp_path / "two"
    job = launch(2, "-m", "vlalign", "run", "rlaif-v", "--out", str(two), *ROUND, timeout=600)
    assert job.returncode == 0, job.stderr[-4000:]
    assert job.stdout.split() == [str(two / "round1" / "policy")], "the main process alone prints the result"
    check_same_round(two, one)
    assert {shard_rank(s) for s in Stage(two / "round1" / "responses").shards()} == {0, 1}
    together = json.loads((two / "summary.json").read_text())
    assert together["base"] == alone["base"], "the sharded evaluation scores as one process does"
    losses = [[h["loss"] for h in json.loads((d / "round1" / "training" / "train_history.json").read_text())["history"]]
              for d in (one, two)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-3, abs=1e-5)


@pytest.mark.slow
def test_a_round_whose_rank_is_killed_mid_stage_resumes_on_one_process(tmp_path, round_alone):
    one, _ = round_alone
    out, events = tmp_path / "killed", tmp_path / "events"
    # rank 1 dies in the middle of its second labeling batch's write (only rank 1 writes shard-r01-*)
    kill = "write:round1/feedback/shard-r01-00000.parquet#2"
    job = launch(2, str(TESTS / "_run_worker.py"), str(events), kill, "run", "rlaif-v", "--out", str(out), *ROUND,
                 timeout=600)
    assert job.returncode != 0 and kill.partition("#")[0] in events.read_text().splitlines()
    assert not Stage(out / "round1" / "feedback").is_complete and ids_on_disk(out / "round1" / "feedback")
    run_alone(out)
    check_same_round(out, one)


def test_main_process_work_inside_main_process_work_does_not_hang():
    """A stage annotated from inside main-process bookkeeping (Silkie's missing-ratings count notes a shortfall)
    asked for a broadcast the other processes never joined: the demo hung on two processes."""
    job = launch(2, str(TESTS / "_nested_worker.py"), timeout=60)
    assert job.returncode == 0, job.stderr[-3000:]
    assert "rank 0: inner+outer [0, 1]" in job.stdout and "rank 1: inner+outer [0, 1]" in job.stdout
