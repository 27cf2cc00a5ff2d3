"""Highlighting: the lexical stage's words are marked, everything else escaped, the snippet
is the densest window of crop_words words."""

from __future__ import annotations

import html
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.errors import InvalidInput
from engine.index.lexical import LexicalIndex
from engine.search.highlight import ELLIPSIS, Highlighter

WORD = re.compile(r"(?u)\b\w\w+\b")
MARKED = re.compile(r"<em>(.*?)</em>")


@pytest.fixture(scope="module")
def hl() -> Highlighter:
    return Highlighter()


@pytest.fixture(scope="module")
def lexical() -> LexicalIndex:
    return LexicalIndex.build(["one tiny text"])


def _plain(marked: str, pre: str = "<em>", post: str = "</em>") -> str:
    return html.unescape(marked.replace(pre, "").replace(post, ""))


def _filler(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def test_stems_match_every_inflection(hl: Highlighter) -> None:
    out = hl.highlight({"hike"}, "Hikes and hiking", "She hiked; he HIKES, we hike.")
    assert out["title"] == "<em>Hikes</em> and <em>hiking</em>"
    assert out["text"] == "She <em>hiked</em>; he <em>HIKES</em>, we <em>hike</em>."


def test_terms_are_the_lexical_stages(hl: Highlighter, lexical: LexicalIndex) -> None:
    query = "The hiking Boots of the Mountains, and a café!"
    assert (
        hl.terms(query)
        == frozenset(lexical.tokens(query))
        == {
            "hike",
            "boot",
            "mountain",
            "café",
        }
    )
    assert hl.terms("the and of") == frozenset()


def test_stopwords_are_never_marked(hl: Highlighter) -> None:
    # "will" is a stopword: the index never saw it, even though "wills" stems to "will"
    terms = hl.terms("wills")
    assert terms == {"will"}
    out = hl.highlight(terms, "The will of the people", "Their wills, and what they will do.")
    assert out["title"] == "The will of the people"
    assert out["text"] == "Their <em>wills</em>, and what they will do."


def test_html_is_escaped_and_tags_are_raw(hl: Highlighter) -> None:
    title = "<script>alert(\"hike\")</script> & 'co'"
    text = "<img src=x onerror=alert(1)> hike <b>bold</b>"
    out = hl.highlight({"hike"}, title, text)
    assert "<script" not in out["title"] and "<img" not in out["text"]
    assert out["title"] == (
        "&lt;script&gt;alert(&quot;<em>hike</em>&quot;)&lt;/script&gt; &amp; &#x27;co&#x27;"
    )
    assert out["text"] == (
        "&lt;img src=x onerror=alert(1)&gt; <em>hike</em> &lt;b&gt;bold&lt;/b&gt;"
    )
    assert _plain(out["title"]) == title


def test_custom_tags(hl: Highlighter) -> None:
    out = hl.highlight({"boot"}, "Boots boots", "<boot>", pre='<mark class="q">', post="</mark>")
    assert out["title"] == '<mark class="q">Boots</mark> <mark class="q">boots</mark>'
    assert out["text"] == '&lt;<mark class="q">boot</mark>&gt;'
    plain = hl.highlight({"boot"}, "Boots", None, pre="[", post="]")
    assert plain == {"title": "[Boots]"}


def test_crop_picks_the_window_with_the_most_distinct_terms(hl: Highlighter) -> None:
    # early: "hike" three times (one term); later: "hike" and "boot" (two terms) wins
    text = f"hike hike hike {_filler(40)} good hike boots here {_filler(40)}"
    out = hl.highlight({"hike", "boot"}, "t", text, crop_words=6)["text"]
    assert out == f"{ELLIPSIS}w39 good <em>hike</em> <em>boots</em> here w0{ELLIPSIS}"


def test_crop_ties_go_to_more_matches_then_the_earliest(hl: Highlighter) -> None:
    text = f"{_filler(30)} hike x {_filler(30)} hike hike {_filler(30)} hike hike"
    out = hl.highlight({"hike"}, "t", text, crop_words=4)["text"]
    # a lone "hike" first, then two pairs: the first pair wins, centred in its window
    assert out == f"{ELLIPSIS}w29 <em>hike</em> <em>hike</em> w0{ELLIPSIS}"
    one = hl.highlight({"hike"}, "t", f"{_filler(30)} hike {_filler(30)} hike", crop_words=3)
    assert one["text"] == f"{ELLIPSIS}w29 <em>hike</em> w0{ELLIPSIS}"


def test_ellipses_only_on_cut_sides(hl: Highlighter) -> None:
    text = f"({_filler(10)}) hike."
    start = hl.highlight({"w0"}, "t", text, crop_words=3)["text"]
    assert start == f"(<em>w0</em> w1 w2{ELLIPSIS}"
    end = hl.highlight({"hike"}, "t", text, crop_words=3)["text"]
    assert end == f"{ELLIPSIS}w8 w9) <em>hike</em>."
    whole = hl.highlight({"hike"}, "t", text, crop_words=11)["text"]
    assert whole == f"({_filler(10)}) <em>hike</em>."


def test_no_match_gives_the_first_words(hl: Highlighter) -> None:
    out = hl.highlight({"absent"}, "A title", f"  {_filler(50)}  ", crop_words=5)
    assert out == {"title": "A title", "text": f"w0 w1 w2 w3 w4{ELLIPSIS}"}
    assert hl.highlight(set(), "Hike", "hike")["text"] == "hike"


def test_matches_at_the_very_start_and_end(hl: Highlighter) -> None:
    out = hl.highlight({"hike"}, "Hike", "hike in the middle then hike")
    assert out == {
        "title": "<em>Hike</em>",
        "text": "<em>hike</em> in the middle then <em>hike</em>",
    }
    tail = hl.highlight({"hike"}, "t", f"{_filler(30)} hike", crop_words=4)["text"]
    assert tail == f"{ELLIPSIS}w27 w28 w29 <em>hike</em>"


def test_unicode_words(hl: Highlighter) -> None:
    terms = hl.terms("Café naïveté Zürich")
    out = hl.highlight(terms, "CAFÉS in zürich", "Une naïveté charmante, 東京 café.")
    assert out["title"] == "<em>CAFÉS</em> in <em>zürich</em>"
    assert out["text"] == "Une <em>naïveté</em> charmante, 東京 <em>café</em>."
    # lowercasing "İ" adds a combining dot, splitting the word as the index splits it
    assert hl.highlight(hl.terms("stanbul"), "İstanbul", None)["title"] == "<em>İstanbul</em>"
    assert hl.highlight({"hike"}, "aİhike", None)["title"] == "<em>aİhike</em>"


def test_empty_and_missing_text(hl: Highlighter) -> None:
    assert hl.highlight({"hike"}, "Hike", None) == {"title": "<em>Hike</em>"}
    assert hl.highlight({"hike"}, "Hike", "") == {"title": "<em>Hike</em>", "text": ""}
    assert hl.highlight({"hike"}, "", " <!> ") == {"title": "", "text": "&lt;!&gt;"}


def test_a_term_only_in_the_text(hl: Highlighter) -> None:
    out = hl.highlight(hl.terms("trail boots"), "Walking shoes", "Light boots for the trail.")
    assert out["title"] == "Walking shoes"
    assert out["text"] == "Light <em>boots</em> for the <em>trail</em>."


def test_crop_below_one_word_is_invalid(hl: Highlighter) -> None:
    with pytest.raises(InvalidInput, match="crop_words"):
        hl.highlight({"hike"}, "t", "text", crop_words=0)


_text = st.lists(
    st.sampled_from(
        list("ab cdé İ<>&\"'.,\n東—’\u0301\u00a0ж_2") + ["hike", "hikes", "the", "will", "жжж"]
    ),
    max_size=120,
).map("".join)


@settings(max_examples=200, deadline=None)
@given(title=_text, text=_text, crop=st.integers(1, 12), query=_text)
def test_marks_the_lexical_tokens_and_keeps_the_source(
    hl: Highlighter, lexical: LexicalIndex, title: str, text: str, crop: int, query: str
) -> None:
    terms = frozenset(lexical.tokens(query))
    out = hl.highlight(terms, title, text, crop_words=crop)
    # all of the title, escaped: no raw markup but the tags
    assert _plain(out["title"]) == title.strip()
    assert "<" not in MARKED.sub("", out["title"]).replace("</em>", "")
    # a marked word is one the index has under a query term; an unmarked one is not
    for field in (out["title"], out["text"]):
        for word in MARKED.findall(field):
            assert set(lexical.tokens(word)) & terms
        for word in WORD.findall(_plain(MARKED.sub("", field))):
            assert not set(lexical.tokens(word)) & terms
    # the snippet: a piece of the text, crop words long, an ellipsis where it was cut
    snippet = _plain(out["text"])
    inner = snippet.removeprefix(ELLIPSIS).removesuffix(ELLIPSIS)
    assert inner in text
    assert len(WORD.findall(inner)) == min(crop, len(WORD.findall(text)))


_VOCAB = ["hike", "hiking", "Dying", "die", "lying", "lie", "happy", "happiness", "İstanbul"]
_VOCAB += ["aİhike", "naïveté", "the", "will", "x", "_a", "东京", "possibility", "possible"]


@settings(max_examples=300, deadline=None)
@given(
    words=st.lists(st.sampled_from(_VOCAB), max_size=30),
    gaps=st.lists(st.sampled_from([" ", ", ", "-", "<", "&&", "\n", "é", ""]), max_size=30),
    query=st.lists(st.sampled_from(_VOCAB + ["c++", "pos"]), min_size=1, max_size=3),
)
def test_finding_words_by_their_stems_start_reads_every_word(
    hl: Highlighter, words: list[str], gaps: list[str], query: list[str]
) -> None:
    text = "".join(w + g for w, g in zip(words, gaps + [" "] * len(words), strict=False))
    terms = hl.terms(" ".join(query)) | {q for q in query if not q.isalnum()}
    assert hl.matches(terms, text) == hl.matches_by_tokens(terms, text)


def test_words_in_a_long_text_are_counted_exactly(hl: Highlighter) -> None:
    # matches 23 words apart share a 24-word window; 24 apart they do not
    near = f"hike {_filler(22)} boot {_filler(60)}"
    assert "<em>boot</em>" in hl.highlight({"hike", "boot"}, "t", near)["text"]
    far = f"hike {_filler(23)} boot {_filler(60)}"
    snippet = hl.highlight({"hike", "boot"}, "t", far)["text"]
    assert snippet.count("<em>") == 1
    long_words = f"{'x' * 500} hike {'y' * 500} {_filler(40)} boot"
    out = hl.highlight({"hike", "boot"}, "t", long_words, crop_words=3)["text"]
    assert out == f"{'x' * 500} <em>hike</em> {'y' * 500}{ELLIPSIS}"


def test_long_texts_in_other_scripts(hl: Highlighter) -> None:
    # many non-ASCII characters, letters and punctuation: words counted as the regex counts
    text = " ".join(f"слово{i}, «ещё»—тест’{i}" for i in range(40)) + " hike — конец."
    out = hl.highlight({"hike"}, "t", text, crop_words=5)["text"]
    # "тест’39" is two words, "тест" and "39"; one word is left after the match
    assert out == f"{ELLIPSIS}ещё»—тест’39 <em>hike</em> — конец."
    first = _plain(hl.highlight({"absent"}, "t", text, crop_words=7)["text"])
    assert first == f"слово0, «ещё»—тест’0 слово1, «ещё»—тест’1 слово2{ELLIPSIS}"
