"""The official scripts' text tools: what runs when they are installed, and an honest note when not."""

from __future__ import annotations

import pytest

from vlalign.evaluate import textkit


@pytest.fixture
def fresh_tools():
    """Forget the tools found so far (they are cached), before and after the test."""
    cached = (textkit.word_tokenizer, textkit.singularizer, textkit.pos_tagger, textkit.lemmatizer)
    for f in cached:
        f.cache_clear()
    yield
    for f in cached:
        f.cache_clear()


def test_pattern_singularize_keeps_its_quirks():
    # pattern's rules (PatternLite is in the dev extra, so this is the official tool in CI)
    singularize, tool = textkit.singularizer()
    assert tool == textkit.Tool("pattern.singularize", True)
    # "bus" -> "bu" (the quirk), "glass" -> "glas" (why CHAIR maps "wine glas"), plurals as usual
    assert [singularize(w) for w in ("bus", "buses", "glass", "glasses", "dogs", "people", "tennis")] == \
        ["bu", "bus", "glas", "glass", "dog", "person", "tenni"]


def test_word_tokenizer_splits_punctuation_as_nltk_does():
    tokenize, tool = textkit.word_tokenizer()
    assert tool.name.startswith("nltk")  # NLTK is in the dev extra
    # Treebank rules: "n't" and "'s" split, sentence-final periods split, commas split
    assert tokenize("a dog isn't here. the cat's bowl, too.") == \
        ["a", "dog", "is", "n't", "here", ".", "the", "cat", "'s", "bowl", ",", "too", "."]


def test_missing_tools_say_why(fresh_tools, monkeypatch):
    monkeypatch.setattr(textkit, "nltk_has", lambda *resources: False)
    monkeypatch.setattr(textkit, "has_module", lambda name: False)
    tokenize, tokenizer = textkit.word_tokenizer()
    singularize, singularizer = textkit.singularizer()
    tag, tagger = textkit.pos_tagger()
    assert tokenize("A dog, two cats.") == ["A", "dog", ",", "two", "cats", "."]
    # inflect agrees with pattern on "bus" -> "bu" but keeps "glass" (pattern: "glas")
    assert (singularize("buses"), singularize("bus"), singularize("glass")) == ("bus", "bu", "glass")
    assert tag is None
    out = textkit.report([tokenizer, singularizer, tagger])
    assert out["approximate"] is True and out["extractor"] == "regex tokenizer + inflect singular + no tagger"
    assert [why.split(" ")[0] for why in out["approximate_because"]] == ["NLTK", "pattern's", "NLTK's"]
    similarity, tool = textkit.spacy_similarity("en_core_web_lg")
    assert similarity is None and "--similarity_score 1.0" in tool.note


def test_report_of_official_tools_is_exact():
    assert textkit.report([textkit.Tool("a", True), textkit.Tool("b", True), textkit.Tool("a", True)]) == \
        {"extractor": "a + b", "approximate": False}
