"""Facts in the docs that come from the code: the layer list is the import contract, the method table is
the registry."""

from __future__ import annotations

import re
from pathlib import Path

from vlalign.plugins import METHODS

ROOT = Path(__file__).resolve().parent.parent


def test_the_design_page_lists_the_layers_of_the_import_contract():
    [listed] = re.findall(r"^layers = \[\n(.*?)\n\]", (ROOT / "pyproject.toml").read_text(), re.S | re.M)
    layers = re.findall(r'^\s*"([^"]+)",?$', listed, re.M)
    assert layers[0] == "vlalign.world" and len(layers) > 5
    block = "```\n" + "\n".join(layers) + "\n```"
    assert block in (ROOT / "docs" / "design.md").read_text(), "docs/design.md: copy the layers of pyproject.toml"


def test_the_methods_page_lists_every_registered_method():
    table = "| method | what it is |\n|---|---|\n" + "".join(f"| `{n}` | {m.summary} |\n" for n, m in METHODS.items())
    assert table in (ROOT / "docs" / "methods.md").read_text(), f"docs/methods.md: the method table is the registry's:\n{table}"
