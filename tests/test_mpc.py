from __future__ import annotations

from pathlib import Path

import marisa_trie
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qac.errors import InputError, ModelFormatError
from qac.mpc import MostPopular
from qac.text import normalize_prefix


def brute(counts: dict[str, int], prefix: str, k: int, min_count: int = 1) -> list[tuple[str, int]]:
    cand = sorted((-c, q) for q, c in counts.items() if q.startswith(prefix) and c >= min_count)
    return [(q, -c) for c, q in cand[:k]]


queries = st.text(alphabet="ab c", min_size=1, max_size=6).map(lambda s: " ".join(s.split()))
tables = st.dictionaries(queries.filter(bool), st.integers(1, 5), max_size=60)


@settings(max_examples=150, deadline=None)
@given(tables, st.integers(1, 4), st.integers(1, 3), st.integers(0, 8), st.integers(1, 3),
       st.data())
def test_matches_brute_force(counts: dict[str, int], cache_k: int, extra: int, k: int,
                             min_count: int, data: st.DataObject) -> None:
    # small cache_k/heavy so that heavy and light prefixes, and k > cache_k, all occur
    m = MostPopular(counts, min_count, cache_k=cache_k, heavy=cache_k + extra)
    prefixes = {""} | {q[:i] for q in counts for i in range(1, len(q) + 1)}
    prefixes.add(data.draw(st.text(alphabet="abcd ", max_size=4)))
    for p in sorted(prefixes):
        want = brute(counts, normalize_prefix(p), k, min_count)
        assert m.complete(p, k) == want, (p, k)
        # at_least counts without listing: the same verdict as the whole list
        q = normalize_prefix(p)
        n = len(brute(counts, q, 1 << 30, min_count))
        assert [m.at_least(q, j) for j in range(k + 2)] == [n >= j for j in range(k + 2)], (q, k)


def test_normalizes_and_merges() -> None:
    m = MostPopular({"New York": 2, "new  york": 3, "newton": 4, "  ": 9, "NEWS": 1})
    assert len(m) == 3
    assert m.complete("NEW") == [("new york", 5), ("newton", 4), ("news", 1)]
    assert m.complete("new ") == [("new york", 5)]  # the typed space ends the word
    assert m.complete("x") == []
    assert m.complete("", 1) == [("new york", 5)]
    assert m.complete("new", 0) == []
    assert m.count("newton") == 4 and m.count("nope") == 0


def test_min_count_and_bad_arguments() -> None:
    m = MostPopular({"a": 1, "ab": 2, "abc": 3}, min_count=2)
    assert m.complete("a") == [("abc", 3), ("ab", 2)]
    with pytest.raises(InputError):
        MostPopular({"a": 1}, min_count=0)
    with pytest.raises(InputError):
        MostPopular({"a": -1})
    with pytest.raises(InputError):
        MostPopular({"a": 1}, cache_k=4, heavy=2)
    with pytest.raises(InputError):
        m.complete("a", -1)


def test_empty_table() -> None:
    m = MostPopular({})
    assert m.complete("") == [] and m.complete("a") == [] and len(m) == 0


def test_from_parts_with_memmaps(tmp_path: Path) -> None:
    counts = {f"q{i % 37} {i}": (i * 7) % 11 + 1 for i in range(500)}
    m = MostPopular(counts, cache_k=5, heavy=8)
    m.trie.save(str(tmp_path / "mpc.marisa"))
    for name, arr in m.arrays().items():
        np.save(tmp_path / f"{name}.npy", arr, allow_pickle=False)
    trie = marisa_trie.Trie()
    trie.mmap(str(tmp_path / "mpc.marisa"))
    arrays = {name: np.load(tmp_path / f"{name}.npy", mmap_mode="r") for name in m.arrays()}
    loaded = MostPopular.from_parts(trie, arrays)
    for p in ["", "q", "q1", "q12 ", "q3 4", "z"]:
        for k in (3, 10):
            assert loaded.complete(p, k) == m.complete(p, k) == brute(counts, p, k)


def test_from_parts_rejects_bad_arrays() -> None:
    m = MostPopular({"a": 1, "b": 2})
    arrays = m.arrays()
    with pytest.raises(ModelFormatError, match="heavy_top"):
        MostPopular.from_parts(m.trie, {k: v for k, v in arrays.items() if k != "heavy_top"})
    with pytest.raises(ModelFormatError, match="counts"):
        MostPopular.from_parts(m.trie, {**arrays, "counts": arrays["counts"][:1]})
    with pytest.raises(ModelFormatError, match="out of range"):
        MostPopular.from_parts(m.trie, {**arrays, "heavy_top": arrays["heavy_top"] + 5})


def test_top_is_complete_of_a_normalized_prefix_and_cached() -> None:
    from qac.mpc import MostPopular

    m = MostPopular({f"q{i:03d}": i for i in range(200)})
    assert list(m.top("q1", 5)) == m.complete("Q1", 5)
    assert isinstance(m.top("q1", 5), tuple)  # shared by the cache: immutable
    before = m._top_cached.cache_info().hits
    m.top("q1", 5)
    assert m._top_cached.cache_info().hits == before + 1
    assert m.top("zz", 3) == ()
