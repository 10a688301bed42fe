"""Retrieval mode: query text -> item ids, on the shared XMR engine.

Training data are (item id, query text) pairs, one line per click; the distinct
normalized queries become instances whose labels are their items, and a pair given
N times costs more to miss (cost-sensitive learning, ``TrainConfig.relevance``). Item
titles, when given, are added as instances too, so every item of the catalogue
can be retrieved even if no query led to it yet. Item ids are kept in a
marisa-trie; an item's label id is its key id in that trie.

A query nobody gave in training that is a near-duplicate of a training query or item
title ("www.ebay.com" of "ebay", "dress up" of "dressup", "yahoo group" of "yahoo
groups": the completer's ``qac_variant_key``) is answered with that text's items
first, most clicked first (:class:`KnownVariants`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import marisa_trie
import numpy as np
import scipy.sparse as sp

from qac._kernel import variant_key
from qac.engine import Engine, EngineConfig
from qac.errors import InputError, ModelFormatError
from qac.features import BlockConfig
from qac.model.train import TrainConfig
from qac.model.xlinear import XLinearModel
from qac.storage import open_model_dir, save_model_dir
from qac.text import MAX_TEXT_CHARS, normalize

log = logging.getLogger(__name__)

KIND = "retriever"

DEFAULT_BLOCKS = (
    BlockConfig(kind="word", ngram_range=(1, 2)),
    BlockConfig(kind="char", ngram_range=(3, 3)),
)


#: Chosen on the AOL query -> URL task (README "Retrieval"): from PECOS's defaults (Cp 1,
#: label power 1, beam 10; P@1 0.3637, R@10 0.4888), Cp 2 gave P@1 0.3651 / R@10 0.4967,
#: label power 2 (the label's own score counts twice) then 0.3675 / 0.5007, and beam 15
#: 0.3674 / 0.5087 (beam 20: 0.3676 / 0.5120 at ~1.3x the latency). A pair given N times
#: is N clicks, and costs Cp * (1 + ln N) to miss: with the click counts of the session
#: log, P@1 0.3662 -> 0.3743 (README "Retrieval"). Pairs given once train as before.
DEFAULT_TRAIN = TrainConfig(Cp=2.0, relevance="log")
DEFAULT_BEAM = 15
DEFAULT_LABEL_POWER = 2.0


def default_config(**overrides: Any) -> EngineConfig:
    """The retrieval engine configuration: word 1-2 + char 3-gram TF-IDF, B=16, Cp 2,
    label power 2, beam 15 (float16 weights). ``overrides`` replace any field; a
    ``train`` override replaces the whole TrainConfig."""
    base: dict[str, Any] = {"blocks": DEFAULT_BLOCKS, "train": DEFAULT_TRAIN,
                            "beam": DEFAULT_BEAM, "label_power": DEFAULT_LABEL_POWER}
    if "threads" in overrides and "train" not in overrides:
        base["train"] = replace(DEFAULT_TRAIN, threads=overrides["threads"])
    return EngineConfig(**{**base, **overrides})


#: the longest item id (characters) a training file may hold
MAX_ITEM_ID = 4096


def read_tsv(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """Read ``id<TAB>text`` lines; '#' comment lines and blank lines are skipped.

    Bytes that are not UTF-8 become U+FFFD (normalization turns them into spaces); a
    UTF-8 byte order mark is dropped; lines may end in LF, CRLF or CR. A line without
    a tab, a text over :data:`qac.text.MAX_TEXT_CHARS` or an id over
    :data:`MAX_ITEM_ID` characters raises :class:`InputError` naming the file and line.
    """
    rows = []
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line or line.startswith("#"):
                continue
            key, sep, text = line.partition("\t")
            if not sep or not key:
                raise InputError(f"{path}:{lineno}: expected 'id<TAB>text'")
            if len(text) > MAX_TEXT_CHARS or len(key) > MAX_ITEM_ID:
                what, n, limit = (("text", len(text), MAX_TEXT_CHARS) if len(text) >
                                  MAX_TEXT_CHARS else ("id", len(key), MAX_ITEM_ID))
                raise InputError(f"{path}:{lineno}: the {what} is {n} characters long; "
                                 f"the limit is {limit}")
            rows.append((key, text))
    return rows


#: the most items a known variant answers with, ahead of the engine's
VARIANT_ITEMS = 10
#: the key of a text with no word left once decorations are dropped ("www com"): none
_NO_KEY = variant_key("")


def text_hash(text: str) -> int:
    """A stable 64-bit hash of a normalized text (which texts training saw)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"),
                                          digest_size=8).digest(), "little")


@dataclass(frozen=True)
class KnownVariants:
    """The items of the training texts (queries and item titles), by near-duplicate key.

    A query whose own text was not in training, but a near-duplicate of one was
    ("google com" and the title "google"; ``qac._kernel.variant_key``: spacing,
    punctuation, web decorations, plural "s"), is answered with the items of those
    texts first, most clicked first; the engine's answers follow. A query seen in
    training gets the engine's answers alone (it was trained on that very text).

    keys:   uint64 [n], sorted variant keys of the training texts.
    starts: int32 [n + 1]; key i's items are items[starts[i]:starts[i + 1]].
    items:  int32, label ids, most clicked first (at most :data:`VARIANT_ITEMS`).
    shares: float16, each item's share of its key's clicks (the score is 1 + share,
            above any engine score, which is at most 1).
    seen:   uint64, sorted :func:`text_hash` of the training texts.
    """

    keys: np.ndarray
    starts: np.ndarray
    items: np.ndarray
    shares: np.ndarray
    seen: np.ndarray

    @classmethod
    def build(cls, texts: Sequence[str], Y: sp.csr_matrix,
              top: int = VARIANT_ITEMS) -> KnownVariants:
        """From the training texts and their label rows (values: click counts)."""
        if len(texts) != Y.shape[0]:
            raise InputError(f"KnownVariants: {len(texts)} texts, {Y.shape[0]} label rows")
        keys = np.fromiter((variant_key(t) for t in texts), dtype=np.uint64, count=len(texts))
        seen = np.unique(np.fromiter((text_hash(t) for t in texts), dtype=np.uint64,
                                     count=len(texts)))
        rows = np.flatnonzero(keys != np.uint64(_NO_KEY))
        uniq, inv = np.unique(keys[rows], return_inverse=True)
        # the clicks of each key's texts, summed per item
        K = sp.csr_matrix((np.ones(len(rows)), (inv, rows)), shape=(len(uniq), len(texts)))
        S = (K @ sp.csr_matrix(Y, dtype=np.float64)).tocsr()
        S.sum_duplicates()
        row = np.repeat(np.arange(S.shape[0]), np.diff(S.indptr))
        order = np.lexsort((S.indices, -S.data, row))  # per key: most clicked, then id
        rank = np.arange(len(order)) - S.indptr[row[order]]
        keep = order[rank < top]
        if len(keep) >= 2**31:
            raise InputError(f"KnownVariants: {len(keep)} items, more than int32 offsets hold")
        kept_row = row[keep]
        starts = np.zeros(len(uniq) + 1, dtype=np.int32)
        np.cumsum(np.bincount(kept_row, minlength=len(uniq)), out=starts[1:])
        total = np.asarray(S.sum(axis=1)).ravel()
        shares = S.data[keep] / np.maximum(total[kept_row], 1e-30)
        return cls(uniq.astype(np.uint64), starts, S.indices[keep].astype(np.int32),
                   shares.astype(np.float16), seen)

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The arrays to save, each name after ``prefix``."""
        return {prefix + k: getattr(self, k)
                for k in ("keys", "starts", "items", "shares", "seen")}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n_labels: int) -> KnownVariants:
        """From :meth:`arrays` as saved; every length, order and id checked."""
        dtypes = {"keys": np.uint64, "starts": np.int32, "items": np.int32,
                  "shares": np.float16, "seen": np.uint64}
        got = {}
        for name, dtype in dtypes.items():
            a = arrays.get(name)
            if a is None or a.ndim != 1 or a.dtype != dtype:
                raise ModelFormatError(f"variants.{name}: a 1-d {np.dtype(dtype).name} "
                                       "array needed")
            got[name] = np.asarray(a)  # a plain view of the mapped file: faster to index
        keys, starts, items = got["keys"], got["starts"], got["items"]
        if len(starts) != len(keys) + 1 or (len(starts) and (
                starts[0] != 0 or starts[-1] != len(items) or (np.diff(starts) < 0).any())):
            raise ModelFormatError("variants.starts: not the offsets of variants.items")
        shares = got["shares"]
        if len(shares) != len(items) or not ((shares >= 0) & (shares <= 1)).all():
            raise ModelFormatError("variants.shares: not one share in [0, 1] per item")
        if len(items) and (int(items.min()) < 0 or int(items.max()) >= n_labels):
            raise ModelFormatError("variants.items: a label id outside the model")
        for name in ("keys", "seen"):
            a = got[name]
            if (a[1:] <= a[:-1]).any():
                raise ModelFormatError(f"variants.{name}: not sorted and unique")
        return cls(**got)

    def lookup(self, text: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(items, shares) of a normalized text's known variants, or None: the text was
        itself in training, or no training text is a near-duplicate of it."""
        key = variant_key(text)
        if key == _NO_KEY:
            return None
        keys, seen = self.keys, self.seen
        i = int(keys.searchsorted(np.uint64(key)))
        if i == len(keys) or int(keys[i]) != key:
            return None
        h = text_hash(text)
        j = int(seen.searchsorted(np.uint64(h)))
        if j < len(seen) and int(seen[j]) == h:
            return None
        a, b = int(self.starts[i]), int(self.starts[i + 1])
        return self.items[a:b], self.shares[a:b]

    def merge(self, text: str, ids: Sequence[int], scores: Sequence[float],
              k: int) -> tuple[list[int], list[float]]:
        """The engine's top-k of ``text`` with its known variants' items first."""
        return self._merge(self.lookup(text), ids, scores, k)

    @staticmethod
    def _merge(found: tuple[np.ndarray, np.ndarray] | None, ids: Sequence[int],
               scores: Sequence[float], k: int) -> tuple[list[int], list[float]]:
        if found is None:
            return list(ids)[:k], list(scores)[:k]
        first = [int(i) for i in found[0][:k]]
        out_ids = first + [int(i) for i in ids if i not in first]
        out_scores = [1.0 + float(s) for s in found[1][:k]] + [
            float(s) for i, s in zip(ids, scores, strict=True) if i not in first]
        return out_ids[:k], out_scores[:k]

    def merge_batch(self, texts: Sequence[str], ids: np.ndarray,
                    scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`merge` for a batch: ``ids`` [n, k] (padded with -1) and ``scores``
        [n, k] of ``texts``; new arrays, only the rows with known variants rebuilt."""
        ids, scores = np.array(ids), np.array(scores, dtype=np.float64)
        k = ids.shape[1] if ids.ndim == 2 else 0
        for r, text in enumerate(texts):
            found = self.lookup(text)
            if found is None:
                continue
            ok = ids[r] >= 0
            got, sc = self._merge(found, ids[r][ok].tolist(), scores[r][ok].tolist(), k)
            ids[r], scores[r] = -1, 0.0
            ids[r, :len(got)], scores[r, :len(sc)] = got, sc
        return ids, scores


@dataclass
class RetrievalReport:
    """Quality and latency of a retriever on held-out (item, query) pairs."""

    queries: int
    queries_with_known_item: int
    precision_at_1: float
    precision_at_5: float
    recall_at_10: float
    recall_at_100: float
    latency_p50_ms: float
    latency_p99_ms: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Retriever:
    """Query -> item ids. ``Retriever.load(dir).search(text, k=10)``."""

    def __init__(self, engine: Engine, items: marisa_trie.Trie,
                 variants: KnownVariants) -> None:
        if len(items) != engine.n_labels:
            raise InputError(f"{len(items)} items but the engine has {engine.n_labels} labels")
        self.engine = engine
        self.items = items
        self.variants = variants

    @classmethod
    def train(
        cls,
        pairs: Iterable[tuple[str, str]],
        items: Iterable[tuple[str, str]] | None = None,
        config: EngineConfig | None = None,
        progress: bool = False,
    ) -> Retriever:
        """Train on (item_id, query) pairs and optional (item_id, title) items."""
        config = config or default_config()
        by_query: dict[str, Counter[str]] = {}
        for item, query in pairs:
            q = normalize(query)
            if q:
                by_query.setdefault(q, Counter())[item] += 1
        titles = [(item, normalize(title)) for item, title in (items or ())]
        all_items = set().union(*by_query.values()) if by_query else set()
        all_items.update(item for item, _ in titles)
        if not all_items:
            raise InputError("no training pairs or items: nothing to learn")
        bad = next((i for i in all_items if not isinstance(i, str) or "\n" in i), None)
        if bad is not None:
            raise InputError(f"item id {bad!r:.40}: a str without a newline needed")
        trie = marisa_trie.Trie(all_items)
        texts = list(by_query) + [t for _, t in titles if t]
        # Y holds how many times each (query, item) pair was given: its click count
        label_sets = [[(trie[i], c) for i, c in s.items()] for s in by_query.values()]
        label_sets += [[(trie[item], 1)] for item, t in titles if t]
        indptr = np.zeros(len(label_sets) + 1, dtype=np.int64)
        np.cumsum([len(s) for s in label_sets], out=indptr[1:])
        nnz = int(indptr[-1])
        indices = np.fromiter((i for s in label_sets for i, _ in s), dtype=np.int32, count=nnz)
        counts = np.fromiter((c for s in label_sets for _, c in s), dtype=np.float32, count=nnz)
        Y = sp.csr_matrix((counts, indices, indptr), shape=(len(texts), len(trie)))
        Y.sort_indices()
        log.info("retriever: %d queries, %d titled items, %d items",
                 len(by_query), len(titles), len(trie))
        engine = Engine.fit(texts, Y, config, progress=progress)
        return cls(engine, trie, KnownVariants.build(texts, Y))

    def save(self, path: str | os.PathLike[str]) -> Path:
        return save_model_dir(path, KIND, self.engine.manifest_config(),
                              {**self.engine.arrays(), **self.variants.arrays("variants.")},
                              {"items": self.items})

    @classmethod
    def load(cls, path: str | os.PathLike[str], verify: bool = True) -> Retriever:
        """Load a model directory written by :meth:`save` (arrays memory-mapped)."""
        md = open_model_dir(path, kind=KIND, verify=verify)
        engine, items = Engine.from_model_dir(md), md.trie("items")
        if len(items) != engine.n_labels:  # found by tests/fuzz/fuzz_loader.py
            where = md.path / "items.keys.npy"
            raise ModelFormatError(f"{where}: {len(items)} items, the engine has "
                                   f"{engine.n_labels} labels", str(where))
        try:
            variants = KnownVariants.from_arrays(md.arrays("variants."), engine.n_labels)
        except ModelFormatError as exc:
            raise ModelFormatError(f"{md.path}: {exc}", str(md.path)) from exc
        md.check_same()  # one whole model, not parts of two (a save swapped it)
        return cls(engine, items, variants)

    def search(self, text: str | bytes, k: int = 10) -> list[tuple[str, float]]:
        """The top-k (item_id, score) for one query; empty text gives [].

        ``k``: an int in [1, 2**24] (InputError otherwise)."""
        XLinearModel.check_sizes(1, k)
        q = normalize(text)
        if not q:
            return []
        ids, scores = self.variants.merge(q, *self.engine.search(q, k=k), k)
        key = self.items.restore_key
        return [(key(int(i)), float(s)) for i, s in zip(ids, scores, strict=True)]

    def evaluate(self, pairs: Sequence[tuple[str, str]], latency_sample: int = 5000,
                 threads: int | None = None) -> RetrievalReport:
        """P@1/5 and R@10/100 over held-out queries with at least one known item,
        and single-query latency (text in, item ids out) over a sample of them."""
        truth: dict[str, set[int]] = {}
        for item, query in pairs:
            q = normalize(query)
            if q:
                truth.setdefault(q, set())
                if item in self.items:
                    truth[q].add(self.items[item])
        known = [(q, t) for q, t in truth.items() if t]
        if not known:
            raise InputError("no held-out query has an item the model knows")
        texts = [q for q, _ in known]
        ids, _ = self.variants.merge_batch(texts, *self.engine.search_batch(
            texts, k=100, threads=threads))
        p1 = p5 = r10 = r100 = 0.0
        for row, (_, t) in zip(ids, known, strict=True):
            p1 += row[0] in t
            p5 += len(t.intersection(row[:5].tolist())) / 5
            r10 += len(t.intersection(row[:10].tolist())) / len(t)
            r100 += len(t.intersection(row.tolist())) / len(t)
        n = len(known)
        times = []
        for q, _ in known[:latency_sample]:
            t0 = time.perf_counter()
            self.search(q, k=10)
            times.append(time.perf_counter() - t0)
        lat = np.array(times) * 1e3
        return RetrievalReport(
            queries=len(truth),
            queries_with_known_item=n,
            precision_at_1=p1 / n,
            precision_at_5=p5 / n,
            recall_at_10=r10 / n,
            recall_at_100=r100 / n,
            latency_p50_ms=float(np.percentile(lat, 50)),
            latency_p99_ms=float(np.percentile(lat, 99)),
        )
