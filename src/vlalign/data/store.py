"""The run directory: one folder per stage of Parquet shards, a manifest, and a shared image store.

Layout::

    run/
      .lock                      held by the process writing the run (`RunStore.lock`)
      images/<hash>.png          ImageStore: each image once
      <stage>/shard-00000.parquet ...
      <stage>/shard-r01-00000.parquet ...  written by rank 1 of a launched job (rank 0 writes the plain names)
      <stage>/.manifest.json     what produced the stage (config, model, seed, versions), counts, complete
      <stage>/.errors.jsonl      records that failed, one JSON line each (.errors-r01.jsonl: rank 1's)
      <stage>/.done_items.jsonl  items finished by a stage whose items make a varying number of records

The side files start with a dot so that a stage folder reads as a dataset as it is: pyarrow and pandas
skip names that start with '.' or '_', `datasets.load_dataset("parquet", data_dir=...)` only those that
start with '.'. Runs made before they were renamed (manifest.json, errors.jsonl, done_items.jsonl) are
read as they are, and their side files take the new names on the next write.

Shards are written to a temporary file and renamed, so a shard either exists whole or not at all; records
carry stable ids, so a stage that is killed and started again skips what it already wrote and never
writes a record twice. The shard being filled is rewritten after every batch, so a kill loses at most the
batch in flight.

Under a launcher (`torchrun`, `accelerate launch`: N processes on one or many nodes) every process runs the
same stages and takes its share of the items not yet done: each writes shards and logs of its own (named by
its rank), and only the main process writes the manifest. Which items are done is read from every
process's shards, so a stage resumes under any number of processes, and a record is never written twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from vlalign import ranks
from vlalign.data.errors import SetupError
from vlalign.data.images import ImageStore
from vlalign.data.shards import (
    SHARD_GLOB,
    CorruptShard,
    read_shard,
    set_aside,
    shard_columns,
    shard_index,
    shard_name,
    shard_rank,
    without_repeats,
)
from vlalign.progress import progress, warn
from vlalign.redaction import redact, redact_secrets

if TYPE_CHECKING:
    import datasets

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, one writer per stage is then up to the user
    fcntl = None

T = TypeVar("T")
MANIFEST = ".manifest.json"
ERRORS = ".errors.jsonl"
DONE_ITEMS = ".done_items.jsonl"
LEGACY_NAMES = {MANIFEST: "manifest.json", ERRORS: "errors.jsonl", DONE_ITEMS: "done_items.jsonl"}
LOCK = ".lock"
RUN_MARKER = "run.json"
VERSIONED = ("vlalign", "torch", "transformers", "datasets", "peft")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that decide what a stage produces, read without importing them."""
    versions: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """Run `write(tmp)` on a temporary file next to `path`, then rename it: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """No tqdm bar per shard from `datasets`: the stage's own progress bar says how far it is."""
    import datasets  # a second to import: the config check, which reads no stage, never pays it

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _json_lines(path: Path) -> list[Any]:
    """The JSON lines of an append-only log; a line cut short by a kill is left out."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def for_rank(path: Path, rank: int) -> Path:
    """The file of the process of rank `rank` among those named `path` (`path` itself for rank 0):
    .errors.jsonl -> .errors-r01.jsonl, .lock -> .lock-r01."""
    return path if rank == 0 else path.with_name(f"{path.stem}-r{rank:02d}{path.suffix}")


def _ids(value: str | Sequence[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def find_run_root(path: str | Path) -> Path:
    """The run directory `path` lies in: the nearest folder up with a run marker (or images), else the parent."""
    path = Path(path)
    for folder in path.parents:
        if (folder / RUN_MARKER).exists() or (folder / "images").is_dir():
            return folder
    return path.parent


class Busy(RuntimeError):
    """Another process is writing the same run or stage (one writer at a time; the lock is the OS's, so it
    goes away with the process that held it, even when that one was killed)."""


def _locked(f) -> bool:
    """Whether this process now holds the open file `f`'s lock (False: another process has it)."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def _exclusive(lock_file: Path, what: str) -> Iterator[None]:
    """Hold `lock_file` for this process, or raise `Busy` at once naming `what` and the fix. Each process of
    a launched job holds a file of its own (rank 0 the plain one, which any other job wants too), so they
    never block each other, and they all stop with `Busy` when any of them could not take its own."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    mine = for_rank(lock_file, ranks.rank())
    with open(mine, "w") as f:
        refused = [r for r, held in enumerate(ranks.gather([_locked(f)])) if not held]
        if refused:
            raise Busy(f"{what} is being written by another process (it holds {for_rank(lock_file, refused[0])}); "
                       f"wait for it to finish or stop it, then run the same command again")
        yield


class Stage:
    """One stage's folder: its shards, manifest and error log."""

    def __init__(self, dir: str | Path, run_root: str | Path | None = None):
        self.dir = Path(dir)
        self.run_root = Path(run_root) if run_root is not None else find_run_root(self.dir)

    def __repr__(self) -> str:
        return f"Stage({str(self.dir)!r})"

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def images(self) -> ImageStore:
        """The image store of the run this stage belongs to."""
        return ImageStore(self.run_root)

    def _side_files(self, name: str) -> list[Path]:
        """The side file `name` where it exists: under its older name (a run made before the rename), then its
        own, then those of the other ranks of a launched job (.errors-r01.jsonl, ...)."""
        own = [p for p in (self.dir / LEGACY_NAMES[name], self.dir / name) if p.exists()]
        path = Path(name)
        return own + sorted(self.dir.glob(f"{path.stem}-r*{path.suffix}"))

    def _own_log(self, name: str) -> Path:
        """The side file this process appends to: its rank's."""
        return for_rank(self.dir / name, ranks.rank())

    # manifest

    @property
    def manifest(self) -> dict[str, Any]:
        found = self._side_files(MANIFEST)
        if not found:
            return {}
        path = found[-1]
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"the manifest {path} is not valid JSON ({e}); delete it and run the stage "
                             f"again (its shards are kept and resumed)") from e

    def write_manifest(self, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into the manifest (secrets masked) and rewrite it atomically, with fresh versions
        (under its own name: a manifest under the older name is replaced)."""
        current = self.manifest
        manifest = {"stage": self.name, "config": {}, "model": None, "seed": None, "created": _now(),
                    "complete": False, "errors": 0, **current, **redact(fields)}
        manifest["versions"] = package_versions()
        manifest["updated"] = _now()
        text = json.dumps(manifest, indent=1, sort_keys=True, default=str)
        write_atomic(self.dir / MANIFEST, lambda tmp: Path(tmp).write_text(text))
        (self.dir / LEGACY_NAMES[MANIFEST]).unlink(missing_ok=True)
        return manifest

    @property
    def is_complete(self) -> bool:
        """Whether the stage ran to its end (items that failed on the way are logged, and counted in `errors`)."""
        return bool(self.manifest.get("complete", False))

    @property
    def settled(self) -> bool:
        """Whether the stage ran to its end with no failed item left to ask again: one whose log holds failures
        not written since is not, so a resume (of a finished run too) asks them again (`RunStore.unfinished`)."""
        manifest = self.manifest
        return bool(manifest.get("complete", False)) and not manifest.get("errors")

    def fingerprint(self) -> str:
        """What the stage holds, as a short hash of its record ids and finished items: it changes when a
        resume adds records (a failed item answered at last), so what was made from the stage can tell."""
        held = json.dumps([sorted(self.done_ids()), sorted(self.done_items())])
        return hashlib.sha256(held.encode()).hexdigest()[:16]

    def clear(self) -> list[Path]:
        """Remove the stage's records, finished items and error log (its manifest stays), so it is made again
        from scratch; only while holding the stage's lock."""
        gone = [*self.shards(), *self._side_files(DONE_ITEMS), *self._side_files(ERRORS)]
        for path in gone:
            path.unlink(missing_ok=True)
        return gone

    def annotate(self, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into the manifest from the main process (a launched job's others wait until it is
        there, then read it); the manifest."""
        return ranks.on_main(lambda: self.write_manifest(**fields))

    def mark_complete(self) -> None:
        self.write_manifest(complete=True, counts=self.counts(), errors=self.unresolved_errors())

    # shards

    def shards(self) -> list[Path]:
        """Finished shards in order (rank 0's, then rank 1's, ...: one process's order, as `ranks.share` splits
        items); temporary files of an interrupted write are not among them."""
        return sorted(self.dir.glob(SHARD_GLOB), key=lambda s: (shard_rank(s), shard_index(s), s.name))

    def next_shard_index(self) -> int:
        """The index of this process's next shard (each rank numbers its own)."""
        mine = [shard_index(s) for s in self.shards() if shard_rank(s) == ranks.rank()]
        return max(mine, default=-1) + 1

    def write_shard(self, rows: list[dict[str, Any]], index: int | None = None) -> Path:
        """Write `rows` as this process's shard `index` (the next one by default), atomically (via `datasets`'
        Parquet writer): a shard of that index already there is replaced whole."""
        if not rows:
            raise ValueError("a shard needs at least one row")
        index = self.next_shard_index() if index is None else index
        import datasets

        path = self.dir / shard_name(index, ranks.rank())
        dataset = datasets.Dataset.from_list(rows)
        with quiet_datasets():
            write_atomic(path, dataset.to_parquet)
        return path

    def clean_temporary(self) -> list[Path]:
        """Remove leftovers of writes that were killed midway; only safe while nobody else writes."""
        leftovers = sorted(self.dir.glob(".*.tmp"))
        for path in leftovers:
            path.unlink(missing_ok=True)
        return leftovers

    def set_aside_damaged(self) -> list[Path]:
        """Move the shards that no longer parse aside (see `vlalign.data.shards`), so their records are made
        again; only while holding the stage's lock. Which items a damaged shard finished cannot be read either,
        so the done-items log goes too: every item is processed again, and what the other shards hold is
        kept, not written twice."""
        damaged = []
        for shard in self.shards():
            try:
                read_shard(shard)
            except CorruptShard:
                damaged.append(set_aside(shard))
        if damaged:
            for log in self._side_files(DONE_ITEMS):
                log.unlink()
        return damaged

    def done_ids(self) -> set[str]:
        ids: set[str] = set()
        for shard in self.shards():
            ids.update(read_shard(shard, columns=["id"]).column("id").to_pylist())
        return ids

    def done_items(self) -> set[str]:
        """Keys of the items a variable-output stage has finished (see `run_stage(per_item_output=False)`)."""
        return {key for path in self._side_files(DONE_ITEMS) for line in _json_lines(path) for key in line}

    def mark_items_done(self, keys: Sequence[str]) -> None:
        """Append `keys` to the done-items log; only ever after the shard holding their rows is in place."""
        if keys:
            with open(self._own_log(DONE_ITEMS), "a") as f:
                f.write(json.dumps(list(keys)) + "\n")

    def counts(self) -> dict[str, int]:
        """Records (each id once, as `dataset()` reads them) and shards."""
        return {"rows": len(self.done_ids()), "shards": len(self.shards())}

    def dataset(self) -> datasets.Dataset:
        """All rows of the stage as one `datasets.Dataset` (empty when nothing was written yet).

        Shards are read with pyarrow and concatenated with type promotion, so a column that was all None in
        one shard (null type) and filled in another reads as one typed column. Each record id is read once:
        see `vlalign.data.shards` for a shard that was copied or damaged after it was written.
        """
        import datasets

        parts = [(s, read_shard(s)) for s in self.shards()]
        if not parts:
            return datasets.Dataset.from_dict({})
        return datasets.Dataset(datasets.table.InMemoryTable(without_repeats(parts, self.dir)))

    def rows(self) -> list[dict[str, Any]]:
        return self.dataset().to_list()

    def records(self, cls: type[T]) -> list[T]:
        """The rows as record objects, e.g. `stage.records(PairRecord)`."""
        return [cls.from_row(row) for row in self.rows()]  # type: ignore[attr-defined]

    # errors

    def errors(self) -> list[dict[str, Any]]:
        """The error log, one entry per failed item and attempt."""
        return [e for path in self._side_files(ERRORS) for e in _json_lines(path)]

    def unresolved_errors(self) -> int:
        """How many logged failures have not been written since (a later run may have succeeded)."""
        done = self.done_ids() | self.done_items()
        failed = {_ids(e["id"]) for e in self.errors() if "id" in e}
        return sum(1 for ids in failed if not set(ids) <= done)

    def log_error(self, ids: str | Sequence[str], error: BaseException) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        ids = _ids(ids)
        entry = {"id": ids[0] if len(ids) == 1 else list(ids),
                 "error": redact_secrets(f"{type(error).__name__}: {error}"), "time": _now()}
        line = json.dumps(entry)
        with open(self._own_log(ERRORS), "a") as f:
            f.write(line + "\n")

    def adopt_legacy_logs(self) -> None:
        """Move the logs of a run made before the side files were renamed under their own names (appended in
        order); only while holding the stage's lock."""
        for name in (ERRORS, DONE_ITEMS):
            old = self.dir / LEGACY_NAMES[name]
            if old.exists():
                texts = [p.read_text() for p in (old, self.dir / name) if p.exists()]
                text = "".join(t if t.endswith("\n") or not t else t + "\n" for t in texts)
                write_atomic(self.dir / name, lambda tmp, text=text: Path(tmp).write_text(text))
                old.unlink()

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold the stage for one writer (`Busy` for a second one)."""
        return _exclusive(self.dir / LOCK, f"stage {self.dir}")


class RunStore:
    """A run directory: stages (nested folders allowed, e.g. `iter1/pairs`) and the images they all share."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        marker = self.root / RUN_MARKER
        if not marker.exists() and ranks.is_main():
            text = json.dumps({"created": _now(), "versions": package_versions()}, indent=1)
            write_atomic(marker, lambda tmp: Path(tmp).write_text(text))
        self.images = ImageStore(self.root)

    def stage(self, name: str) -> Stage:
        parts = name.replace("\\", "/").split("/")
        if not name or any(not p or p.startswith(".") for p in parts) or parts[0] == "images":
            raise ValueError(f"{name!r} cannot be a stage name: use folder names (a/b for nesting) that do not "
                             f"start with '.', and not 'images'")
        stage = Stage(self.root.joinpath(*parts), run_root=self.root)
        stage.dir.mkdir(parents=True, exist_ok=True)
        return stage

    def stages(self) -> list[Stage]:
        """Stages that hold a manifest or shards, in path order."""
        return [Stage(d, run_root=self.root) for d in stage_dirs(self.root)]

    def unfinished(self, under: str) -> list[str]:
        """The stages in folder `under` (e.g. `round2`) that are not finished: stopped midway, or holding
        failed items a resume asks again (see `Stage.settled`); their paths in the run."""
        folder = self.root / under
        return [str(s.dir.relative_to(self.root)) for s in self.stages()
                if s.dir.is_relative_to(folder) and not s.settled]

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the whole run for one process (`Busy` for a second one): training and saving happen outside
        any stage, so a second run on the same directory must stop before it starts, not when it meets a
        stage in use. Once held, what a killed writer left half-written outside the stages is removed."""
        with _exclusive(self.root / LOCK, f"the run directory {self.root}"):
            ranks.on_main(self.clean_temporary)
            yield

    def clean_temporary(self) -> list[Path]:
        """Remove the temporary files of writes a kill stopped midway, in the image store and beside the run's
        markers (each stage cleans its own folder); only while holding the run's lock."""
        leftovers = self.images.clean_temporary() + sorted(self.root.glob(".*.tmp"))
        for path in leftovers:
            path.unlink(missing_ok=True)
        return leftovers


def stage_dirs(root: str | Path) -> list[Path]:
    """Folders under `root` (nested too) that hold a stage manifest or shards, the image store left out."""
    root = Path(root)
    patterns = (MANIFEST, LEGACY_NAMES[MANIFEST], SHARD_GLOB)
    found = {p.parent for pattern in patterns for p in root.rglob(pattern)}
    return sorted(d for d in found if "images" not in d.relative_to(root).parts[:1])


@dataclass
class StageResult:
    """What one call of `run_stage` did: rows written now, items found done already, items that failed."""

    written: int
    already_done: int
    failed: int


RESUME_KEYS = ("config", "model", "seed")


def _check_resumable(stage: Stage, manifest: dict[str, Any] | None) -> None:
    """Refuse to add records to a stage made under another config, model or seed (as its manifest says)."""
    if not manifest or not stage.shards():
        return
    before = stage.manifest
    for key in RESUME_KEYS:
        old, new = before.get(key), redact(manifest.get(key))
        if old in (None, {}) or new is None or _canonical(old) == _canonical(new):
            continue
        raise ValueError(
            f"stage {stage.dir} was started with a different {key}, so resuming it would mix records of two "
            f"setups. Use a new run directory, or delete {stage.dir} to start the stage over.\n"
            f"  before: {_canonical(old)}\n  now:    {_canonical(new)}")


SYSTEMATIC = 5  # this many identical failures before any success stop a stage


class SystematicFailure(RuntimeError):
    """The first records of a stage all fail with the same error: the cause is the setup (a processor that
    cannot encode, a missing backend), not a record, so skipping every record would only hide it. Bad
    records fail with messages that name them, so they never look alike."""


class RecordErrors(Exception):
    """Raised by a stage's `process` when some items of its batch failed and the others did not: `rows` are
    the others' rows, `errors` maps the position in the batch of each failed item to its error. The stage
    keeps the rows and logs the failed items without processing the batch again item by item, as it does
    for any other exception (each item may have cost a paid API request)."""

    def __init__(self, rows: list[dict[str, Any]], errors: dict[int, BaseException]):
        super().__init__(f"{len(errors)} item(s) of the batch failed")
        self.rows, self.errors = rows, errors


def batch_result(rows: list[dict[str, Any]], errors: dict[int, BaseException]) -> list[dict[str, Any]]:
    """What a `process` returns when the items at the positions in `errors` failed: the rows, or (when any
    failed) `RecordErrors` carrying them."""
    if errors:
        raise RecordErrors(rows, errors)
    return rows


class _OpenShard:
    """The shards one `run_stage` call writes. The shard being filled is rewritten whole (atomically) after
    every batch, so a kill loses at most the batch in flight, and it is closed once it holds `size` rows, so
    shards come out as they would without the rewrites. With `split=False` (items of a varying number of
    rows) a shard closes only between batches, so no item's rows are split over two."""

    def __init__(self, stage: Stage, size: int, split: bool, counts: dict[str, int]):
        self.stage, self.size, self.split, self.counts = stage, size, split, counts
        self.rows: list[dict[str, Any]] = []
        self.index, self.on_disk, self.written = stage.next_shard_index(), False, 0

    def add(self, rows: list[dict[str, Any]], done_keys: Sequence[str]) -> None:
        """Put `rows` on disk, then log `done_keys` (the items whose rows are all there now) as done."""
        if rows:
            self.rows += rows
            while self.split and len(self.rows) >= self.size:
                self._write(self.rows[:self.size])
                del self.rows[:self.size]
                self._close()
            if self.rows:
                self._write(self.rows)
                if len(self.rows) >= self.size:
                    self.rows = []
                    self._close()
            self.written += len(rows)
            self.counts["rows"] += len(rows)
            if ranks.is_main():
                self.stage.write_manifest(counts=self.counts)
        self.stage.mark_items_done(done_keys)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        self.stage.write_shard(rows, self.index)
        if not self.on_disk:
            self.on_disk = True
            self.counts["shards"] += 1

    def _close(self) -> None:
        self.index, self.on_disk = self.index + 1, False


class _StageRun:
    """One `run_stage` call's batches: process each, retry a failed batch item by item, log what fails."""

    def __init__(self, stage: Stage, process: Callable, id_of: Callable, description: str, per_item_output: bool,
                 done: set[str], shards: _OpenShard):
        self.stage, self.process, self.id_of, self.description = stage, process, id_of, description
        self.per_item_output, self.done, self.shards = per_item_output, done, shards
        self.failed, self.succeeded = 0, False
        self.first_failures: list[BaseException] = []

    def attempt(self, batch: list) -> tuple[list[dict[str, Any]], list]:
        """(rows, the items that made them) of `batch`; failing items are logged and left out."""
        try:
            rows = self.process(batch)
        except SetupError:
            raise  # every record would fail the same way: the stage stops, keeping what it wrote
        except RecordErrors as e:
            ok = [it for i, it in enumerate(batch) if i not in e.errors]
            self.succeeded = self.succeeded or bool(ok)
            for i, error in sorted(e.errors.items()):
                self.fail(batch[i], error)
            return e.rows, ok
        except Exception as e:
            if len(batch) > 1:
                results = [self.attempt([item]) for item in batch]
                return [r for rows, _ in results for r in rows], [it for _, ok in results for it in ok]
            self.fail(batch[0], e)
            return [], []
        self.succeeded = True
        return rows, batch

    def fail(self, item: Any, error: BaseException) -> None:
        self.failed += 1
        ids = _ids(self.id_of(item))
        self.stage.log_error(ids, error)
        _stop_if_systematic(self.first_failures, self.succeeded, error, self.description, self.stage)
        warn(f"{self.description}: skipped record {', '.join(ids)}: {type(error).__name__}: {error} "
             f"(logged in {self.stage.dir / ERRORS})")

    def keep(self, rows: list[dict[str, Any]], ok: list) -> None:
        """Write the rows not written before; then the items are done."""
        new = []
        for row in rows:
            if "id" not in row:
                raise ValueError(f"{self.description}: process returned a row without an 'id': {sorted(row)}")
            if row["id"] not in self.done:
                self.done.add(row["id"])
                new.append(row)
        self.shards.add(new, [] if self.per_item_output else [self.id_of(it) for it in ok])


def _stop_if_systematic(failures: list[BaseException], succeeded: bool, error: BaseException, description: str,
                        stage: Stage) -> None:
    if succeeded:
        return
    failures.append(error)
    if len(failures) >= SYSTEMATIC and len({(type(f), str(f)) for f in failures}) == 1:
        raise SystematicFailure(
            f"{description}: the first {len(failures)} records all failed with {type(error).__name__}, so the "
            f"stage stops (the cause is the setup, not a record): {error} (every failure is in "
            f"{stage.dir / ERRORS})") from error


def _prepare(stage: Stage, manifest: dict[str, Any] | None, derived_from: Sequence[Stage]) -> None:
    """Under the stage's lock, before anything is read (by the main process alone, while the others wait):
    refuse another setup, clear what a kill or a hand left behind (temporary files, damaged shards, logs
    under their older names), start a stage made from stages that have changed since over, record the setup."""
    _check_resumable(stage, manifest)
    stage.clean_temporary()
    stage.adopt_legacy_logs()
    stage.set_aside_damaged()
    inputs = {str(s.dir.relative_to(s.run_root)) if s.dir.is_relative_to(s.run_root) else str(s.dir): s.fingerprint()
              for s in derived_from}
    if inputs and stage.manifest.get("inputs") not in (None, inputs):
        stage.clear()  # made from what its inputs held before: every record of it is made again
    stage.write_manifest(**(manifest or {}), **({"inputs": inputs} if inputs else {}), complete=False,
                         counts=stage.counts())


def _pending(stage: Stage, items: list[T], id_of: Callable, per_item_output: bool) -> tuple[list[T], set[str]]:
    """(the items not done yet, the ids written), read from every process's shards and logs."""
    done = stage.done_ids()
    if per_item_output:
        return [it for it in items if not set(_ids(id_of(it))) <= done], done
    finished = stage.done_items()
    return [it for it in items if id_of(it) not in finished], done


def run_stage(stage: Stage, items: Iterable[T], process: Callable[[list[T]], list[dict[str, Any]]], *,
              id_of: Callable[[T], str | Sequence[str]], batch_size: int = 8, shard_size: int = 256,
              description: str | None = None, manifest: dict[str, Any] | None = None,
              per_item_output: bool = True, quiet: bool = False, meters: Sequence[Any] = (),
              derived_from: Sequence[Stage] = ()) -> StageResult:
    """Run `process` over the items not yet done and write its rows to `stage`, resumably.

    `process(batch)` returns rows (dicts with a stable `id`). With `per_item_output` (the default),
    `id_of(item)` names the record(s) the item produces and an item is done when all of them are in a shard.
    When an item yields a varying number of rows (0, 1 or more: pairs per prompt), pass
    `per_item_output=False`: `id_of(item)` is then the item's own key, and the keys of finished items are
    logged (.done_items.jsonl) after the shard holding their rows is in place.

    Every batch's rows are on disk before the next batch starts, so a kill loses at most one batch. When
    `process` raises, the batch is retried item by item (or, for `RecordErrors`, only the items it names
    fail); each failing item is logged to .errors.jsonl, counted in the manifest and reported in one line,
    and the run goes on. An id already written is never written again. `manifest` fields (config, model,
    seed) are recorded; resuming under another config, model or seed is refused.

    Under a launcher every process calls this with the same items and works on its share of those not done;
    the stage is complete when all are, and the result counts every process's rows and failures.

    `derived_from` names the stages this one is made from as a whole (pairs from all of a prompt's scored
    answers): what they hold is recorded, and when a resume finds it changed (an item that had failed was
    answered at last) the stage is made again from scratch rather than kept half from the old inputs.

    `meters` count what the backends `process` asks spent (requests, failures, retries, tokens: e.g.
    `vlalign.stages.UsageMeter`): each records into the manifest after every batch (`record()`), so a kill
    loses none of it, and once more with every process's share when the stage is done (`settle()`).
    """
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be at least 1 (got {batch_size}, {shard_size})")
    description = description or stage.name
    items = list(items)
    with stage.lock():
        ranks.on_main(lambda: _prepare(stage, manifest, derived_from))
        pending, done = _pending(stage, items, id_of, per_item_output)
        shards = _OpenShard(stage, shard_size, per_item_output, {"rows": len(done), "shards": len(stage.shards())})
        ranks.barrier()  # every process has read what is done before any writes more
        mine = ranks.share(pending)
        run = _StageRun(stage, process, id_of, description, per_item_output, done, shards)
        with progress(description, total=len(items) - len(pending) + len(mine), disable=quiet) as bar:
            bar.advance(len(items) - len(pending))
            for start in range(0, len(mine), batch_size):
                batch = mine[start:start + batch_size]
                run.keep(*run.attempt(batch))
                for meter in meters:
                    meter.record()
                bar.advance(len(batch))
        for meter in meters:
            meter.settle()
        written, failed = map(sum, zip(*ranks.gather([(run.shards.written, run.failed)]), strict=True))
        ranks.on_main(stage.mark_complete)
    return StageResult(written=written, already_done=len(items) - len(pending), failed=failed)


PAIR_COLUMNS = ("chosen", "rejected")


def _shard_dirs(src: Path) -> list[Path]:
    """`src` itself when it is a stage with shards, else the stages with shards under it (nested too)."""
    if any(src.glob(SHARD_GLOB)):
        return [src]
    return [d for d in stage_dirs(src) if any(d.glob(SHARD_GLOB))]


def _holds_pairs(stage_dir: Path) -> bool:
    columns = set(shard_columns(sorted(stage_dir.glob(SHARD_GLOB))[0]))
    return set(PAIR_COLUMNS) <= columns


def find_pair_stages(src: str | Path) -> list[Path]:
    """Stage folders under `src` (a run folder, or one stage folder) whose rows are preference pairs."""
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src} does not exist; pass a run directory or one of its stage directories")
    if not src.is_dir():
        raise NotADirectoryError(f"{src} is a file; pass a run directory or one of its stage directories")
    return [d for d in _shard_dirs(src) if _holds_pairs(d)]


def no_pairs_error(src: Path) -> ValueError:
    stages = [str(d.relative_to(src)) for d in _shard_dirs(src)]
    seen = f"the stages there ({', '.join(stages)}) hold other records" if stages else "no stage there has rows yet"
    return ValueError(
        f"no preference pairs found under {src}: looked for stage directories (shard-*.parquet) whose rows "
        f"have 'chosen' and 'rejected' columns, in {src} itself and in the folders below it, but {seen}. "
        f"Pass a run directory after its pairs stage has run, or that stage's directory.")
