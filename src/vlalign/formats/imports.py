"""Import released preference data into a run directory, ready to train on or to export.

- `rlaif-v`: the RLAIF-V-Dataset parquet files (`ds_name`, `image` {bytes, path}, `question`, `chosen`,
  `rejected`, `origin_dataset`, `origin_split`, `idx`, `image_path`), or the same records as JSON / JSON
  lines (image bytes base64-encoded); the kind of each file is read from its first bytes, not its name.
- `povid`: POVID's JSON (a list, or JSON lines) of `id`, `image` (a file under the images folder),
  `conversations` and `rejected_conversations` (human turn with `<image>`, then the gpt turn).
- `vlfeedback`: VLFeedback records (`id`, `prompt`, `models`, `img_path`, `completions` with `model`,
  `response` and `annotations` of three aspects, each `{Rating, Rationale}`, ratings as strings); the
  responses and their ratings are stored, and pairs are built with VLFeedback's rule. A rating is a whole
  number from 1 to 5, the scale VLFeedback's annotator rated on; anything else ("N/A", "4.5", "7") is stored
  as missing, and each missing rating is logged (the feedback stage's error log, with the record, the
  completion and the value) and counted (`missing_ratings` in that stage's manifest).

Every record is checked before anything of it is stored: text fields must be non-empty strings of valid
UTF-8 (at most `MAX_TEXT` characters), a POVID turn's value must be text, `completions` a non-empty list of
completions, an id unique in the file (a second record with the same id is skipped, whether it repeats the
first or contradicts it). Image paths stay inside the images folder (`--images`, else the data file's own
folder) unless `allow_outside=True`, and only regular files are opened (a FIFO would hang the import).
A record that fails any check, or whose image is missing or unreadable, is skipped: logged once in the
error log (.errors.jsonl) of the stage that read it, with its position and the reason, and counted; the rest is
imported. A VLFeedback completion that fails its checks is skipped alone, logged at its position; its
record keeps the others. The returned stage's manifest says how many were skipped under `import` (`records`,
`skipped`, `unreadable`, VLFeedback's `completions_skipped` and `ratings_missing`, `errors`: the log that
lists them). Files may start with a UTF-8 byte-order mark. What cannot be read (not JSON, nested deeper
than a JSON reader follows, a Parquet file or row group that does not read) is skipped and logged like a bad
record, with how much of the file it takes with it (a JSON list cut short imports the records before the
cut); a source from which no record can be read at all is refused (`UnreadableSource`, naming each file and
why). An import into a run directory that holds one continues it only from the same data: the source
files' checksums are recorded, and changed data is refused, naming what changed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from vlalign import ranks
from vlalign.checksums import difference, file_sum, read_sums, sums_json
from vlalign.data.images import decode_image, image_value
from vlalign.data.records import PairRecord, ResponseRecord, stable_id
from vlalign.data.store import ERRORS, RunStore, Stage, StageResult, run_stage
from vlalign.feedback.pairs import PairRules
from vlalign.feedback.ratings import ASPECTS
from vlalign.progress import warn

MAX_TEXT = 1_000_000  # characters in one text field: far beyond any real answer, short of a broken file
MAX_IMAGE_BYTES = 256 * 2 ** 20
PARQUET_MAGIC = b"PAR1"


class BadRecord(ValueError):
    """A record that cannot be imported; the message names its position, what is wrong and the fix."""


class Unreadable(BadRecord):
    """Part of a file that gives no record at all: bytes that are not JSON (or nested deeper than a JSON reader
    follows), a Parquet file or row group that does not read, a JSON value that is not an object. Skipped and
    logged like a bad record while the rest of its source reads; a source that gives no record is refused."""


class UnreadableSource(ValueError):
    """A source from which no record can be read at all; the message names each file and why."""


# ---------------------------------------------------------------- reading source files


def _regular_file(path: Path) -> None:
    """Refuse what is not a plain file (a FIFO or device would block the import for ever)."""
    if not stat.S_ISREG(path.stat().st_mode):
        raise ValueError(f"{path} is not a regular file; pass a data file (or, for rlaif-v, a folder of them)")


def _read_text(path: Path) -> str:
    """The file as text, without a byte-order mark; bytes that are not UTF-8 are kept as lone surrogates,
    so the record holding them is rejected by `_text` while the others are read."""
    _regular_file(path)
    text = path.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    if not text.strip():
        raise ValueError(f"{path} is empty")
    return text


def _position(text: str, pos: int) -> str:
    return f"line {text.count(chr(10), 0, pos) + 1} column {pos - text.rfind(chr(10), 0, pos)}"


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _array_records(text: str, name: str) -> Iterator[tuple[int, Any]]:
    """The items of a JSON list one at a time, so a list cut short or broken midway still gives the records
    before the break, and then one error that says where it broke."""
    decoder, pos, i = json.JSONDecoder(), _skip_space(text, text.index("[") + 1), 0
    if text.startswith("]", pos):
        return
    while True:
        i += 1
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            yield i, Unreadable(f"{name} record {i}: not valid JSON at {_position(text, e.pos)} ({e.msg}); the "
                                f"records after it cannot be read either ({_rest(text, e.pos)}): repair the file "
                                f"there (is it truncated?)")
            return
        except RecursionError:
            yield i, Unreadable(f"{name} record {i}: nested deeper than a JSON reader follows, at "
                                f"{_position(text, pos)}; the records after it cannot be read either "
                                f"({_rest(text, pos)}): repair the file there")
            return
        yield i, value
        pos = _skip_space(text, pos)
        if text.startswith(",", pos):
            pos = _skip_space(text, pos + 1)
            continue
        if text.startswith("]", pos) and not text[pos + 1:].strip():
            return
        what = "the file ends before the list is closed" if pos >= len(text) else \
            f"unexpected text at {_position(text, pos)}"
        yield i + 1, Unreadable(f"{name} after record {i}: {what} ({_rest(text, pos)}); repair the file (is it "
                                f"truncated?)")
        return


def _rest(text: str, pos: int) -> str:
    """How much of a file is left unread from `pos` on."""
    return f"{len(text) - pos:,} of its {len(text):,} characters unread"


def _line_records(text: str, name: str) -> Iterator[tuple[int, Any]]:
    for i, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                yield i, Unreadable(f"{name} line {i}: not valid JSON ({e.msg} at column {e.colno})")
            except RecursionError:
                yield i, Unreadable(f"{name} line {i}: nested deeper than a JSON reader follows; not a record")


class _Whole(dict):
    """A file that is one JSON object: imported when it is a record itself, else the file is not data."""


Read = tuple[Path, str, Any]  # (file, position, a record or the Unreadable in its place)


def _json_records(path: Path) -> Iterator[Read]:
    """(file, position, record) of a JSON list, one JSON object, or JSON lines; positions are 1-based indices
    (a list) or lines (JSON lines). An unreadable record is an exception in place of the record."""
    text = _read_text(path)
    start = text.lstrip()
    if start.startswith("["):
        records = _array_records(text, path.name)
    elif start.startswith("{") and _one_object(text):
        records = iter([(1, _Whole(json.loads(text)))])
    else:
        records = _line_records(text, path.name)
    for i, record in records:
        yield path, f"{path.name} record {i}", record


def _one_object(text: str) -> bool:
    """Whether the whole text is a single (pretty-printed) JSON object rather than JSON lines."""
    try:
        return isinstance(json.loads(text), dict)
    except (json.JSONDecodeError, RecursionError):
        return False


@dataclass(frozen=True)
class _At:
    """Where a Parquet record is, so the import keeps only this between checking it and storing its batch."""

    path: Path
    group: int
    row: int

    def read(self) -> dict:
        return _row_group(self.path, self.group)[self.row]


@functools.lru_cache(maxsize=1)
def _row_group(path: Path, group: int) -> list[dict]:
    """One row group's records (batches are stored in file order, so each group is read once more)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).read_row_group(group).to_pylist()


class _Row(dict):
    """A Parquet record that knows where it is (`at`): once checked, it is kept as `_Reread`, without its
    text and image bytes, and read again when its batch is stored."""

    at: _At


@dataclass(frozen=True)
class _Reread:
    key: str
    at: _At


def _fingerprint(checked: Any) -> str:
    """Equal checked records, equal fingerprints: what a repeated id is compared by, without keeping the first."""
    return hashlib.sha256(repr(checked).encode("utf-8", "surrogatepass")).hexdigest()


def _parquet_rows(path: Path) -> Iterator[Read]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        yield path, path.name, Unreadable(f"{path}: not a readable Parquet file ({e}); none of its records can be "
                                          f"read: replace it with a complete copy")
        return
    for g in range(parquet.num_row_groups):
        try:
            rows = parquet.read_row_group(g).to_pylist()
        except (pa.ArrowException, OSError) as e:
            lost = parquet.metadata.row_group(g).num_rows
            yield path, f"{path.name} group {g}", Unreadable(f"{path} row group {g} cannot be read ({e}); its "
                                                             f"{lost:,} records are lost")
            continue
        for i, row in enumerate(rows):
            record = _Row(row)
            record.at = _At(path, g, i)
            yield path, f"{path.name} group {g} row {i}", record


def _file_kind(path: Path) -> str:
    """'parquet' or 'json', from the file's first bytes."""
    _regular_file(path)
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    if head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] in (b"[", b"{"):
        return "json"
    raise ValueError(f"{path} is neither Parquet (RLAIF-V-Dataset's files, which begin with 'PAR1') nor JSON / "
                     f"JSON lines; pass the dataset's .parquet files, or the same records as JSON")


def _data_files(src: Path) -> list[Path]:
    """The data files of a source (a file, or for rlaif-v a folder of them), each a regular file."""
    files = sorted(p for p in src.rglob("*") if p.suffix in (".parquet", ".json", ".jsonl")) if src.is_dir() else [src]
    if not files:
        raise FileNotFoundError(f"no .parquet, .json or .jsonl files under {src}")
    for f in files:
        _regular_file(f)
    return files


def _rlaif_v_records(src: Path) -> Iterator[Read]:
    for f in _data_files(src):
        yield from _parquet_rows(f) if _file_kind(f) == "parquet" else _json_records(f)


# ---------------------------------------------------------------- field checks


def _object(record: Any, where: str) -> dict:
    if isinstance(record, Exception):
        raise record
    if not isinstance(record, dict):
        raise Unreadable(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def _storable_text(value: str, where: str, name: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRecord(f"{where}: field {name!r} holds bytes that are not valid UTF-8 text; re-encode the file "
                        f"as UTF-8") from None
    return value


def _text(record: dict, key: str, where: str, required: bool = True, name: str | None = None) -> str:
    """A text field: a non-empty string of valid UTF-8 within `MAX_TEXT` (or "" when optional and absent)."""
    name = name or key
    value = record.get(key)
    if value is None and not required:
        return ""
    if value is None:
        raise BadRecord(f"{where}: missing field(s) {name}")
    if not isinstance(value, str):
        raise BadRecord(f"{where}: field {name!r} must be text, got {type(value).__name__} {_short(value)}")
    if required and not value.strip():
        raise BadRecord(f"{where}: field {name!r} is empty")
    if len(value) > MAX_TEXT:
        raise BadRecord(f"{where}: field {name!r} is {len(value):,} characters long, over the {MAX_TEXT:,} an "
                        f"import accepts; is the file intact?")
    return _storable_text(value, where, name)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _record_id(record: dict, where: str) -> str | None:
    """The record's own id (text or a whole number), or None when it has none."""
    value = record.get("id")
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadRecord(f"{where}: field 'id' must be text or a whole number, got {type(value).__name__} "
                        f"{_short(value)}")
    return _storable_text(str(value), where, "id")


def _meta(values: dict, where: str) -> dict:
    """Metadata as the record stores it (JSON text): JSON values whose text is valid UTF-8."""
    try:
        json.dumps(values, sort_keys=True, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRecord(f"{where}: a metadata field holds bytes that are not valid UTF-8 text") from None
    except (TypeError, ValueError) as e:
        raise BadRecord(f"{where}: a metadata field cannot be stored as JSON ({e})") from None
    return values


def _image_value(value: Any, where: str, name: str) -> bytes | str:
    """Image bytes ({bytes, path} as in parquet, base64 text in JSON) or a path, checked for its type."""
    found = image_value(value, where, name, error=BadRecord)
    return found if isinstance(found, bytes) else _storable_text(found, where, name)


def _require(record: dict, keys: tuple[str, ...], where: str) -> None:
    """All the fields a format needs are there, or one error naming every missing one."""
    missing = [k for k in keys if record.get(k) in (None, "")]
    if missing:
        raise BadRecord(f"{where}: missing field(s) {', '.join(missing)}")


def _distinct(where: str, chosen: str, rejected: str) -> None:
    if chosen.strip() == rejected.strip():
        raise BadRecord(f"{where}: the chosen and rejected answers are the same text, which teaches nothing")


# ---------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageFolder:
    """Where a data file's image paths point: inside `root` (the folder the user named, else the data file's
    own), never elsewhere unless `allow_outside`; and only regular files, read without blocking."""

    root: Path
    allow_outside: bool = False

    def open(self, value: bytes | str, where: str) -> Image.Image:
        if isinstance(value, bytes):
            return _decode(value, where, "the image bytes")
        path = self._resolve(value, where)
        return _decode(_read_regular(path, where), where, str(path))

    def _resolve(self, name: str, where: str) -> Path:
        path = Path(name)
        full = (path if path.is_absolute() else self.root / path).resolve()
        if not self.allow_outside and not full.is_relative_to(self.root.resolve()):
            raise BadRecord(f"{where}: image {name!r} lies outside {self.root}; image paths in a data file must "
                            f"stay inside the images folder (--images), or import with allow_outside=True")
        return full


def _read_regular(path: Path, where: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise BadRecord(f"{where}: image {path} does not exist; pass the folder that holds the images with "
                        f"--images") from None
    except OSError as e:
        raise BadRecord(f"{where}: image {path} cannot be opened ({e.strerror})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_IMAGE_BYTES:
        os.close(fd)
        what = "is not a regular file (a folder, FIFO or device)" if not stat.S_ISREG(info.st_mode) else \
            f"is {info.st_size:,} bytes, over the {MAX_IMAGE_BYTES:,} an import reads"
        raise BadRecord(f"{where}: image {path} {what}; point the record at an image file")
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _decode(data: bytes, where: str, what: str) -> Image.Image:
    return decode_image(data, where, what, error=BadRecord)


# ---------------------------------------------------------------- records of each format


@dataclass(frozen=True)
class _Pair:
    """A checked preference pair (POVID, RLAIF-V). `key` must be unique in the import."""

    key: str
    id: str
    prompt_id: str
    image: bytes | str
    question: str
    chosen: str
    rejected: str
    method: str
    meta: dict

    def row(self, image: str) -> dict:
        return PairRecord(id=self.id, prompt_id=self.prompt_id, image=image, instruction=self.question,
                          chosen=self.chosen, rejected=self.rejected, method=self.method, meta=self.meta).to_row()


def _rlaif_v_pair(record: Any, where: str) -> _Pair:
    r = _object(record, where)
    _require(r, ("question", "chosen", "rejected"), where)
    question, chosen, rejected = (_text(r, k, where) for k in ("question", "chosen", "rejected"))
    _distinct(where, chosen, rejected)
    image = _image_value(r.get("image") or r.get("image_path"), where, "image")
    meta = _meta({k: r.get(k) for k in ("ds_name", "origin_dataset", "origin_split", "idx", "image_path")}, where)
    pid = stable_id("rlaif-v", r.get("ds_name"), r.get("idx"), r.get("image_path"), question)
    pair_id = stable_id("rlaif-v-pair", pid, chosen, rejected)
    return _Pair(pair_id, pair_id, pid, image, question, chosen, rejected, "rlaif_v", meta)


def _turn(record: dict, conversation: str, speaker: str, where: str) -> str:
    turns = record.get(conversation)
    if not isinstance(turns, list) or not turns:
        raise BadRecord(f"{where}: field {conversation!r} must be a non-empty list of turns")
    for k, turn in enumerate(turns):
        if isinstance(turn, dict) and turn.get("from") == speaker:
            return _text(turn, "value", where, name=f"{conversation}[{k}].value")
    raise BadRecord(f"{where}: no '{speaker}' turn in {conversation!r}")


def _povid_pair(record: Any, where: str) -> _Pair:
    r = _object(record, where)
    _require(r, ("image", "conversations", "rejected_conversations"), where)
    image = _text(r, "image", where)
    question = _turn(r, "conversations", "human", where).replace("<image>", "").strip()
    if not question:
        raise BadRecord(f"{where}: the human turn of 'conversations' asks nothing (only '<image>')")
    chosen = _turn(r, "conversations", "gpt", where)
    rejected = _turn(r, "rejected_conversations", "gpt", where)
    _distinct(where, chosen, rejected)
    own = _record_id(r, where)
    pid = own or stable_id("povid", image, question)
    pair_id = stable_id("povid-pair", pid, chosen, rejected)
    return _Pair(own or pair_id, pair_id, pid, image, question, chosen, rejected, "povid", {"image_file": image})


@dataclass(frozen=True)
class _Completion:
    """A checked completion; `unread` says which of its ratings are stored as missing, and why."""

    model: str
    response: str
    ratings: dict
    rationales: dict
    unread: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Prompt:
    """A checked VLFeedback record: one instruction and image with its usable completions (by their position in
    the record, which names their responses), and the broken ones left out (position, why)."""

    key: str
    image: str
    instruction: str
    completions: tuple[tuple[int, _Completion], ...]
    dropped: tuple[tuple[int, str], ...] = ()


def parse_rating(value: Any) -> int | None:
    """A 1-5 rating from VLFeedback's string form ("4") or a whole number; anything else ("N/A", "4.5", 7,
    missing) is None: a missing rating, never a guessed one."""
    from vlalign.feedback.vlfeedback import rating_value

    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    token = str(value).strip()
    return rating_value(token) if len(token.split()) == 1 else None


def _annotations(completion: dict, where: str) -> tuple[dict, dict, tuple[str, ...]]:
    """(ratings, rationales, why each rating that is missing is missing). VLFeedback's annotator rated each
    aspect 1 to 5, stored as text ("4"); its own pair script skips a pair whose rating is no number ("N/A").
    Here a rating is a whole number from 1 to 5; anything else is stored as missing, and said so."""
    notes = completion.get("annotations") or {}
    if not isinstance(notes, dict):
        raise BadRecord(f"{where}: 'annotations' must be an object of aspects, got {type(notes).__name__}")
    ratings, rationales, unread = {}, {}, []
    for aspect in ASPECTS:
        note = notes.get(aspect) or {}
        if not isinstance(note, dict):
            raise BadRecord(f"{where}: annotation {aspect!r} must be an object with Rating and Rationale")
        value = note.get("Rating")
        ratings[aspect] = parse_rating(value)
        if ratings[aspect] is None:
            unread.append(f"no {aspect} Rating" if value in (None, "") else
                          f"{aspect} Rating {_short(value)} is not a whole number from 1 to 5")
        rationales[aspect] = _text(note, "Rationale", where, required=False, name=f"{aspect}.Rationale") or None
    return ratings, rationales, tuple(unread)


def _completion(value: Any, where: str) -> _Completion:
    if not isinstance(value, dict):
        raise BadRecord(f"{where}: expected a completion object, got {type(value).__name__} {_short(value)}")
    return _Completion(_text(value, "model", where, required=False), _text(value, "response", where),
                       *_annotations(value, where))


def _vlfeedback_prompt(record: Any, where: str) -> _Prompt:
    r = _object(record, where)
    _require(r, ("prompt", "img_path", "completions"), where)
    instruction, image = _text(r, "prompt", where), _text(r, "img_path", where)
    completions = r["completions"]
    if not isinstance(completions, list) or not completions:
        raise BadRecord(f"{where}: 'completions' must be a non-empty list of completions, got "
                        f"{type(completions).__name__} {_short(completions)}")
    kept, dropped = [], []
    for k, c in enumerate(completions):  # a broken completion goes alone; the others keep their ratings
        try:
            kept.append((k, _completion(c, f"completion {k}")))
        except BadRecord as e:
            dropped.append((k, str(e)))
    if not kept:
        raise BadRecord(f"{where}: no completion can be imported: {'; '.join(why for _, why in dropped)}")
    return _Prompt(_record_id(r, where) or stable_id("vlfeedback", image, instruction), image, instruction,
                   tuple(kept), tuple(dropped))


# ---------------------------------------------------------------- checking a whole file


Checked = tuple[str, Any]  # (position, a checked record or the BadRecord that says why it is skipped)


def _check(records: Iterator[Read], check: Callable[[Any, str], Any], src: Path) -> list[Checked]:
    """Every record checked, and each key kept by its first record: a later one with the same key is
    skipped (it repeats the first or contradicts it; keeping either silently would be a guess). Records
    that failed come first, so the batches of good records are never redone for a bad one. A source that
    gives no record at all (every file unreadable, or not data of the format) is `UnreadableSource`."""
    out: list[Checked] = []
    first: dict[str, tuple[str, str]] = {}
    unread: dict[Path, list[str]] = {}
    readable = 0
    for path, where, record in records:
        unread.setdefault(path, [])
        try:
            checked = check(record, where)
        except BadRecord as e:
            if isinstance(record, _Whole) and not isinstance(e, Unreadable):
                e = Unreadable(f"{where}: the file is one JSON object, not a list of records, and the object is no "
                               f"record either ({e})")
            if isinstance(e, Unreadable):
                unread[path].append(str(e))
            else:
                readable += 1
            out.append((where, e))
            continue
        except RecursionError:  # parsed, but too deep for the checks (a field nested hundreds of levels)
            readable += 1
            out.append((where, BadRecord(f"{where}: a field is nested too deeply to be checked; not a record")))
            continue
        readable += 1
        if checked.key in first:
            seen_where, seen = first[checked.key]
            how = "repeats" if seen == _fingerprint(checked) else "has the same id as, but different content from,"
            out.append((where, BadRecord(f"{where}: {how} {seen_where} (id {checked.key!r}); give every record "
                                         f"its own id, or remove the copy")))
            continue
        first[checked.key] = (where, _fingerprint(checked))
        out.append((where, _Reread(checked.key, record.at) if isinstance(record, _Row) else checked))
    if not readable:
        raise _nothing_read(src, unread)
    return sorted(out, key=lambda item: not isinstance(item[1], BadRecord))


def _nothing_read(src: Path, unread: dict[Path, list[str]]) -> UnreadableSource:
    if not unread:
        return UnreadableSource(f"{src} holds no records (an empty list?); nothing was imported")
    why = [f"{reasons[0] if reasons else f'{path.name}: no records'}{_not_utf8(path)}" for path, reasons in unread.items()]
    return UnreadableSource(f"no record can be read from {src}, so nothing was imported: {'; '.join(why)}")


def _not_utf8(path: Path) -> str:
    """Why a JSON file that gave no record may not read: its bytes are not UTF-8 (an encoding it was saved in)."""
    data = path.read_bytes()
    if data.startswith(PARQUET_MAGIC):
        return ""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return f" (the file is not UTF-8 text: byte {e.start:,} is {data[e.start]:#04x}; save it as UTF-8)"
    return ""


def _unreadable(records: list[Checked]) -> int:
    return sum(isinstance(item[1], Unreadable) for item in records)


def _usable(item: Checked, check: Callable[[Any, str], Any] | None = None) -> Any:
    """The checked record of `item` (read again, and checked with `check`, when only its place was kept)."""
    if isinstance(item[1], Exception):
        raise item[1]
    return check(item[1].at.read(), item[0]) if isinstance(item[1], _Reread) and check else item[1]


def _run(stage: Stage, items: list[Checked], process: Callable[[list[Checked]], list[dict]], what: str,
         manifest: dict) -> StageResult:
    return run_stage(stage, items, process, id_of=lambda item: item[0], per_item_output=False, batch_size=64,
                     description=what, manifest=manifest)


def _record_import(stage: Stage, records: list[Checked], result: StageResult, log: Stage, **counts: int) -> None:
    """The import's own count in the manifest of the stage it returns: skipped records are counted once, in
    the stage that read them (`errors`), which for VLFeedback is not the pairs stage; `unreadable` of them
    gave no record at all (what follows a break in a JSON list is lost with it); `counts` adds the format's
    own (VLFeedback's skipped completions and missing ratings)."""
    stage.annotate(**{"import": {"records": len(records), "skipped": result.failed, "unreadable": _unreadable(records),
                                 **counts, "errors": str(log.dir / ERRORS)}})


def import_summary(stage: Stage) -> str:
    """What an import did, in one line: pairs, and everything it skipped or could not read, with where the log is."""
    report = stage.manifest.get("import", {})
    parts = [f"imported {stage.counts()['rows']} pairs into {stage.dir}", f"{report.get('skipped', 0)} records skipped"]
    if report.get("unreadable"):
        parts.append(f"{report['unreadable']} of them unreadable (what follows a break in a file is lost with it)")
    if report.get("completions_skipped"):
        parts.append(f"{report['completions_skipped']} broken completions skipped (their records kept)")
    if report.get("ratings_missing"):
        parts.append(f"{report['ratings_missing']} ratings missing or unreadable (stored as missing; see the "
                     f"feedback stage's error log)")
    return "; ".join(parts) + f" (see {report.get('errors', stage.dir / ERRORS)})"


def _folder(images: str | Path | None, src: Path, allow_outside: bool) -> ImageFolder:
    return ImageFolder(Path(images) if images is not None else (src if src.is_dir() else src.parent), allow_outside)


def _same_source(src: Path, first: Stage, stages: list[Stage]) -> None:
    """An import into a run directory that holds one already continues it only from the same data: the source
    files' checksums are recorded in the first stage's manifest when it starts, and a later import from files
    that differ (edited, added, removed) is refused, naming what changed. Hashing reads the data once more on
    the first import; a later one hashes only the files whose modification time changed."""
    files = {(f.relative_to(src).as_posix() if src.is_dir() else f.name): f for f in _data_files(src)}
    recorded = first.manifest.get("source")
    if recorded is None or not first.shards():
        first.annotate(source=sums_json({name: file_sum(f) for name, f in files.items()}))
        return
    try:
        sums = read_sums(recorded)
    except ValueError:
        sums = {}
    changed = ([f"{name} is new" for name in files if name not in sums]
               + [f"{name} is gone" for name in sums if name not in files]
               + [d for name, s in sums.items() if name in files and (d := difference(files[name], s)) is not None])
    if changed:
        raise ValueError(f"{first.run_root} holds an import of other data than {src} holds now ({'; '.join(changed)}), "
                         f"and records of both would mix. Import the new data into a new --out, or delete "
                         f"{', '.join(str(s.dir) for s in stages)} to import it here again")


def _import_pairs(src: Path, out: str | Path, images: ImageFolder, check: Callable[[Any, str], _Pair],
                  records: Callable[[Path], Iterator[Read]], format: str) -> Stage:
    store = RunStore(out)
    stage = store.stage("pairs")
    _same_source(src, stage, [stage])
    items = _check(records(src), check, src)

    def process(batch: list[Checked]) -> list[dict]:
        rows = []
        for item in batch:
            pair = _usable(item, check)
            rows.append(pair.row(store.images.put(images.open(pair.image, item[0]))))
        return rows

    try:
        result = _run(stage, items, process, f"import {format}", {"config": {"format": format, "src": str(src)}})
    finally:
        _row_group.cache_clear()
    _record_import(stage, items, result, stage)
    return stage


def import_rlaif_v(src: str | Path, out: str | Path, images: str | Path | None = None,
                   allow_outside: bool = False) -> Stage:
    src = Path(src)
    return _import_pairs(src, out, _folder(images, src, allow_outside), _rlaif_v_pair, _rlaif_v_records, "rlaif-v")


def import_povid(src: str | Path, out: str | Path, images: str | Path | None = None,
                 allow_outside: bool = False) -> Stage:
    src = Path(src)
    return _import_pairs(src, out, _folder(images, src, allow_outside), _povid_pair, _json_records, "povid")


def import_vlfeedback(src: str | Path, out: str | Path, images: str | Path | None = None,
                      rules: PairRules | None = None, aspect: str | None = None, allow_outside: bool = False) -> Stage:
    """Responses into `responses`, their ratings into `feedback`, pairs into `pairs` (VLFeedback's rule:
    every two responses of a prompt with different mean ratings; `aspect` pairs by one aspect instead).
    Records are checked, and their images read, in the responses stage; only those it stored get feedback."""
    from vlalign.feedback.ratings import rating_feedback, rating_score, vlfeedback_rules
    from vlalign.stages.pairs import pair_stage
    from vlalign.stages.ratings import record_missing_ratings

    score = rating_score(aspect)  # an unknown aspect is refused before anything is written
    store, src = RunStore(out), Path(src)
    folder = _folder(images, src, allow_outside)
    read, rated = store.stage("responses"), store.stage("feedback")
    _same_source(src, read, [read, rated, store.stage("pairs")])
    records = _check(_json_records(src), _vlfeedback_prompt, src)
    manifest = {"config": {"format": "vlfeedback", "src": str(src)}}

    def responses(batch: list[Checked]) -> list[dict]:
        rows = []
        for item in batch:
            p = _usable(item)
            image = store.images.put(folder.open(p.image, item[0]))
            rows += [ResponseRecord(id=f"{p.key}/{k}", prompt_id=p.key, image=image, instruction=p.instruction,
                                    response=c.response, model=c.model).to_row() for k, c in p.completions]
        return rows

    def feedback(batch: list[Checked]) -> list[dict]:
        return [rating_feedback(f"{p.key}/{k}", p.key, c.ratings, c.rationales, judge="vlfeedback",
                                error=f"{where} completion {k}: {'; '.join(c.unread)}" if c.unread else None)
                for where, p in ((item[0], _usable(item)) for item in batch) for k, c in p.completions]

    dropped = ranks.on_main(lambda: _log_dropped(read, records))
    result = _run(read, records, responses, "import vlfeedback responses", manifest)
    stored = read.done_items()
    _run(rated, [it for it in records if it[0] in stored], feedback, "import vlfeedback feedback", manifest)
    missing = ranks.on_main(lambda: record_missing_ratings(rated, "import vlfeedback"))
    pairs = pair_stage(read, rated, store.stage("pairs"), rules or vlfeedback_rules(),
                       method="vlfeedback", score=score, scoring=aspect or "mean rating")
    _record_import(pairs, records, result, read, completions_skipped=dropped,
                   ratings_missing=sum(missing["by_aspect"].values()))
    return pairs


def _log_dropped(stage: Stage, records: list[Checked]) -> int:
    """Log each broken completion of the records once (its record is imported without it); how many there are."""
    logged = {e["id"] for e in stage.errors() if isinstance(e.get("id"), str)}
    dropped = [(f"{where} completion {k}", f"{where} {why}") for where, p in records if isinstance(p, _Prompt)
               for k, why in p.dropped]
    for key, why in dropped:
        if key not in logged:
            stage.log_error(key, BadRecord(f"{why}; the record's other completions are imported"))
            warn(f"import vlfeedback: skipped {why}")
    return len(dropped)


IMPORTERS: dict[str, Callable[..., Stage]] = {
    "rlaif-v": import_rlaif_v, "povid": import_povid, "vlfeedback": import_vlfeedback}


def import_data(format: str, src: str | Path, out: str | Path, images: str | Path | None = None,
                allow_outside: bool = False) -> Stage:
    """`vlalign import --format FORMAT SRC --out DIR`; the stage's manifest counts the records skipped
    (`manifest["import"]["skipped"]`, listed in `manifest["import"]["errors"]`)."""
    try:
        importer = IMPORTERS[format]
    except KeyError:
        raise ValueError(f"unknown import format {format!r}; choose one of {', '.join(IMPORTERS)}") from None
    if not Path(src).exists():
        raise FileNotFoundError(f"{src} does not exist")
    if images is not None and not Path(images).is_dir():
        raise NotADirectoryError(f"the images folder {images} is not a folder; pass the folder that holds the "
                                 f"images with --images")
    with RunStore(out).lock():  # a run or another import writing the directory stops this one at once
        return importer(src, out, images, allow_outside=allow_outside)
