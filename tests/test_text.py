import pytest
from hypothesis import given
from hypothesis import strategies as st

from qac.errors import InputError
from qac.text import MAX_TEXT_CHARS, normalize


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("Hello  World", "hello world"),
        ("  leading and trailing\t", "leading and trailing"),
        ("Ｆｕｌｌ　ＷＩＤＴＨ", "full width"),  # NFKC folds full-width forms
        ("Straße", "strasse"),  # casefold, not lower
        ("Wéather", "weather"),  # accents fold
        ("naïve CAFÉ", "naive cafe"),
        ("ｗｅａｔｈｅｒ", "weather"),  # full-width forms
        ("\u201cquoted\u201d \u2013 it\u2019s", '"quoted" - it\'s'),  # pasted typography
        ("Ærøskøbing", "aeroskobing"),  # letters that do not decompose
        ("हिन्दी", "हिन्दी"),  # other scripts' vowel signs stay
        ("a\x00b\x07c", "a b c"),  # control characters become spaces
        ("zero\u200bwidth", "zero width"),  # format characters too
        ("", ""),
        ("\n\t ", ""),
    ],
)
def test_normalize_examples(raw: str, want: str) -> None:
    assert normalize(raw) == want


def test_invalid_utf8_bytes_become_spaces_not_errors() -> None:
    assert normalize(b"caf\xc3\xa9 \xff\xfeshop") == "cafe shop"  # folded, too


def test_text_over_the_limit_is_an_input_error() -> None:
    normalize("a" * MAX_TEXT_CHARS)
    with pytest.raises(InputError, match="limit"):
        normalize("a" * (MAX_TEXT_CHARS + 1))


def test_non_text_is_an_input_error() -> None:
    with pytest.raises(InputError):
        normalize(12)  # type: ignore[arg-type]


@given(st.text(max_size=200))
def test_normalize_is_idempotent_and_clean(s: str) -> None:
    out = normalize(s)
    assert normalize(out) == out
    assert out == out.strip()
    assert "  " not in out
    assert all(ch.isprintable() for ch in out)
