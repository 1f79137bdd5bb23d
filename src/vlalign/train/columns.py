"""The answer columns of a training batch: which text each reads, and under which image."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

    from vlalign.train.examples import PreferenceExample

ImageOf = Callable[["PreferenceExample"], "Image.Image"]
REAL = ("chosen", "rejected")  # the columns read under the example's own image


@dataclass(frozen=True)
class Columns:
    """The answer columns of a batch: which text each reads, and under which image. `images` maps a column
    beyond chosen and rejected to the function that makes its image; `key` names those functions, so a
    cached reference is reused only for the same images."""

    names: tuple[str, ...] = REAL
    images: tuple[tuple[str, ImageOf], ...] = ()
    key: str = ""

    def text(self, column: str, e: PreferenceExample) -> str:
        return e.rejected if column == "rejected" else e.chosen

    def image(self, column: str, e: PreferenceExample) -> Image.Image:
        return dict(self.images)[column](e) if column not in REAL else e.image
