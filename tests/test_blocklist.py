from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qac.blocklist import Blocklist
from qac.errors import InputError
from qac.text import normalize


def test_from_file_words_and_stems(tmp_path: Path) -> None:
    path = tmp_path / "block.txt"
    path.write_text("# comment\n\nBadword\n  spam*  \n# egg\n4chan\n", encoding="utf-8")
    b = Blocklist.from_file(path)
    assert len(b) == 3
    assert b.blocks("a BADWORD here")
    assert b.blocks("badword")
    assert not b.blocks("badwords")            # exact entry: no prefix match
    assert not b.blocks("abadword")
    assert b.blocks("spammers united") and b.blocks("spam")
    assert not b.blocks("nospam") and not b.blocks("egg")
    assert b.blocks("visit 4chan.org")         # tokens are runs of letters/digits
    assert b.blocks("x_spam_y")                # "_" separates words too
    assert not b.blocks("") and not b.blocks("plain query")


def test_unicode_normalized() -> None:
    b = Blocklist.from_lines(["straße", "ｆｏｏ*"])
    assert b.blocks("STRASSE")                 # casefold
    assert b.blocks("ｆｏｏｂａｒ")             # NFKC full-width
    assert b.blocks("foobar")


def test_bad_entries(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="x.txt:2: .*'x-rated'"):
        Blocklist.from_lines(["ok", "x-rated"], "x.txt")
    with pytest.raises(InputError, match="not one word"):
        Blocklist.from_lines(["*"])
    with pytest.raises(InputError, match="two words"):
        Blocklist.from_lines(["two words"])
    with pytest.raises(InputError, match="cannot read"):
        Blocklist.from_file(tmp_path / "missing.txt")


def test_default_and_empty() -> None:
    d = Blocklist.default()
    assert len(d) > 10
    assert not d.blocks("weather boston")
    assert d.blocks("hentai")                  # an exact entry of the shipped list
    assert not Blocklist.empty().blocks("hentai")


@pytest.mark.parametrize("text", ["cocktail recipes", "cockatoo", "cocker spaniel",
                                  "milford ct", "thomas kinkade", "kinkos", "the kinks",
                                  "pussycat dolls", "xxxl shirts", "rapeseed oil",
                                  "fire retardant", "ford escorted tours"])
def test_default_list_lets_innocent_words_through(text: str) -> None:
    """Real AOL queries a stem of the shipped list used to hide (cock*, milf*, ...)."""
    assert not Blocklist.default().blocks(text)


@pytest.mark.parametrize("text", ["cocks", "cocksucker", "milf", "milf.com", "kinky",
                                  "pussy", "xxx", "xxx.com", "xxxporn videos", "rape",
                                  "penises", "escorts"])
def test_default_list_still_blocks_the_words_its_stems_were_for(text: str) -> None:
    assert Blocklist.default().blocks(text)


def reference_blocks(b: Blocklist, text: str) -> bool:
    """The definition: some word token is an entry or starts with a stem."""
    return any(w in b.words or any(w.startswith(s) for s in b.stems)
               for w in re.findall(r"[^\W_]+", normalize(text)))


entry = st.text(alphabet="abé1", min_size=1, max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.sets(entry, max_size=4), st.sets(entry, max_size=3),
       st.text(alphabet="abé1 _-.*", max_size=14))
def test_regex_matches_token_definition(words: set[str], stems: set[str], text: str) -> None:
    b = Blocklist(words, stems)
    assert b.blocks(text) == reference_blocks(b, text)
