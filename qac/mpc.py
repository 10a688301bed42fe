"""Most-popular completion (MPC): the k most frequent past queries that start with a prefix.

The baseline every QAC figure is shown beside, and the fallback of the completion
policy. Queries live in a ``marisa_trie.Trie``; ``counts[i]`` is the count of the
query with trie key id ``i``.

Speed: a short prefix ("s") can match tens of thousands of queries, so enumerating
the trie per keystroke would be slow exactly where users type most. At build time
every *heavy* prefix -- one matched by more than ``heavy`` queries, whatever its
length -- gets its top ``cache_k`` key ids precomputed (``heavy_top``); every other
prefix matches at most ``heavy`` queries, which the trie enumerates in a few
microseconds. A threshold on the match count, rather than a cap on prefix length,
bounds the work of every call: long prefixes such as "www.google." can still match
thousands of queries.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import itertools
import os
from collections import Counter
from collections.abc import Mapping

import marisa_trie
import numpy as np

from qac.errors import InputError, ModelFormatError
from qac.text import normalize, normalize_prefix

DEFAULT_CACHE_K = 16
DEFAULT_HEAVY = 32
#: answers of recent (prefix, k) lookups kept per table: users type the same short
#: prefixes over and over, and a hit skips the trie walk and the key restores
LOOKUP_CACHE = 4096
_MAX_CHAR = "\U0010ffff"  # sorts after any character a normalized query holds


class MostPopular:
    """Most-popular completion over a fixed query -> count table.

    ``counts`` keys are normalized with :func:`qac.text.normalize` (counts of keys
    that become equal are added; empty keys are dropped); queries with a count below
    ``min_count`` are left out. ``cache_k`` is how many completions are precomputed
    per heavy prefix (``complete`` with a larger ``k`` still works, only slower) and
    ``heavy`` the match count above which a prefix is precomputed (``>= cache_k``).
    """

    trie: marisa_trie.Trie

    def __init__(self, counts: Mapping[str, int], min_count: int = 1, *,
                 cache_k: int = DEFAULT_CACHE_K, heavy: int = DEFAULT_HEAVY) -> None:
        if min_count < 1:
            raise InputError(f"min_count must be >= 1, got {min_count}")
        if cache_k < 1 or heavy < cache_k:
            raise InputError(f"need 1 <= cache_k <= heavy, got cache_k={cache_k}, "
                             f"heavy={heavy}")
        merged: Counter[str] = Counter()
        for query, count in counts.items():
            if count < 0:
                raise InputError(f"count of {query[:40]!r} is negative ({count})")
            q = normalize(query)
            if q:
                merged[q] += count
        kept = {q: c for q, c in merged.items() if c >= min_count}
        trie = marisa_trie.Trie(kept.keys())
        keys = sorted(kept)  # lexicographic: the keys under a prefix are one slice
        key_id = dict(trie.iteritems())
        ids = np.array([key_id[q] for q in keys], dtype=np.int64)
        cnt = np.array([kept[q] for q in keys], dtype=np.int64)
        counts_arr = np.zeros(len(keys), dtype=np.int64)
        counts_arr[ids] = cnt
        # rank[j]: position of keys[j] in (count descending, string) order
        order = np.lexsort((np.arange(len(keys)), -cnt))
        rank = np.empty(len(keys), dtype=np.int64)
        rank[order] = np.arange(len(keys))

        prefixes = sorted(_heavy_prefixes(keys, heavy))
        top = np.full((len(prefixes), cache_k), -1, dtype=np.int32)
        for row, p in enumerate(prefixes):
            lo = bisect.bisect_left(keys, p)
            hi = bisect.bisect_left(keys, p + _MAX_CHAR, lo)
            seg = rank[lo:hi]
            if len(seg) > cache_k:
                seg = seg[np.argpartition(seg, cache_k)[:cache_k]]
            best = np.sort(seg)
            top[row, :len(best)] = ids[order[best]]
        self._attach(trie, {
            "counts": counts_arr,
            "heavy_prefix": np.array(prefixes, dtype=str),
            "heavy_top": top,
        })

    @classmethod
    def from_parts(cls, trie: marisa_trie.Trie, arrays: Mapping[str, np.ndarray],
                   where: str = "mpc") -> MostPopular:
        """Rebuild from ``trie`` and ``arrays()`` output (arrays may be read-only memmaps);
        errors name the files as ``<where>.<array>.npy``."""
        self = cls.__new__(cls)
        self._attach(trie, arrays, where)
        return self

    def _attach(self, trie: marisa_trie.Trie, arrays: Mapping[str, np.ndarray],
                where: str = "mpc") -> None:
        def bad(name: str, what: str) -> ModelFormatError:
            return ModelFormatError(f"{where}.{name}.npy: {what}", f"{where}.{name}.npy")

        for name in ("counts", "heavy_prefix", "heavy_top"):
            if name not in arrays:
                raise bad(name, "missing")
        counts, prefix, top = arrays["counts"], arrays["heavy_prefix"], arrays["heavy_top"]
        # int64 exactly: the lookups negate counts, which wraps in an unsigned or narrow
        # dtype (a uint8 copy answered negative counts: tests/fuzz/fuzz_loader.py)
        if counts.ndim != 1 or counts.dtype != np.int64 or len(counts) != len(trie):
            raise bad("counts", f"1-D int64 of length {len(trie)} (the trie size) needed, "
                                f"got {counts.dtype} {counts.shape}")
        if counts.size and int(counts.min()) < 0:
            raise bad("counts", "a negative count")
        if prefix.ndim != 1 or prefix.dtype.kind != "U":
            raise bad("heavy_prefix", f"a 1-D str array needed, got {prefix.dtype} "
                                      f"{prefix.shape}")
        if (top.ndim != 2 or top.dtype.kind not in "iu" or top.shape[0] != len(prefix)
                or top.shape[1] < 1):
            raise bad("heavy_top", f"2-D integers with {len(prefix)} rows needed, got "
                                   f"{top.dtype} {top.shape}")
        if top.size and (int(top.min()) < -1 or int(top.max()) >= len(trie)):
            raise bad("heavy_top", "key ids out of range")
        self.trie = trie
        # plain ndarray views of the (memory-mapped) arrays: np.memmap's per-index
        # bookkeeping costs more than the lookups themselves
        self._counts = counts.view(np.ndarray)
        self._prefix = prefix
        self._top = top.view(np.ndarray)
        self._cache_k = int(top.shape[1])
        # A small dict (one entry per heavy prefix) turns the lookup into one hash probe.
        self._row = {p: i for i, p in enumerate(prefix.tolist())}
        self._top_cached = functools.lru_cache(maxsize=LOOKUP_CACHE)(self._lookup)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays to persist beside ``trie`` (see :meth:`from_parts`).

        ``counts`` int64 [n_queries] by trie key id; ``heavy_prefix`` str [H], sorted;
        ``heavy_top`` int32 [H, cache_k], key ids best first, -1 padded.
        """
        return {"counts": self._counts, "heavy_prefix": self._prefix, "heavy_top": self._top}

    def __len__(self) -> int:
        return len(self.trie)

    def count(self, query: str) -> int:
        """Count of one (normalized) query; 0 if unknown."""
        key_id = self.trie.get(query)
        return 0 if key_id is None else int(self._counts[key_id])

    def at_least(self, p: str, n: int) -> bool:
        """Whether ``n`` or more queries start with the (normalized) prefix ``p``,
        without listing them: a precomputed prefix's list says (up to ``cache_k``);
        any other has at most ``heavy``, counted up to ``n``."""
        if n <= 0:
            return True
        row = self._row.get(p)
        if row is not None and n <= self._cache_k:
            return bool(self._top[row, n - 1] >= 0)
        return sum(1 for _ in itertools.islice(self.trie.iterkeys(p), n)) >= n

    def complete(self, prefix: str, k: int = 10) -> list[tuple[str, int]]:
        """The k most frequent queries starting with ``prefix``, as (query, count).

        Sorted by count descending, ties by the query string. The prefix is normalized
        with :func:`normalize_prefix`; the empty prefix gives the overall top k.
        """
        if k < 0:
            raise InputError(f"k must be >= 0, got {k}")
        return list(self.top(normalize_prefix(prefix), k))

    def top(self, p: str, k: int) -> tuple[tuple[str, int], ...]:
        """:meth:`complete` of an already normalized prefix (the per-keystroke callers
        hold one), k >= 0, as a tuple; the last :data:`LOOKUP_CACHE` answers are kept."""
        return self._top_cached(p, k)

    def _lookup(self, p: str, k: int) -> tuple[tuple[str, int], ...]:
        row = self._row.get(p)
        restore = self.trie.restore_key
        counts = self._counts
        if row is not None and k <= self._cache_k:
            ids = self._top[row, :k].tolist()
            if ids and ids[-1] < 0:
                ids = [i for i in ids if i >= 0]
            return tuple(zip(map(restore, ids), counts[ids].tolist(), strict=True))
        items = self.trie.items(p)
        if not items:
            return ()
        neg = (-counts[[i for _, i in items]]).tolist()
        cand = zip(neg, [key for key, _ in items], strict=True)
        # a light prefix has at most `heavy` matches: sorting them all is cheapest
        best = sorted(cand)[:k] if row is None else heapq.nsmallest(k, cand)
        return tuple((key, -c) for c, key in best)


def _heavy_prefixes(keys: list[str], heavy: int) -> set[str]:
    """Every prefix (including "") that more than ``heavy`` of the sorted ``keys`` start with.

    p is heavy iff some run of heavy+1 consecutive sorted keys all start with p, i.e.
    iff p is a prefix of keys[i][:lcp(keys[i], keys[i + heavy])] for some i: one pass
    over the keys, then the prefix closure of the (few) distinct deepest prefixes.
    """
    deepest = {os.path.commonprefix([a, b]) for a, b in zip(keys, keys[heavy:], strict=False)}
    out = {""}
    for d in deepest:
        for length in range(len(d), 0, -1):
            if d[:length] in out:
                break
            out.add(d[:length])
    return out
