"""How the simulated model cuts its text into tokens: like a byte-level BPE tokenizer.

The pre-tokenizer is cl100k's (GPT-4's) pattern, written for Python's `re`: a word takes the
space before it (" word"), punctuation runs stand alone ("." , "}\\n"), newlines and
indentation are tokens of their own ("\\n", "   "), digits go in groups of up to three. Then,
like BPE merges, long words are cut into pieces of 2-6 letters and runs of CJK characters
into single characters or pairs. The cuts depend only on the piece itself (hashed), so a
word is always tokenised the same way, in every process.
"""

from __future__ import annotations

import hashlib
import re

_PRE_TOKEN = re.compile(
    r"'(?i:s|t|re|ve|m|ll|d)(?![^\W\d_])"  # contractions: 's 't 're 've 'm 'll 'd
    r"|(?:[^\r\n\w]|_)?[^\W\d_]+"  # a word, with at most one non-letter before it
    r"|\d{1,3}"  # digits, three at most
    r"| ?(?:[^\s\w]|_)+[\r\n]*"  # punctuation, with the newlines right after it
    r"|\s*[\r\n]+"  # newlines (and the spaces before them)
    r"|\s+(?!\S)"  # spaces before spaces or the end (indentation)
    r"|\s+"
)

WHOLE_WORD_MAX = 8
"""Words of at most this many letters are usually one token ("garden"); longer ones are cut."""
PUNCTUATION_MAX = 3
"""Longer punctuation runs ("|---|---|") are cut into pieces of at most this many."""


def is_cjk(char: str) -> bool:
    """Han ideographs, kana and CJK punctuation: text written without spaces."""
    code = ord(char)
    return (
        0x3000 <= code <= 0x30FF  # CJK punctuation, hiragana, katakana
        or 0x3400 <= code <= 0x4DBF
        or 0x4E00 <= code <= 0x9FFF
        or 0xF900 <= code <= 0xFAFF
        or 0xFF00 <= code <= 0xFFEF  # full-width forms (，！？)
    )


def _hash(piece: str) -> int:
    return int.from_bytes(hashlib.sha256(piece.encode()).digest()[:8], "big")


def _split_word(piece: str) -> list[str]:
    """A long word as BPE would leave it: 2-6 letter pieces, the same cut every time."""
    lead = piece[0] if not piece[0].isalpha() else ""
    letters = piece[len(lead) :]
    seed = _hash(letters)
    # Common words up to 8 letters are whole tokens; about a third of them are "rare" here.
    if len(letters) <= 6 or (len(letters) <= WHOLE_WORD_MAX and seed % 3):
        return [piece]
    seed //= 3
    parts: list[str] = []
    start = 0
    while len(letters) - start > 6:
        size = 3 + seed % 4  # 3-6 letters
        seed //= 4
        if len(letters) - start - size < 2:
            size = len(letters) - start - 2
        parts.append(letters[start : start + size])
        start += size
    parts.append(letters[start:])
    parts[0] = lead + parts[0]
    return parts


def _split_cjk(piece: str) -> list[str]:
    """A run of CJK characters as single characters and pairs (common pairs merge)."""
    parts: list[str] = []
    i = 0
    while i < len(piece):
        pair = piece[i : i + 2]
        if len(pair) == 2 and pair.isalpha() and _hash(pair) % 3 != 0:
            parts.append(pair)
            i += 2
        else:
            parts.append(piece[i])
            i += 1
    return parts


def _split_punctuation(piece: str) -> list[str]:
    """ "|---|---|\n" as "|", "---", "|", "---", "|\n": runs of one kind, 3 at most."""
    body = piece.rstrip("\r\n")
    if len(body) <= PUNCTUATION_MAX:
        return [piece]
    parts = [
        run[i : i + PUNCTUATION_MAX]
        for run in (m.group() for m in re.finditer(r"(.)\1*", body))
        for i in range(0, len(run), PUNCTUATION_MAX)
    ]
    parts[-1] += piece[len(body) :]
    return parts


def _split(piece: str) -> list[str]:
    if any(is_cjk(char) for char in piece):
        lead = "" if is_cjk(piece[0]) else piece[0]
        parts = _split_cjk(piece[len(lead) :])
        return [lead + parts[0], *parts[1:]] if lead else parts
    if piece[-1].isalpha():
        return _split_word(piece) if len(piece) > 7 else [piece]
    if (not piece[-1].isspace() and not piece[-1].isdigit()) or piece.rstrip("\r\n") != piece:
        return _split_punctuation(piece)
    return [piece]


def tokenize(text: str) -> list[str]:
    """`text` as tokens; they join back to exactly `text`, and none is empty."""
    tokens: list[str] = []
    for match in _PRE_TOKEN.finditer(text):
        tokens.extend(_split(match.group()))
    return tokens
