"""Highlighting: a hit's title and a cropped text snippet with the query's terms marked.

A word is marked when the lexical stage would have indexed it under one of the query's
terms: the same token pattern, lowercasing, English stopwords and Snowball stemmer as
engine/index/lexical.py (imported from there, so the two cannot drift). The caller passes
the stemmed terms the lexical stage actually searched (after typo correction), so a
corrected word is marked too; `Highlighter.terms` gives them without correction.

Output is HTML: the source text escaped (`html.escape`, quotes included), and the caller's
pre/post tags inserted raw around each marked word. The tags are the client's own choice,
written into its own response; the request model caps them (request.MAX_TAG_LENGTH, 64
characters) and the snippet length (`crop_length`, 1..200 words), so this module only
rejects a crop below one word.

A word is a token of the lexical pattern, `\\w\\w+`: one-letter words ("a", "I", "5") are
kept in the snippet but not counted, and a run of CJK characters is one word.

Speed: Python's regex engine reads ~60 ns a character here, so tokenizing a 300-word text
costs about the whole budget (10 hits in well under a millisecond). Instead, matches are
found with str.find on the lowercased text, looking for each term's first letters: Snowball
English only rewrites a word's ending and adds at most one letter, so a word whose stem is
`s` starts with s[:-1], or s[:-2] for a stem in "ie" ("dying" → "die"), true of all 6.3M
distinct words and inflections tried; each hit is checked by stemming the whole word. Words
are counted and the snippet's edges found on a one-byte-a-character copy of the text
(bytes.translate, bytes.find), also in C.
"""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Collection

from engine.core.errors import InvalidInput
from engine.index.lexical import _TOKEN, _bm25s, _stemmer

ELLIPSIS = "…"
_WORD_RUN = re.compile(r"\w+")
_NON_ASCII_NON_WORD = re.compile(r"[^\x00-\x7f\w]")
# bytes.translate tables for _Words: ASCII word characters → "a", other ASCII → " ", a UTF-8
# lead byte → "N" (decided later, character by character); continuation bytes deleted.
_A, _SPACE = ord("a"), ord(" ")
_SYMBOL = bytes(
    (_A if chr(i).isalnum() or i == ord("_") else _SPACE) if i < 0x80 else ord("N")
    for i in range(256)
)
_CONTINUATION = bytes(range(0x80, 0xC0))
# Words seen, original case → stems (none for a stopword, two if lowercasing splits it). A
# catalog's vocabulary is some 10^5 words; past this many the cache starts over.
_CACHE_LIMIT = 200_000

Match = tuple[int, int, str]  # a marked word: (start, end) character offsets, its term


class Highlighter:
    """Marks query terms in result fields; build one per process and share it (thread-safe)."""

    def __init__(self) -> None:
        self._stemmer = _stemmer()
        # PyStemmer objects are not thread-safe; only cache misses reach the stemmer.
        self._lock = threading.Lock()
        self._stopwords = frozenset(_bm25s().stopwords.STOPWORDS_EN)
        self._cache: dict[str, tuple[str, ...]] = {}

    def terms(self, query: str) -> frozenset[str]:
        """The query's stemmed terms as the lexical stage makes them, without typo correction."""
        return frozenset(stem for word in _TOKEN.findall(query) for stem in self._stems(word))

    def highlight(
        self,
        terms: Collection[str],
        title: str,
        text: str | None,
        *,
        pre: str = "<em>",
        post: str = "</em>",
        crop_words: int = 24,
    ) -> dict[str, str]:
        """{"title": marked title, "text": marked snippet of crop_words words}; no "text" key
        when text is None.

        terms: stemmed query terms (LexicalIndex's). The snippet is the window of crop_words
        words holding the most distinct terms, then the most matches, then the earliest,
        centred on its matches, with "…" on each cut side; the first words when none match.
        Raises InvalidInput when crop_words < 1.
        """
        if crop_words < 1:
            raise InvalidInput(f"crop_words must be at least 1, got {crop_words!r}")
        wanted = terms if isinstance(terms, (set, frozenset)) else frozenset(terms)
        probes = _probes(wanted)
        title = title.strip()
        marked = self._find(wanted, probes, title)
        out = {"title": _render(title, marked, 0, len(title), pre, post)}
        if text is not None:
            text = text.strip()
            matches = self._find(wanted, probes, text)
            start, end = _window(text, matches, crop_words)
            out["text"] = _render(text, matches, start, end, pre, post)
        return out

    def matches(self, terms: Collection[str], text: str) -> list[Match]:
        """The words of text whose stem is in terms, in order."""
        return self._find(terms, _probes(terms), text)

    def _find(self, terms: Collection[str], probes: list[str], text: str) -> list[Match]:
        if not probes:
            return []
        low = text.lower()
        if len(low) != len(text):  # lowercasing added characters ("İ"): offsets differ
            return self.matches_by_tokens(terms, text)
        found: dict[int, Match | None] = {}  # word start → its match, None when checked
        for probe in probes:
            at = low.find(probe)
            while at >= 0:
                if at in found or (at > 0 and _is_word(low[at - 1])):
                    at = low.find(probe, at + 1)  # checked already, or inside a word
                    continue
                run = _WORD_RUN.match(text, at)  # None for a term of no word characters
                end = run.end() if run else at + 1
                found[at] = self._match(terms, text, at, end) if end - at > 1 else None
                at = low.find(probe, end)
        return sorted(match for match in found.values() if match is not None)

    def matches_by_tokens(self, terms: Collection[str], text: str) -> list[Match]:
        """matches(), reading every token: the slow path, and its oracle in the tests."""
        if not terms:
            return []
        found = (self._match(terms, text, *m.span()) for m in _TOKEN.finditer(text))
        return [match for match in found if match is not None]

    def _match(self, terms: Collection[str], text: str, start: int, end: int) -> Match | None:
        word = text[start:end]
        stems = self._cache.get(word)
        if stems is None:
            stems = self._stems(word)
        for stem in stems:
            if stem in terms:
                return start, end, stem
        return None

    def _stems(self, word: str) -> tuple[str, ...]:
        """The word's stems as the lexical index has them, none for a stopword (cached)."""
        low = word.lower()
        # Lowercasing can split a word ("aİb" → "ai" + a combining dot, not \w, + "b"); the
        # index tokenizes the lowercased text, so re-tokenize: usually one part.
        parts = [low] if _TOKEN.fullmatch(low) else _TOKEN.findall(low)
        kept = [part for part in parts if part not in self._stopwords]
        stems: tuple[str, ...] = ()
        if kept:
            with self._lock:
                stems = tuple(self._stemmer.stemWords(kept))
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[word] = stems
        return stems


def _probes(terms: Collection[str]) -> list[str]:
    """What the words stemmed to the terms start with (lowercased), in the fewest strings."""
    probes: list[str] = []
    for probe in sorted({_probe(term) for term in terms if term}):
        # "ma" finds every word "mark" would: sorted, a probe comes after its prefixes
        if not probes or not probe.startswith(probes[-1]):
            probes.append(probe)
    return probes


def _probe(term: str) -> str:
    """What every word stemmed to `term` starts with: all but the stem's last letter, or
    last two for a stem in "ie" (see the module's docstring)."""
    return term[: max(1, len(term) - (2 if term.endswith("ie") else 1))]


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"  # what the regex engine calls \w


def _window(text: str, matches: list[Match], size: int) -> tuple[int, int]:
    """Character range of the snippet: `size` words around the best run of matches,
    widened to the text's edge where no word is left on that side."""
    words = _Words(text)
    if not matches:
        end, found = words.forward(0, size)
        return 0, (len(text) if not words.has_after(end) else end)
    # Word positions relative to the first match: words between matches, counted in C
    positions = [0]
    for (_, prev_end, _), (start, _, _) in zip(matches, matches[1:], strict=False):
        positions.append(positions[-1] + 1 + words.count(prev_end, start))
    lo, hi = _best_run(positions, [term for _, _, term in matches], size)
    extra = size - (positions[hi] - positions[lo] + 1)  # words to add around the run
    # Half the extra words on each side; a side that reaches the edge gives the rest to the
    # other side.
    start, n_before = words.back(matches[lo][0], extra // 2)
    end, n_after = words.forward(matches[hi][1], extra - n_before)
    if n_before + n_after < extra:
        start, n_before = words.back(matches[lo][0], extra - n_after)
    if not words.has_before(start):
        start = 0
    if not words.has_after(end):
        end = len(text)
    return start, end


class _Words:
    """Where the words of a text are, found with bytes.find and bytes.count (C speed).

    One byte a character, b"a" for a word character (\\w) and b" " otherwise, padded with
    b" " on each side: byte i stands for character i - 1, so a word starts at character i
    exactly where b" aa" starts at byte i.
    """

    def __init__(self, text: str) -> None:
        # UTF-8 with continuation bytes deleted leaves one byte a character.
        marks = text.encode("utf-8", "surrogatepass").translate(_SYMBOL, _CONTINUATION)
        if not text.isascii():
            marks = _mark_non_ascii(text, marks)
        self._marks = b" " + marks + b" "

    def count(self, start: int, end: int) -> int:
        """Words within text[start:end], start and end not inside a word."""
        return self._marks.count(b" aa", start, end + 1)

    def forward(self, end: int, k: int) -> tuple[int, int]:
        """(end of the k-th word after offset `end`, words found: fewer near the end)."""
        for found in range(k):
            start = self._marks.find(b" aa", end)
            if start < 0:
                return end, found
            end = self._marks.find(b" ", start + 1) - 1
        return end, k

    def back(self, start: int, k: int) -> tuple[int, int]:
        """(start of the k-th word before the word at `start`, words found)."""
        for found in range(k):
            before = self._marks.rfind(b" aa", 0, start + 1)
            if before < 0:
                return start, found
            start = before
        return start, k

    def has_before(self, start: int) -> bool:
        return self._marks.rfind(b" aa", 0, start + 1) >= 0

    def has_after(self, end: int) -> bool:
        return self._marks.find(b" aa", end) >= 0


def _mark_non_ascii(text: str, marks: bytes) -> bytes:
    """marks with each b"N" (a non-ASCII character) made b"a" or b" " as \\w says."""
    out = bytearray(marks)
    if marks.count(b"N") <= 64:  # a few accents or dashes: look at each
        at = out.find(b"N")
        while at >= 0:
            out[at] = _A if _is_word(text[at]) else _SPACE
            at = out.find(b"N", at + 1)
    else:  # another script: most are letters, ask the regex engine for the rest
        out = out.replace(b"N", b"a")
        for match in _NON_ASCII_NON_WORD.finditer(text):
            out[match.start()] = _SPACE
    return bytes(out)


def _best_run(positions: list[int], terms: list[str], size: int) -> tuple[int, int]:
    """(first, last) match indices of the run within `size` words with the most distinct
    terms, then the most matches, then the earliest."""
    counts: dict[str, int] = {}  # term → matches inside the current run
    best = (0, 0, 0, 0)  # (distinct terms, matches, first, last)
    last = 0  # one past the run's last match
    for first, position in enumerate(positions):
        while last < len(positions) and positions[last] < position + size:
            counts[terms[last]] = counts.get(terms[last], 0) + 1
            last += 1
        run = (len(counts), last - first)
        if run > best[:2]:  # strictly better: ties keep the earlier run
            best = (*run, first, last - 1)
        counts[terms[first]] -= 1
        if not counts[terms[first]]:
            del counts[terms[first]]
    return best[2], best[3]


def _render(text: str, matches: list[Match], start: int, end: int, pre: str, post: str) -> str:
    """text[start:end] escaped, with marked words wrapped and "…" where a side was cut.

    Words are \\w only, so they never need escaping.
    """
    out = [ELLIPSIS] if start > 0 else []
    done = start
    for word_start, word_end, _ in matches:
        if word_start < start:
            continue
        if word_end > end:
            break
        out += (html.escape(text[done:word_start]), pre, text[word_start:word_end], post)
        done = word_end
    out.append(html.escape(text[done:end]))
    if end < len(text):
        out.append(ELLIPSIS)
    return "".join(out)
