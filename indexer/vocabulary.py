"""The catalog's own words, for typo tolerance in the lexical source.

A query word that no item contains is matched to the catalog word within Elasticsearch's `fuzziness: AUTO` edits
(1 for 3-5 characters, 2 beyond; a transposition is one edit, rapidfuzz's OSA distance), the one most items use
at the fewest edits (SymSpell's rule), and searched beside it with a cost so exact words win. As Lucene's
spell checker does by default (DirectSpellChecker: minQueryLength 4, minPrefix 1), words under 4 letters are left
alone and a correction keeps the first letter: people rarely mistype it, and without that rule a word the catalog
never uses ("jet", "jumper") is "corrected" into an unrelated one ("set", "summer"). Words with digits (sizes,
model numbers) are never corrected: "dcd771" is not a typo of "dcd773".
"""
from __future__ import annotations

import json
import os
import re
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

VOCABULARY_FILE = "vocabulary.json"
MIN_LENGTH = 4      # Lucene DirectSpellChecker's minQueryLength
_WORD = re.compile(r"[^\W_]+", re.UNICODE)   # what Tantivy's simple tokenizer keeps: runs of letters and digits


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def model_words(tokenizer_json: str | Path) -> frozenset[str]:
    """The whole words (4+ letters) of a text model's WordPiece vocabulary (a Hugging Face tokenizer.json): words a
    general-language model learnt as words. A query word among them is a real word the catalog happens not to use
    ("blouse", "snow"), not a typo, so it is not corrected."""
    path = Path(tokenizer_json)
    if not path.is_file():
        return frozenset()
    vocab = json.loads(path.read_text(encoding="utf-8")).get("model", {}).get("vocab", {})
    return frozenset(w for w in vocab if len(w) >= MIN_LENGTH and w.isalpha() and w.islower())


def _correctable(word: str) -> bool:
    """A catalog word a typo may be corrected to: 3+ letters, no digits."""
    return len(word) >= 3 and not any(c.isdigit() for c in word)


def auto_edits(word: str) -> int:
    """Elasticsearch's `fuzziness: AUTO`: the edits a word of this length may be away from a catalog word."""
    return 0 if len(word) <= 2 else 1 if len(word) <= 5 else 2


class Vocabulary:
    """Word -> number of items that use it, over every text field the BM25 index holds; safe for live writes."""

    def __init__(self, counts: Counter[str] | None = None) -> None:
        self.counts: Counter[str] = Counter(counts or {})
        self._choices: dict[str, list[str]] | None = None   # first letter -> catalog words (no digits, 3+ letters)
        self._lock = threading.Lock()
        self.dirty = False

    def __contains__(self, word: str) -> bool:
        return word in self.counts

    def __len__(self) -> int:
        return len(self.counts)

    def add(self, texts: Iterable[str]) -> None:
        """One item's texts: each of its words counts once."""
        item_words = {w for text in texts for w in words(text)}
        with self._lock:
            if self._choices is not None:   # kept up to date, not rebuilt at the next typo after every live write
                for w in filter(_correctable, item_words - self.counts.keys()):
                    # a new list, not an append: a correction running now reads the list it took
                    self._choices[w[0]] = [*self._choices.get(w[0], ()), w]
            self.counts.update(item_words)
            self.dirty = True

    def correct(self, word: str, max_edits: int = 2) -> tuple[str, int] | None:
        """(catalog word, edits) for a word the catalog does not use, or None: the nearest within auto_edits, the most
        used among equals (then the first alphabetically, so the answer never depends on insertion order)."""
        from rapidfuzz import process
        from rapidfuzz.distance import OSA

        edits = min(auto_edits(word), max_edits)
        if len(word) < MIN_LENGTH or word in self.counts or any(c.isdigit() for c in word):
            return None
        with self._lock:
            if self._choices is None:
                by_letter: dict[str, list[str]] = {}
                for w in filter(_correctable, self.counts):
                    by_letter.setdefault(w[0], []).append(w)
                self._choices = by_letter
            choices = self._choices.get(word[0], [])
        found = process.extract(word, choices, scorer=OSA.distance, score_cutoff=edits, limit=None)
        if not found:
            return None
        best = min(found, key=lambda m: (m[1], -self.counts[m[0]], m[0]))
        return best[0], int(best[1])

    @classmethod
    def load(cls, folder: str | Path) -> Vocabulary | None:
        """The vocabulary saved beside a BM25 index; None for a bundle indexed before it was kept."""
        path = Path(folder) / VOCABULARY_FILE
        if not path.is_file():
            return None
        return cls(Counter(json.loads(path.read_text(encoding="utf-8"))))

    def save(self, folder: str | Path) -> None:
        """Written to a temporary file and renamed, so a reader never sees half of it."""
        path = Path(folder) / VOCABULARY_FILE
        with self._lock:
            data = json.dumps(dict(sorted(self.counts.items())), ensure_ascii=False, separators=(",", ":"))
            self.dirty = False
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, path)
