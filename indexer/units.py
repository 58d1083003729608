"""Sizes and units written the way shoppers and catalogs write them, reduced to one token each for BM25.

"30 inch", "30 in.", '30"' -> `30in`; "1/2 in.", "0.5 inch" -> `0d5in`; "8 x 10", "8x10", "8 in. x 10 in." -> `8x10`.
The tokens are added beside the text (at index time to the item's body, at query time to the query), never in
place of it, so a bundle indexed before them still matches the words themselves. A decimal point becomes "d":
Tantivy's tokenizers split on it, and the size must stay one token.
"""
from __future__ import annotations

import re

UNITS = {
    "in": ("in", "in.", "inch", "inches", '"', "''"), "ft": ("ft", "ft.", "foot", "feet", "'"),
    "mm": ("mm",), "cm": ("cm",), "m": ("m", "meter", "meters", "metre", "metres"),
    "lb": ("lb", "lbs", "lb.", "pound", "pounds"), "oz": ("oz", "oz.", "ounce", "ounces"),
    "gal": ("gal", "gal.", "gallon", "gallons"), "qt": ("qt", "quart", "quarts"),
    "l": ("l", "liter", "liters", "litre", "litres"), "ml": ("ml",), "kg": ("kg",), "g": ("g", "gram", "grams"),
    "v": ("v", "volt", "volts"), "w": ("w", "watt", "watts"), "mah": ("mah",), "gb": ("gb",), "tb": ("tb",),
}
_UNIT_OF = {spelling: unit for unit, spellings in UNITS.items() for spelling in spellings}
_NUMBER = r"(?:\d+\s+\d+/\d+|\d+/\d+|\d+(?:\.\d+)?|\.\d+)"
_UNIT = "|".join(sorted((re.escape(s) for s in _UNIT_OF), key=len, reverse=True))
# A number, optionally a unit, then "x" / "by" and another: a two- or three-sided size.
_SIZE = re.compile(rf"(?<![\w.])({_NUMBER})\s*(?:{_UNIT})?\s*(?:x|×|by)\s*({_NUMBER})(?:\s*(?:{_UNIT})?\s*(?:x|×|by)\s*"
                   rf"({_NUMBER}))?", re.IGNORECASE)
_MEASURE = re.compile(rf"(?<![\w.])({_NUMBER})\s*({_UNIT})(?![a-z0-9])", re.IGNORECASE)


def number(text: str) -> str:
    """"1 1/2" -> 1d5, "3/4" -> 0d75, "0.50" -> 0d5, "30" -> 30: one spelling for one quantity."""
    whole, _, frac = text.strip().partition(" ") if "/" in text and " " in text.strip() else ("", "", text.strip())
    if "/" in frac:
        num, den = (int(x) for x in frac.split("/"))
        value = (int(whole) if whole else 0) + (num / den if den else 0.0)
    else:
        value = float(frac)
    out = f"{value:.3f}".rstrip("0").rstrip(".")
    return out.replace(".", "d")


def unit_tokens(text: str) -> list[str]:
    """The size and measure tokens in `text`, in order, each once."""
    out: list[str] = []
    for m in _SIZE.finditer(text):
        out.append("x".join(number(g) for g in m.groups() if g))
    for m in _MEASURE.finditer(text):
        unit = _UNIT_OF.get(m.group(2).lower())
        if unit:
            out.append(number(m.group(1)) + unit)
    return list(dict.fromkeys(out))
