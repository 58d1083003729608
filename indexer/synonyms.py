"""A shop's synonyms for the lexical source, in the Solr / Elasticsearch synonym-file syntax, applied at query time.

    # comments and blank lines are ignored
    tv, television                  equivalent: a query with either also searches the other
    couch, sofa, settee
    pc => personal computer         one-way: "pc" also searches "personal computer", not the reverse
    hoodie, hoody => sweatshirt     several left-hand terms, several right-hand ones

Terms may be several words ("tv stand, television stand"); matching is whole words, ignoring case. Expansions are
added beside the query's own words (BM25 scores them), never in place of them, so a synonym can only add matches.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_SPACE = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s]")


def _norm(term: str) -> str:
    return _SPACE.sub(" ", term.strip().lower())


@dataclass(frozen=True)
class Synonyms:
    """Term -> the terms a query containing it also searches."""

    rules: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, source: str = "synonyms") -> Synonyms:
        rules: dict[str, list[str]] = {}
        for n, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            left, arrow, right = line.partition("=>")
            lhs = [_norm(t) for t in left.split(",") if t.strip()]
            rhs = [_norm(t) for t in right.split(",") if t.strip()] if arrow else lhs
            if not lhs or not rhs or (not arrow and len(lhs) < 2):
                raise ValueError(f"{source}: line {n}: {raw.strip()!r} is not a synonym rule; write `a, b, c` "
                                 f"(equivalent terms) or `a, b => c` (one-way).")
            for term in lhs:
                rules.setdefault(term, []).extend(t for t in rhs if t != term and t not in rules.get(term, []))
        return cls({term: tuple(also) for term, also in rules.items() if also})

    @classmethod
    def load(cls, path: str | Path) -> Synonyms:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(f"synonyms file {path} does not exist; fix [search] synonyms.") from None
        except UnicodeDecodeError:
            raise ValueError(f"synonyms file {path} is not UTF-8 text; save it as UTF-8.") from None
        return cls.parse(text, f"synonyms file {path}")

    def expand(self, text: str) -> list[str]:
        """The terms `text` also searches: each rule whose term occurs in it as whole words."""
        query = " " + _SPACE.sub(" ", _PUNCT.sub(" ", text.lower())).strip() + " "
        out: list[str] = []
        for term, also in self.rules.items():
            if f" {term} " in query:
                out += [t for t in also if t not in out and f" {t} " not in query]
        return out
