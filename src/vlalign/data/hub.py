"""Push a trained model, or a run's data, to a Hugging Face Hub (or any server that speaks its API), through
`huggingface_hub`.

- a model: a saved folder's `policy/` at the root of a model repo, its LoRA `adapter/` under `adapter/`
  (the layout of `vlalign.models.saved`), or any model directory as it is;
- a run's data: a dataset repo with its stages (Parquet shards and manifests), images, records, summary
  and report, without the model weights (policies, adapters, training checkpoints), which go to a model repo.

The token comes from `HF_TOKEN` (or huggingface_hub's own login), never from a config. The command line
keeps the Hub offline so that nothing is ever downloaded; a push the user asked for is the one request it
lets through.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vlalign.data.store import LOCK

WEIGHTS = ("policy", "adapter", "checkpoints")  # folders of a run that hold weights, not data
POLICY, ADAPTER = "policy", "adapter"


@dataclass(frozen=True)
class HubSettings:
    """Where a run's final model and data go when it ends (TRL's push_to_hub)."""

    push: bool = False  # push the final policy (and its LoRA adapter) to `repo` when the run ends
    repo: str | None = None  # the model repo, ORG/NAME
    data_repo: str | None = None  # also push the run's data (stages, pairs, summary, report) to this dataset repo
    endpoint: str | None = None  # the Hub's URL (null: HF_ENDPOINT, else huggingface.co)
    private: bool = True  # create the repos private

    def __post_init__(self) -> None:
        if self.push and not self.repo:
            raise ValueError("hub.push needs hub.repo (TRL: hub_model_id), the model repo ORG/NAME")


@contextlib.contextmanager
def online() -> Iterator[None]:
    """Let huggingface_hub make requests inside, whatever HF_HUB_OFFLINE says outside (the push was asked for)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _api(endpoint: str | None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=os.environ.get("HF_TOKEN") or None)


def _files(folder: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    """Every file under `folder`, leaving out folders named in `skip`, temporary files and the run's lock."""
    out = []
    for f in sorted(folder.rglob("*")):
        parts = f.relative_to(folder).parts
        if f.is_file() and not any(p in skip or p.endswith((".tmp", ".saving", ".old")) for p in parts) \
                and f.name != LOCK:
            out.append(f)
    return out


def _upload(api, repo: str, repo_type: str, private: bool, files: list[tuple[str, Path]], message: str) -> str:
    from huggingface_hub import CommitOperationAdd

    if not files:
        raise ValueError(f"nothing to push to {repo}")
    with online():
        api.create_repo(repo, repo_type=repo_type, private=private, exist_ok=True)
        info = api.create_commit(repo, [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
                                        for name, path in files], commit_message=message, repo_type=repo_type)
    return info.commit_url


def model_files(folder: str | Path) -> list[tuple[str, Path]]:
    """(path in the repo, file) of a saved model: a folder with policy/ (and adapter/), or a model directory."""
    folder = Path(folder)
    if (folder / POLICY).is_dir():
        files = [(f.relative_to(folder / POLICY).as_posix(), f) for f in _files(folder / POLICY)]
        if (folder / ADAPTER).is_dir():
            files += [(f"{ADAPTER}/{f.relative_to(folder / ADAPTER).as_posix()}", f) for f in _files(folder / ADAPTER)]
        return files
    if not ((folder / "config.json").exists() or (folder / "adapter_config.json").exists()):
        raise FileNotFoundError(f"no model at {folder}: pass a folder with policy/ (a run's roundK, `vlalign dpo`'s "
                                f"--out) or a model directory")
    return [(f.relative_to(folder).as_posix(), f) for f in _files(folder)]


def run_files(run: str | Path) -> list[tuple[str, Path]]:
    """(path in the repo, file) of a run's data: everything but the weights."""
    run = Path(run)
    if not (run / "run.json").exists():
        raise FileNotFoundError(f"{run} is not a run directory (no run.json)")
    return [(f.relative_to(run).as_posix(), f) for f in _files(run, WEIGHTS)]


def push_model(folder: str | Path, repo: str, endpoint: str | None = None, private: bool = True) -> str:
    """Push a saved model (see `model_files`) to the model repo `repo`; the commit's URL."""
    return _upload(_api(endpoint), repo, "model", private, model_files(folder), f"vlalign: {Path(folder).name}")


def push_run(run: str | Path, repo: str, endpoint: str | None = None, private: bool = True) -> str:
    """Push a run's data (see `run_files`) to the dataset repo `repo`; the commit's URL."""
    return _upload(_api(endpoint), repo, "dataset", private, run_files(run), f"vlalign run {Path(run).name}")


def push_finished(run: str | Path, final: str | Path, settings: HubSettings) -> dict[str, str]:
    """What `settings` asks to push when a run ends: its final model, and its data when `data_repo` is set."""
    if not settings.push:
        return {}
    assert settings.repo is not None  # HubSettings refuses push without a repo
    pushed = {"model": push_model(Path(final).parent, settings.repo, settings.endpoint, settings.private)}
    if settings.data_repo:
        pushed["data"] = push_run(run, settings.data_repo, settings.endpoint, settings.private)
    return pushed
