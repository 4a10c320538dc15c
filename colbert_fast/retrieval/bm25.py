"""BM25 (the protocol's lexical baseline and re-ranking candidate source), from the bm25s library.

Lucene's BM25 (k1 1.5, b 0.75, bm25s's defaults), lower-cased word tokens of two or more
characters, English stopwords removed; a Snowball stemmer only when asked (PyStemmer is optional).
Docs that share no term with the query score 0 and are never returned: their order would be
arbitrary, and a re-ranker should not get arbitrary candidates.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["BM25"]


def _require_bm25s():
    try:
        import bm25s
    except ImportError as e:
        raise ImportError("the BM25 baseline needs bm25s: pip install bm25s (or 'colbert_fast[cranfield]')") from e
    return bm25s


class BM25:
    """A BM25 index over `texts`; search() returns internal doc numbers (positions in texts).

    Args:
        texts: the collection, in order.
        stem: stem with PyStemmer's English Snowball stemmer (needs PyStemmer).
        k1, b: BM25's parameters.
    """

    def __init__(self, texts: Sequence[str], *, stem: bool = False, k1: float = 1.5, b: float = 0.75):
        bm25s = _require_bm25s()
        if len(texts) == 0:
            raise ValueError("BM25 needs at least one document")
        self._bm25s = bm25s
        self.stemmer = None
        if stem:
            try:
                import Stemmer
            except ImportError as e:
                raise ImportError("stem=True needs PyStemmer: pip install PyStemmer") from e
            self.stemmer = Stemmer.Stemmer("english")
        self.num_docs = len(texts)
        tokens = bm25s.tokenize(list(texts), stopwords="en", stemmer=self.stemmer, show_progress=False)
        self.retriever = bm25s.BM25(k1=k1, b=b)
        self.retriever.index(tokens, show_progress=False)

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
        """Per query, up to k (doc number, score) pairs with score > 0, best first."""
        if isinstance(queries, str):
            raise TypeError("queries must be a list of strings")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if len(queries) == 0:
            return []
        # Strings, not ids: the query vocabulary must be looked up in the corpus vocabulary.
        qtok = self._bm25s.tokenize(
            list(queries), stopwords="en", stemmer=self.stemmer, return_ids=False, show_progress=False
        )
        k = min(k, self.num_docs)
        out = []
        for terms in qtok:
            if not terms:
                out.append([])
                continue
            docs, scores = self.retriever.retrieve([terms], k=k, show_progress=False, n_threads=1)
            out.append([(int(d), float(s)) for d, s in zip(docs[0], scores[0]) if s > 0])
        return out
