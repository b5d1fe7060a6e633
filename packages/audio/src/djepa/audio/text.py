"""Text normalisation for inference (training uses LJSpeech's normalised column, App. G.1).

Numbers are spelled out with num2words (a kept library); the rules here only decide *which*
reading a token gets, in this order: currency (``$5.50`` → "five dollars, fifty cents"; £, €),
percentages, ordinals (``21st`` → "twenty-first"), years in a date or a 4-digit number between
1100 and 2099 not followed by a unit (``1984`` → "nineteen eighty-four", ``1905`` → "nineteen
oh five", ``2000`` → "two thousand"), numbers with thousands separators and decimals
(``1,000.5`` → "one thousand point five"), plain cardinals, and a table of English
abbreviations (Mr., Mrs., Dr., St., Gen., etc., vs., No. before a number, …). Unicode is folded
to ASCII (NFKD; letters outside ASCII and emoji are dropped) and whitespace collapsed.

Style follows keithito/tacotron's ``cleaners`` / ``numbers`` (the LJSpeech normaliser in
common use), written here on num2words.
"""

from __future__ import annotations

import re
import unicodedata

from num2words import num2words

__all__ = ["normalize_text", "ABBREVIATIONS"]

ABBREVIATIONS: dict[str, str] = {
    "mr": "mister", "mrs": "missus", "ms": "miss", "dr": "doctor", "st": "saint", "co": "company",
    "jr": "junior", "sr": "senior", "maj": "major", "gen": "general", "drs": "doctors",
    "rev": "reverend", "lt": "lieutenant", "hon": "honorable", "sgt": "sergeant", "capt": "captain",
    "esq": "esquire", "ltd": "limited", "col": "colonel", "ft": "fort", "prof": "professor",
    "etc": "et cetera", "vs": "versus", "mt": "mount", "inc": "incorporated", "jan": "january",
    "feb": "february", "aug": "august", "sept": "september", "oct": "october", "nov": "november",
    "dec": "december",
}
_ABBREV_RE = re.compile(r"\b(" + "|".join(sorted(ABBREVIATIONS, key=len, reverse=True)) + r")\.", re.IGNORECASE)
_NO_RE = re.compile(r"\bNo\.\s*(?=\d)", re.IGNORECASE)
_CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
             "€": ("euro", "euros", "cent", "cents")}
_MONEY_RE = re.compile(r"([$£€])\s?(\d[\d,]*)(?:\.(\d{1,2}))?\b(\s*(?:million|billion|thousand))?")
_PERCENT_RE = re.compile(r"(\d[\d,]*(?:\.\d+)?)\s?%")
_ORDINAL_RE = re.compile(r"\b(\d[\d,]*)(st|nd|rd|th)\b", re.IGNORECASE)
_MONTHS = ("january|february|march|april|may|june|july|august|september|october|november|december")
_DATE_RE = re.compile(r"\b(" + _MONTHS + r")\s+(\d{1,2})(?:st|nd|rd|th)?(,?\s+(\d{4}))?\b", re.IGNORECASE)
_YEAR_RE = re.compile(r"\b(1[1-9]\d\d|20\d\d)\b(?!\s*(?:%|percent|pounds|dollars|people|men|miles|feet|times))")
_DECIMAL_RE = re.compile(r"\b(\d[\d,]*)\.(\d+)\b")
_NUMBER_RE = re.compile(r"\b\d[\d,]*\b")


def _int(s: str) -> int:
    return int(s.replace(",", ""))


def _year(y: int) -> str:
    if 2000 <= y < 2010 or y % 1000 == 0:
        return num2words(y)
    hi, lo = divmod(y, 100)
    if lo == 0:
        return f"{num2words(hi)} hundred"
    if lo < 10:
        return f"{num2words(hi)} oh {num2words(lo)}"
    return f"{num2words(hi)} {num2words(lo)}"


def _money(m: re.Match) -> str:
    one, many, sub_one, sub_many = _CURRENCY[m.group(1)]
    whole, frac, scale = _int(m.group(2)), m.group(3), (m.group(4) or "").strip()
    if scale:
        amount = f"{whole}.{frac}" if frac else str(whole)
        return f"{num2words(float(amount)) if frac else num2words(whole)} {scale} {many}"
    cents = int(frac.ljust(2, "0")) if frac else 0
    parts = []
    if whole or not cents:
        parts.append(f"{num2words(whole)} {one if whole == 1 else many}")
    if cents:
        parts.append(f"{num2words(cents)} {sub_one if cents == 1 else sub_many}")
    return ", ".join(parts)


def _date(m: re.Match) -> str:
    out = f"{m.group(1)} {num2words(int(m.group(2)), to='ordinal')}"
    if m.group(4):
        out += f", {_year(int(m.group(4)))}"
    return out


def _decimal(m: re.Match) -> str:
    return f"{num2words(_int(m.group(1)))} point {' '.join(num2words(int(d)) for d in m.group(2))}"


def _ascii(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    text = text.replace("\u2014", ", ").replace("\u2013", "-")
    return "".join(ch for ch in text if ord(ch) < 128 or ch in "£€")


def normalize_text(text: str) -> str:
    """Spoken-form English text (see the module docstring); the case of words is kept.

    Returns:
        the normalised text (may be empty when the input held nothing speakable).
    """
    text = _ascii(text)
    text = _NO_RE.sub("number ", text)
    text = _ABBREV_RE.sub(lambda m: ABBREVIATIONS[m.group(1).lower()], text)
    text = _MONEY_RE.sub(_money, text)
    text = "".join(ch for ch in text if ord(ch) < 128)
    text = _PERCENT_RE.sub(lambda m: f"{m.group(1)} percent", text)
    text = _DATE_RE.sub(_date, text)
    text = _ORDINAL_RE.sub(lambda m: num2words(_int(m.group(1)), to="ordinal"), text)
    text = _YEAR_RE.sub(lambda m: _year(int(m.group(1))), text)
    text = _DECIMAL_RE.sub(_decimal, text)
    text = _NUMBER_RE.sub(lambda m: num2words(_int(m.group(0))), text)
    text = text.replace("&", " and ")
    return re.sub(r"\s+", " ", text).strip()
