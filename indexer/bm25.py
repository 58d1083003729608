"""The Tantivy BM25 index over title, description, category and attributes, with exact-match filters."""
from __future__ import annotations

import math
import re
from collections import Counter
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tantivy

from vitrine.serving.schema import check, config_from_dict
from vitrine.indexer.catalog import Item
from vitrine.indexer.docstore import filter_term, filter_terms
from vitrine.indexer.units import unit_tokens
from vitrine.indexer.vocabulary import Vocabulary

TEXT_FIELDS = ("title", "description", "category", "attributes")
# Characters Tantivy's query parser treats as syntax; user text is searched as plain words.
_SYNTAX = re.compile(r"[^\w\s]+", re.UNICODE)
# "t-shirt" is also searched as "tshirt", so a hyphenated query word matches its closed compound.
_HYPHENATED = re.compile(r"\b(\w+)-(\w+)\b", re.UNICODE)
# Attributes that describe when or how an item is worn or used rather than what it is; on fashion they
# only add noise to both BM25 and the dense item text (bench/tune_first_stage.py), so neither indexes them.
CONTEXT_ATTRIBUTES = frozenset({"season", "usage"})
# English stop words: Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET (also Elasticsearch's `_english_` stop filter
# default), kept short on purpose: longer lists (scikit-learn's has "top", "bottom", "back") drop product words.
# Query rules that weigh a query's words (the coverage rule, later typo tolerance) skip these; BM25 itself still
# indexes and searches them, so "shirt for men" matches "Shirt for Men" as before.
STOP_WORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not", "of",
    "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was", "will", "with",
})


# A filter that keeps at most this many items is given to Tantivy as a set of doc numbers; a wider one is applied
# to an over-fetched result (a term set of tens of thousands of terms costs more than the over-fetch).
ONLY_AS_TERMS = 8192


@dataclass(frozen=True)
class Restrict:
    """What a request's filters allow: exact values and the price range as Tantivy terms, and the doc numbers that
    every other condition (FieldFilter: any/none of, ranges, presence) allows."""

    filters: Mapping[str, str] = field(default_factory=dict)
    price_min: float | None = None
    price_max: float | None = None
    only: np.ndarray | None = None


def query_words(text: str) -> list[str]:
    """The query's informative words (longer than 2 characters), lower-cased, without syntax."""
    return [w for w in _SYNTAX.sub(" ", text).lower().split() if len(w) > 2]


def content_words(text: str) -> list[str]:
    """query_words without stop words: the words that say what is wanted ("navy blue shirt for men" -> navy, blue,
    shirt, men)."""
    return [w for w in query_words(text) if w not in STOP_WORDS]


@dataclass(frozen=True)
class Bm25Config:
    tokenizer: str = "en_stem"
    # Measured by bench/tune_first_stage.py on scifact claims and fashion text queries: the description field
    # also holds the title (one BM25 "body" field, as in BEIR), so the title field only adds a small extra;
    # clean attribute values (colour, gender, article type) are the most reliable product evidence.
    boosts: Mapping[str, float] = field(default_factory=lambda: {"title": 0.25, "category": 1.0, "attributes": 2.0, "description": 1.0})

    @classmethod
    def from_dict(cls, d: dict) -> Bm25Config:
        cfg = config_from_dict(cls, d, "bm25")
        for name, value in cfg.boosts.items():
            check(name in TEXT_FIELDS, f"bm25.boosts.{name}", f"one of {', '.join(TEXT_FIELDS)}", name)
            check(isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0,
                  f"bm25.boosts.{name}", "a positive number", value)
        return cfg


def _schema(tokenizer: str) -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    sb.add_unsigned_field("docno", stored=True, indexed=True, fast=True)
    # The doc number again as a raw string term: Tantivy's Python binding deletes reliably by text term.
    sb.add_text_field("docno_key", stored=False, tokenizer_name="raw")
    for name in TEXT_FIELDS:
        sb.add_text_field(name, stored=False, tokenizer_name=tokenizer)
    sb.add_text_field("filters", stored=False, tokenizer_name="raw")
    sb.add_float_field("price", stored=False, indexed=True, fast=True)
    return sb.build()


def _texts(item: Item) -> list[str]:
    """What BM25 indexes of an item, field by field (the vocabulary counts the same words)."""
    return [item.title, item.description, item.category.replace(">", " "),
            " ".join(v for k, v in item.attributes.items() if k not in CONTEXT_ATTRIBUTES)]


def _document(docno: int, item: Item, texts: list[str]) -> tantivy.Document:
    doc = tantivy.Document()
    doc.add_unsigned("docno", docno)
    doc.add_text("docno_key", str(docno))
    doc.add_text("title", item.title)
    # The body field is title + description, so a long abstract's title counts in the same BM25 document; the
    # item's sizes and measures ("30 in." -> 30in) join it as one token each (indexer/units.py).
    body = f"{item.title}. {item.description}" if item.title and item.description else item.description
    units = unit_tokens(" ".join(texts))
    doc.add_text("description", " ".join([body, *units]) if units else body)
    doc.add_text("category", item.category.replace(">", " "))
    doc.add_text("attributes", " ".join(v for k, v in item.attributes.items() if k not in CONTEXT_ATTRIBUTES))
    for term in filter_terms(item):
        doc.add_text("filters", term)
    if item.price is not None:
        doc.add_float("price", item.price)
    return doc


class Bm25Index:
    """BM25 over one Tantivy index directory; writes go through one writer, searches through a reloaded searcher."""

    def __init__(self, path: str | Path, config: Bm25Config = Bm25Config(), create: bool = False,
                 known_words: frozenset[str] = frozenset()) -> None:
        self.path = Path(path)
        self.config = config
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
            self.index = tantivy.Index(_schema(config.tokenizer), path=str(self.path), reuse=False)
        else:
            if not tantivy.Index.exists(str(self.path)):
                raise FileNotFoundError(f"no Tantivy index at {self.path}")
            self.index = tantivy.Index.open(str(self.path))
        self.schema = self.index.schema
        # None for a bundle indexed before the vocabulary was kept: typo tolerance is off there until a re-index.
        self.vocabulary = Vocabulary() if create else Vocabulary.load(self.path)
        # Real words the catalog does not use (from the bundle's text model, vocabulary.model_words): never typos;
        # a typo of one is respelt for the dense encoders (respellings), though BM25 has nothing to find with it.
        self.known_words = known_words
        self._model_vocabulary = Vocabulary(Counter(known_words)) if known_words else None
        self._writer: tantivy.IndexWriter | None = None
        self._lock = threading.Lock()

    def writer(self) -> tantivy.IndexWriter:
        if self._writer is None:
            self._writer = self._new_writer()
        return self._writer

    def _new_writer(self) -> tantivy.IndexWriter:
        return self.index.writer(heap_size=64_000_000, num_threads=1)

    def add(self, rows: Iterable[tuple[int, Item]]) -> None:
        with self._lock:
            w = self.writer()
            for docno, item in rows:
                texts = _texts(item)
                w.add_document(_document(docno, item, texts))
                if self.vocabulary is not None:
                    self.vocabulary.add(texts)

    def delete(self, docnos: Iterable[int]) -> None:
        with self._lock:
            w = self.writer()
            for docno in docnos:
                w.delete_documents_by_term("docno_key", str(docno))

    def reopen_writer(self) -> None:
        """Commits and closes the writer, then opens a new one from the calling thread (whose priority Tantivy's
        writer threads take)."""
        with self._lock:
            if self._writer is not None:
                self._writer.commit()
                self._writer.wait_merging_threads()
            self._writer = self._new_writer()
        self.index.reload()

    def commit(self) -> None:
        """Makes all added and deleted documents durable and visible to new searches."""
        with self._lock:
            if self._writer is not None:
                self._writer.commit()
            self._save_vocabulary()
        self.index.reload()

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.commit()
                self._writer.wait_merging_threads()
                self._writer = None
            self._save_vocabulary()

    def _save_vocabulary(self) -> None:
        # Words of deleted items stay counted: a correction to a word no item uses any more just finds nothing.
        if self.vocabulary is not None and self.vocabulary.dirty:
            self.vocabulary.save(self.path)

    def compounds(self, words: list[str]) -> list[str]:
        """Words the catalog writes joined or split where the query does the other: "deck over" -> deckover, and
        "deckover" -> "deck over" (both halves catalog words of 3+ letters; the split whose rarer half is commonest)."""
        vocab = self.vocabulary
        if not vocab:
            return []
        alpha = [w for w in words if w.isalpha()]
        out = [a + b for a, b in zip(alpha, alpha[1:]) if a + b in vocab and a + b not in words]
        for w in alpha:
            if w in vocab or len(w) < 6:
                continue
            splits = [(w[:i], w[i:]) for i in range(3, len(w) - 2) if w[:i] in vocab and w[i:] in vocab]
            if splits:
                out += max(splits, key=lambda pair: min(vocab.counts[pair[0]], vocab.counts[pair[1]]))
        return out

    def unknown_words(self, words: list[str]) -> list[str]:
        """The informative words (3+ letters, not stop words) that neither the catalog's vocabulary, nor the text
        model's words, nor the index after stemming ("dresses" finds "dress") knows: the candidates for a typo."""
        if not self.vocabulary:
            return []
        out, searcher = [], None
        for w in dict.fromkeys(words):
            if len(w) <= 2 or w in STOP_WORDS or w in self.vocabulary or w in self.known_words:
                continue
            searcher = searcher or self.index.searcher()
            if not self._matches(searcher, w):
                out.append(w)
        return out

    def corrections(self, words: list[str], unknown: list[str] | None = None) -> dict[str, tuple[str, int]]:
        """Query word -> (catalog word, edits) for each unknown word (unknown_words; pass them when already found)
        within AUTO edits of a catalog word."""
        out = {}
        for w in self.unknown_words(words) if unknown is None else unknown:
            fix = self.vocabulary.correct(w)
            if fix is not None and fix[0] not in STOP_WORDS:
                out[w] = fix
        return out

    def respellings(self, unknown: list[str], corrections: Mapping[str, tuple[str, int]]) -> dict[str, str]:
        """Typo -> word for the dense encoders: the catalog's correction when there is one, else the nearest word
        the text model knows, so "azrue purse" is encoded as "azure purse" though no item says azure. One edit only
        there: a general vocabulary is large, and two edits from a word it lacks ("joggers") is often another real
        word ("jagger")."""
        out = {typo: fix for typo, (fix, _) in corrections.items()}
        for w in unknown:
            if w not in out and self._model_vocabulary is not None:
                fix = self._model_vocabulary.correct(w, max_edits=1)
                if fix is not None and fix[0] not in STOP_WORDS:
                    out[w] = fix[0]
        return out

    def num_docs(self) -> int:
        return self.index.searcher().num_docs

    def query_words(self, text: str) -> list[str]:
        """The query's informative words (longer than 2 characters), lower-cased, without syntax."""
        return query_words(text)

    def explained_share(self, text: str, top_score: float) -> float:
        """How much of the query the best BM25 hit explains: its score over the sum of each word's best single-word
        score, times the share of words the catalog knows at all (unknown words explain nothing). Near 1 when one
        document matches every word ("navy blue shirt men"); low when the best hit only shares a generic word
        ("azure purse women's" -> a women's item), which is when BM25's ranking carries little signal."""
        words = self.query_words(text)
        if not words or top_score <= 0:
            return 0.0
        best = [hits[0][1] if (hits := self.search(w, 1)) else 0.0 for w in words]
        known = sum(b > 0 for b in best)
        total = sum(best)
        return min(1.0, top_score / total) * known / len(words) if total > 0 else 0.0

    def term_coverage(self, text: str) -> float:
        """Fraction of the query's content words that occur anywhere in the index (after its tokenizer).

        High for literal queries ("navy blue shirt for men"), low for paraphrases ("azure purse") whose
        words the catalog never uses: the pipeline uses it to decide how much CLIP text should count. Stop words
        count neither way: "for" says nothing about whether the catalog speaks the query's language. A query of
        stop words only has coverage 0, as an empty one.
        """
        words = content_words(text)
        if not words:
            return 0.0
        searcher = self.index.searcher()
        return sum(self._matches(searcher, w) for w in words) / len(words)

    def _matches(self, searcher: tantivy.Searcher, word: str) -> bool:
        """Whether any item matches `word` after the index's tokenizer (stemming: "dresses" finds "dress")."""
        return bool(searcher.search(self.index.parse_query(word, list(TEXT_FIELDS)), limit=1, count=False).hits)

    def search(self, text: str, k: int, restrict: Restrict | None = None, typos: bool = True, also: tuple[str, ...] = (),
               fixes: Mapping[str, tuple[str, int]] | None = None) -> list[tuple[int, float]]:
        """Returns up to k (docno, BM25 score) pairs, best first; an all-punctuation query returns []. With `typos`,
        misspelt words and compounds written the other way also search as the catalog writes them; `also` adds
        terms (a shop's synonyms) beside the query's own words; `fixes` are the corrections when the caller has
        already found them (the pipeline does, once per query). `restrict` keeps only the items a request's filters
        allow."""
        words = self._words(text, typos, also, fixes)
        if not words:
            return []
        query = self.index.parse_query(words, list(TEXT_FIELDS), field_boosts=dict(self.config.boosts))
        restrict = restrict or Restrict()
        only = restrict.only
        if only is not None and len(only) == 0:
            return []
        restrictions = [(tantivy.Occur.Must, tantivy.Query.term_query(self.schema, "filters", filter_term(f, v)))
                        for f, v in restrict.filters.items()]
        if restrict.price_min is not None or restrict.price_max is not None:
            restrictions.append((tantivy.Occur.Must, tantivy.Query.range_query(
                self.schema, "price", tantivy.FieldType.Float, restrict.price_min, restrict.price_max)))
        if only is not None and len(only) <= ONLY_AS_TERMS:
            restrictions.append((tantivy.Occur.Must, tantivy.Query.term_set_query(
                self.schema, "docno_key", [str(int(d)) for d in only])))
            only = None
        if restrictions:
            # The filter clauses only restrict; const_score(0) keeps them out of the BM25 score.
            restrictions = [(occ, tantivy.Query.const_score_query(q, 0.0)) for occ, q in restrictions]
            query = tantivy.Query.boolean_query([(tantivy.Occur.Must, query), *restrictions])
        searcher = self.index.searcher()
        if only is None:
            return self._top(searcher, query, k)
        # A wide filter: over-fetch by its selectivity and keep the allowed; when the allowed items rank lower than
        # that, fetch twice as deep until k are found or every match was read.
        limit = k * math.ceil(2 * max(searcher.num_docs, 1) / len(only))
        while True:
            pairs = self._top(searcher, query, limit)
            keep = np.isin(np.array([d for d, _ in pairs], dtype=np.int64), only)
            found = [pair for pair, ok in zip(pairs, keep) if ok]
            if len(found) >= k or len(pairs) < limit:
                return found[:k]
            limit *= 2

    def _top(self, searcher: tantivy.Searcher, query: tantivy.Query, limit: int) -> list[tuple[int, float]]:
        result = searcher.search(query, limit=limit, count=False)
        docnos = searcher.fast_field_values("docno", [addr for _, addr in result.hits])
        return [(int(d), float(s)) for (s, _), d in zip(result.hits, docnos)]

    def highlight_query(self, text: str, fixes: Mapping[str, tuple[str, int]] | None = None) -> tantivy.Query | None:
        """The query as search() reads it, over title and description only: what a snippet marks."""
        words = self._words(text, True, (), fixes)
        return self.index.parse_query(words, ["title", "description"]) if words else None

    def _words(self, text: str, typos: bool, also: tuple[str, ...], fixes: Mapping[str, tuple[str, int]] | None) -> str:
        """The query text Tantivy parses: the user's words as plain words, typo corrections, compounds, sizes and
        synonyms."""
        # Lower-cased so that AND/OR/NOT in a user's text are words, not operators.
        joined = [a + b for a, b in _HYPHENATED.findall(text)]
        # split() also folds \v, \f and Unicode spaces, which Tantivy's parser rejects.
        words = " ".join(_SYNTAX.sub(" ", " ".join([text, *joined])).split()).lower()
        if not words:
            return ""
        # Each typo's catalog word joins the query, its weight cut by the share of letters changed: the
        # misspelt word itself matches nothing, so the correction scores below an exact word of the same rarity.
        if typos:
            fixes = self.corrections(words.split()) if fixes is None else fixes
            words += "".join(f" {fix}^{1 - edits / len(typo):.3f}" for typo, (fix, edits) in fixes.items())
            words = " ".join([words, *self.compounds(words.split())])
        # Sizes and measures as the index holds them ("30 inch" -> 30in), and the shop's synonyms.
        extra = " ".join(_SYNTAX.sub(" ", t) for t in also).lower()
        return " ".join([words, *unit_tokens(text), *extra.split()])
