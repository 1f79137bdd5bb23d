"""The README's family table is the code's, and every family in it has a tiny model the tests run on."""

from __future__ import annotations

import re
from pathlib import Path

from tiny_archs import ARCHS

from vlalign.models.families import FAMILIES, markdown_table
from vlalign.models.prefix import SHARED_FAMILIES

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_family_has_a_tiny_model_and_shares_its_prompts():
    """The table lists exactly the families tests/tiny_archs.py builds, which the equality tests run on, and
    each of them shares its prompts."""
    assert [f.model_type for f in FAMILIES] and {f.model_type for f in FAMILIES} == set(ARCHS)
    assert {f.model_type for f in FAMILIES} <= SHARED_FAMILIES


def test_the_readme_table_is_generated():
    text = README.read_text()
    found = re.search(r"<!-- families: generated -->\n(.*?)<!-- /families -->", text, re.S)
    assert found, "README.md lost its family table markers"
    assert found.group(1) == markdown_table(), "regenerate: python -m vlalign.models.families"
