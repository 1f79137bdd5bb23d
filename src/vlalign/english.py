"""Small rules of English that prompts, answers and injected hallucinations share."""

from __future__ import annotations


def article(word: str) -> str:
    """The indefinite article for `word` ("an orange", "a red")."""
    return "an" if word[0] in "aeiou" else "a"
