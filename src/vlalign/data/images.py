"""Images of a run, stored once each under their content hash.

Records only carry the hash, so a prompt shown to ten models and judged three times costs one file.
The hash is taken over the decoded RGB pixels (with the size), not over the PNG bytes: the same picture
encoded by another Pillow or zlib version is still the same image, and `get` can check a file against
its name to catch corruption that would otherwise decode silently.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from PIL import Image

_HASH = re.compile(r"^[0-9a-f]{64}$")


def content_hash(image: Image.Image) -> str:
    """sha256 over the image's RGB pixels and size: equal pictures get equal hashes, whatever their file."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"RGB {rgb.width}x{rgb.height}\n".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


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
