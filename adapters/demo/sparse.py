"""BM25 as Qdrant sparse vectors, computed here so that the demo's first stage needs no model.

A document's vector holds, for each of its terms, BM25's saturated term frequency
``tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))``; the query's vector holds each query term's
IDF ``ln(1 + (N - df + 0.5) / (df + 0.5))``. Their dot product, which Qdrant computes, is then the
BM25 score. Term ids are a stable hash of the term (CRC-32), so no vocabulary file has to be kept
beside the collection; a rare collision merges two terms, which only blurs the first stage a little.

English is split into lowercase words (stop words dropped, a plural ``s`` trimmed); Chinese, which
has no spaces, into single characters and pairs of neighbouring characters, the usual way to index
it without a word segmenter.

Example:
    >>> tokenize("White linen shirts, 白色衬衫")
    ['white', 'linen', 'shirt', '白', '色', '衬', '衫', '白色', '色衬', '衬衫']
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

STOP_WORDS = frozenset(
    {
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "have",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "was",
        "were",
        "with",
        "what",
        "which",
        "who",
        "how",
        "show",
        "shows",
        "showing",
        "me",
        "find",
        "i",
        "want",
    }
)
"""English words too common to help the first stage; dropping them keeps query vectors short."""

# Runs of Han characters (CJK unified ideographs and extension A), or runs of letters and digits.
_TOKEN = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+)|([^\W_]+)")


def _normalise_word(word: str) -> str:
    # A light plural trim so queries and captions meet ("shirts" -> "shirt", "dresses" -> "dress",
    # "steps" -> "step"); words ending in "ss" or "us" ("dress", "versus") are not plurals.
    if len(word) > 4 and word.endswith(("sses", "xes", "ches", "shes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us")):
        return word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    """The terms of ``text``: lowercase English words and Chinese unigrams and bigrams, in order.

    Example:
        >>> tokenize("Figure 3: accuracy vs. training steps")
        ['figure', '3', 'accuracy', 'vs', 'training', 'step']
    """
    terms: list[str] = []
    for han, word in _TOKEN.findall(text.lower()):
        if han:
            terms.extend(han)
            terms.extend(han[i : i + 2] for i in range(len(han) - 1))
        elif word not in STOP_WORDS:
            terms.append(_normalise_word(word))
    return terms


def term_id(term: str) -> int:
    """A stable id for ``term`` in Qdrant's unsigned 32-bit sparse index space.

    Example:
        >>> term_id("shirt") == term_id("shirt")
        True
    """
    return zlib.crc32(term.encode("utf-8"))


@dataclass(frozen=True)
class SparseVector:
    """Parallel lists of term ids and weights, as Qdrant's ``SparseVector`` takes them."""

    indices: list[int]
    values: list[float]


def _as_sparse(weights: dict[int, float]) -> SparseVector:
    ordered = sorted(weights.items())
    return SparseVector(indices=[index for index, _ in ordered], values=[value for _, value in ordered])


@dataclass
class BM25:
    """BM25 statistics of a corpus, and the sparse vectors that make Qdrant score with them.

    Attributes:
        k1: How quickly repeated terms stop adding to a document's weight.
        b: How strongly long documents are penalised.

    Example:
        >>> bm25 = BM25.fit(["white shirt", "red dress", "white mug"])
        >>> bm25.idf("white") < bm25.idf("dress")
        True
    """

    k1: float = 1.2
    b: float = 0.75
    document_count: int = 0
    average_length: float = 0.0
    document_frequency: Counter[str] = field(default_factory=Counter)

    @classmethod
    def fit(cls, texts: Iterable[str], *, k1: float = 1.2, b: float = 0.75) -> BM25:
        """Counts document frequencies and the average length over ``texts``."""
        model = cls(k1=k1, b=b)
        lengths = []
        for text in texts:
            terms = tokenize(text)
            lengths.append(len(terms))
            model.document_frequency.update(set(terms))
        model.document_count = len(lengths)
        model.average_length = sum(lengths) / len(lengths) if lengths else 0.0
        return model

    def idf(self, term: str) -> float:
        """BM25's inverse document frequency, always positive (the ``1 +`` inside the log)."""
        frequency = self.document_frequency.get(term, 0)
        return math.log(1 + (self.document_count - frequency + 0.5) / (frequency + 0.5))

    def document_vector(self, text: str) -> SparseVector:
        """The saturated, length-normalised term frequencies of one document."""
        terms = tokenize(text)
        length_norm = 1 - self.b + self.b * len(terms) / (self.average_length or 1.0)
        weights: dict[int, float] = {}
        for term, count in Counter(terms).items():
            weight = count * (self.k1 + 1) / (count + self.k1 * length_norm)
            weights[term_id(term)] = weights.get(term_id(term), 0.0) + weight
        return _as_sparse(weights)

    def query_vector(self, text: str) -> SparseVector:
        """Each distinct query term once, weighted by its IDF.

        Terms absent from the corpus are left out: no document could match them, and they would only
        make the vector longer.
        """
        weights: dict[int, float] = {}
        for term in dict.fromkeys(tokenize(text)):
            if term in self.document_frequency:
                weights[term_id(term)] = weights.get(term_id(term), 0.0) + self.idf(term)
        return _as_sparse(weights)

    def score(self, query: str, document: str) -> float:
        """The BM25 score of ``document`` for ``query``: what Qdrant computes from the two vectors."""
        query_vector = self.query_vector(query)
        document_vector = self.document_vector(document)
        weights = dict(zip(document_vector.indices, document_vector.values, strict=True))
        return sum(
            value * weights.get(index, 0.0)
            for index, value in zip(query_vector.indices, query_vector.values, strict=True)
        )
