"""The text tools the official benchmark scripts run, found on this machine without downloading anything.

The official CHAIR and AMBER scripts tokenise with NLTK's `word_tokenize` (Punkt sentence data), tag with
NLTK's averaged perceptron tagger, lemmatise with WordNet, singularise with pattern's `singularize`, and
AMBER merges near-synonyms with spaCy's `en_core_web_lg` vectors. Each function here returns the closest
tool that is installed and a `Tool` saying what ran and whether it is the official one. Nothing is ever
downloaded: NLTK data is looked up with `nltk.data.find` only, so a missing resource gives a fallback
(marked inexact) instead of a download. `pip install "vlalign[benchmarks]"` brings NLTK and PatternLite;
NLTK's data (punkt_tab, averaged_perceptron_tagger_eng, wordnet) and spaCy's model come from their own
installers, run by the user once, outside vlalign.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PUNKT = "tokenizers/punkt_tab/english/"
TAGGER = "taggers/averaged_perceptron_tagger_eng/"
WORDNET = ("corpora/wordnet", "corpora/wordnet.zip")
_FALLBACK_TOKEN = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class Tool:
    """What ran for one step; `note` says why it differs from the official tool when `exact` is False."""

    name: str
    exact: bool
    note: str = ""


def report(tools: Iterable[Tool]) -> dict:
    """`extractor` (the tools, joined), `approximate`, and `approximate_because` when some tool is not
    the official one, so a figure never silently differs from the official script's."""
    tools = list(dict.fromkeys(tools))
    out: dict = {"extractor": " + ".join(t.name for t in tools), "approximate": not all(t.exact for t in tools)}
    if out["approximate"]:
        out["approximate_because"] = [t.note for t in tools if not t.exact]
    return out


def has_module(name: str) -> bool:
    """True when `name` can be imported (checked without importing it)."""
    return importlib.util.find_spec(name) is not None


def nltk_has(*resources: str) -> bool:
    """True when NLTK is installed and finds one of `resources` in its data path (never downloads)."""
    if not has_module("nltk"):
        return False
    import nltk

    for resource in resources:
        try:
            nltk.data.find(resource)
            return True
        except LookupError:
            continue
    return False


@lru_cache(maxsize=1)
def word_tokenizer() -> tuple[Callable[[str], list[str]], Tool]:
    """NLTK's `word_tokenize`; without Punkt's English data, NLTK's own word tokenizer on sentences
    split by an untrained Punkt (no abbreviation list); without NLTK, words and punctuation marks."""
    if nltk_has(PUNKT):
        from nltk import word_tokenize

        return word_tokenize, Tool("nltk.word_tokenize", True)
    if has_module("nltk"):
        from nltk.tokenize import NLTKWordTokenizer
        from nltk.tokenize.punkt import PunktSentenceTokenizer

        sentences, words = PunktSentenceTokenizer(), NLTKWordTokenizer()

        def tokenize(text: str) -> list[str]:
            return [t for s in sentences.tokenize(text) for t in words.tokenize(s)]

        return tokenize, Tool("nltk tokenizer without punkt_tab", False,
                              "NLTK's punkt_tab data is not installed: sentences are split without Punkt's "
                              "English abbreviation list (install it with python -m nltk.downloader punkt_tab)")
    return (lambda text: _FALLBACK_TOKEN.findall(text)), Tool(
        "regex tokenizer", False, "NLTK is not installed: words and punctuation split by a regular expression "
                                  "(pip install 'vlalign[benchmarks]')")


def _pattern_inflect():
    """pattern's English inflection module, loaded from its file: importing `pattern.text.en` as a package
    would make pattern try to download WordNet."""
    spec = importlib.util.find_spec("pattern")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "text" / "en" / "inflect.py"
    if not path.is_file():
        return None
    module_spec = importlib.util.spec_from_file_location("vlalign_pattern_en_inflect", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@lru_cache(maxsize=1)
def _inflect():
    import inflect

    return inflect.engine()


@lru_cache(maxsize=65536)
def singular(word: str, keep: frozenset[str] = frozenset()) -> str:
    """`word` in the singular; words in `keep` (vocabulary words such as "bus", "tennis") stay as they are."""
    if word in keep or len(word) < 3:
        return word
    return _inflect().singular_noun(word) or word


@lru_cache(maxsize=1)
def singularizer() -> tuple[Callable[[str], str], Tool]:
    """pattern's `singularize` (from PatternLite); without it, `inflect`'s singular nouns."""
    module = _pattern_inflect() if has_module("pattern") else None
    if module is not None:
        return module.singularize, Tool("pattern.singularize", True)
    return singular, Tool("inflect singular", False,
                          "pattern's singularize is not installed (pip install 'vlalign[benchmarks]' brings "
                          "PatternLite): plurals are singularised by inflect, which differs on some words "
                          "(pattern makes 'glass' 'glas')")


@lru_cache(maxsize=1)
def pos_tagger() -> tuple[Callable[[Sequence[str]], list[tuple[str, str]]] | None, Tool]:
    """NLTK's `pos_tag`, or None (every token is then a candidate noun)."""
    if nltk_has(TAGGER):
        from nltk import pos_tag

        return pos_tag, Tool("nltk.pos_tag", True)
    return None, Tool("no tagger", False,
                      "NLTK's averaged_perceptron_tagger_eng data is not installed: every token counts as a noun "
                      "(install it with python -m nltk.downloader averaged_perceptron_tagger_eng)")


@lru_cache(maxsize=1)
def lemmatizer() -> tuple[Callable[[str], str], Tool]:
    """NLTK's WordNet noun lemmatiser; without WordNet, `inflect` singulars of lower-case words (WordNet
    knows no capitalised forms, so those stay as they are there too)."""
    if nltk_has(*WORDNET):
        from nltk.stem import WordNetLemmatizer

        return WordNetLemmatizer().lemmatize, Tool("wordnet lemmatizer", True)
    def lemmatize(word: str) -> str:
        return singular(word) if word.islower() else word

    return lemmatize, Tool("inflect lemmatizer", False,
                           "NLTK's wordnet data is not installed: nouns are lemmatised by inflect "
                           "(install it with python -m nltk.downloader wordnet)")


@lru_cache(maxsize=4)
def spacy_similarity(model: str = "en_core_web_lg") -> tuple[Callable[[str, str], float] | None, Tool]:
    """spaCy's similarity of two words under `model`, or None when spaCy or the model is not installed."""
    if has_module("spacy") and has_module(model):
        import spacy

        nlp = spacy.load(model)

        @lru_cache(maxsize=65536)
        def similarity(a: str, b: str) -> float:
            return nlp(a).similarity(nlp(b))

        return similarity, Tool(f"spacy {model}", True)
    return None, Tool(f"no {model}", False,
                      f"spaCy's {model} is not installed: the similarity merge is off, as the official script "
                      f"with --similarity_score 1.0")
