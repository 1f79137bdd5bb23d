"""Images of a run, stored once each under their content hash.

Records only carry the hash, so a prompt shown to ten models and judged three times costs one file.
The hash is taken over the decoded RGB pixels (with the size), not over the PNG bytes: the same picture
encoded by another Pillow or zlib version is still the same image, and `get` can check a file against
its name to catch corruption that would otherwise decode silently.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

_HASH = re.compile(r"^[0-9a-f]{64}$")


def content_hash(image: Image.Image) -> str:
    """sha256 over the image's RGB pixels and size: equal pictures get equal hashes, whatever their file."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"RGB {rgb.width}x{rgb.height}\n".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def image_value(value: Any, where: str, name: str = "image", error: type[ValueError] = ValueError) -> bytes | str:
    """What a data record's image field holds: bytes (`{bytes, path}` as Parquet and `datasets` store an image,
    the bytes base64-encoded in JSON) or a path. Anything else is `error`, naming `where` and the field."""
    if isinstance(value, dict):
        data = value.get("bytes")
        if isinstance(data, (bytes, bytearray)) and data:
            return bytes(data)
        if isinstance(data, str) and data:
            try:
                return base64.b64decode(data, validate=True)
            except binascii.Error:
                raise error(f"{where}: {name}.bytes is text but not base64 (JSON holds image bytes as base64 "
                            f"text)") from None
        if data not in (None, b"", ""):
            raise error(f"{where}: {name}.bytes must be image bytes (base64 text in JSON), got "
                        f"{type(data).__name__}")
        value = value.get("path")
    if isinstance(value, str) and value.strip():
        return value
    if value is None or value == "":
        raise error(f"{where}: no image (neither bytes nor a path)")
    raise error(f"{where}: field {name!r} must be a path or image bytes, got {type(value).__name__}")


def decode_image(data: bytes, where: str, what: str, error: type[ValueError] = ValueError) -> Image.Image:
    """The RGB picture in `data`, or `error` naming `where` and `what` held the bytes."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except UnidentifiedImageError:
        raise error(f"{where}: {what} is not an image (no format Pillow reads); replace the file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise error(f"{where}: {what} is not a readable image ({type(e).__name__}: {e})") from None


class ImageStore:
    """`root/images/<hash>.png`, written atomically and never twice."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.dir = self.root / "images"

    def path(self, hash: str) -> Path:
        if not isinstance(hash, str) or not _HASH.match(hash):
            raise ValueError(f"{hash!r} is not an image hash of this store (64 lowercase hex digits expected)")
        return self.dir / f"{hash}.png"

    def __contains__(self, hash: str) -> bool:
        return self.path(hash).exists()

    def clean_temporary(self) -> list[Path]:
        """Remove the temporary files of writes a kill stopped midway; only while no one else writes the run."""
        leftovers = sorted(self.dir.glob(".*.tmp")) if self.dir.is_dir() else []
        for path in leftovers:
            path.unlink(missing_ok=True)
        return leftovers

    def put(self, image: Image.Image) -> str:
        """Store `image` (as RGB PNG) unless an equal one is already there; return its hash."""
        rgb = image.convert("RGB")
        rgb.info = {}  # no ICC profile or other metadata: the file is the pixels
        hash = content_hash(rgb)
        final = self.path(hash)
        if final.exists():
            return hash
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{hash}.", suffix=".tmp", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as f:
                rgb.save(f, format="PNG")
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return hash

    def get(self, hash: str) -> Image.Image:
        """The RGB image stored under `hash`; a missing or damaged file raises an error that says what to do."""
        path = self.path(hash)
        if not path.exists():
            raise FileNotFoundError(
                f"image {hash} is missing: {path} does not exist. The run's image store is incomplete; "
                f"copy the run directory together with its images/ folder, or delete the stage that stored "
                f"the image (the run's prompts stage, or the import that read it) and run the command that made "
                f"it again: the stage stores its images anew (its records keep their ids).")
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(
                f"image {hash} is corrupt: {path} cannot be read ({e}). Delete the file and run the stage "
                f"that produced the records again to store it anew.") from e
        if content_hash(image) != hash:
            raise ValueError(
                f"image {hash} is corrupt: the pixels in {path} do not match its hash. Delete the file and "
                f"run the stage that produced the records again to store it anew.")
        return image
