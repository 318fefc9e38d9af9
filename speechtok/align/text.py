"""Transcript words → the spoken tokens an aligner matches: Unicode NFKC, lower case, edge punctuation
stripped, hyphen/slash compounds split, and (English) numbers spelled out."""

from __future__ import annotations

import re
import unicodedata

ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen").split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))
ORDINAL = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
           "nine": "ninth", "twelve": "twelfth"}
_NUMBER = re.compile(r"^(\d+)(?:\.(\d+))?(st|nd|rd|th|s)?$")


def cardinal(n: int) -> list[str]:
    """English words of a non-negative integer (below 10^12)."""
    if n < 20:
        return [ONES[n]]
    if n < 100:
        return [TENS[n // 10]] + ([ONES[n % 10]] if n % 10 else [])
    for value, name in SCALES:
        if n >= value:
            rest = n % value
            return cardinal(n // value) + [name] + (cardinal(rest) if rest else [])
    raise AssertionError(n)


def number_words(token: str) -> list[str] | None:
    """'42' → forty two, '1999' → nineteen ninety nine, '3.5' → three point five, '2nd' → second,
    '1980s' → nineteen eighties; None when `token` is not a number."""
    m = _NUMBER.match(token.replace(",", "") if re.fullmatch(r"\d{1,3}(,\d{3})+", token) else token)
    if not m:
        return None
    digits, decimals, suffix = m.groups()
    n = int(digits)
    if len(digits) == 4 and not decimals and 1100 <= n <= 2099 and n % 100 and not 2000 <= n < 2010:
        words = cardinal(n // 100) + (["oh"] if n % 100 < 10 else []) + cardinal(n % 100)  # a year
    elif len(digits) > 1 and digits.startswith("0"):
        words = [ONES[int(d)] for d in digits]  # 007: digit by digit
    else:
        words = cardinal(n)
    if decimals:
        words += ["point"] + [ONES[int(d)] for d in decimals]
    if suffix in ("st", "nd", "rd", "th"):
        last = words[-1]
        words[-1] = ORDINAL.get(last) or (last[:-1] + "ieth" if last.endswith("y") else last + "th")
    elif suffix == "s":
        last = words[-1]
        words[-1] = last[:-1] + "ies" if last.endswith("y") else last + "s"
    return words


def spoken_tokens(word: str, spell_numbers: bool = True) -> list[str]:
    """The tokens a transcript word is spoken as: 'Well-known,' → ['well', 'known'],
    '42' → ['forty', 'two']; [] for a word with no letters or digits (e.g. '—')."""
    word = unicodedata.normalize("NFKC", word).lower()
    out = []
    for part in re.split(r"[-‐–—/]+", word):
        part = re.sub(r"^[^\w]+|[^\w]+$", "", part)  # edge punctuation; inner apostrophes stay
        if not part:
            continue
        spelled = number_words(part) if spell_numbers else None
        out += spelled if spelled is not None else [part]
    return out


def strip_accents(text: str) -> str:
    """'café' → 'cafe': drop combining marks after NFKD."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
