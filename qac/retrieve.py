"""Retrieval mode: query text -> item ids, on the shared XMR engine.

Training data are (item id, query text) pairs, one line per click; the distinct
normalized queries become instances whose labels are their items, and a pair given
N times costs more to miss (cost-sensitive learning, ``TrainConfig.relevance``). Item
titles, when given, are added as instances too, so every item of the catalogue
can be retrieved even if no query led to it yet. Item ids are kept in a
marisa-trie; an item's label id is its key id in that trie.
"""

from __future__ import annotations

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

    def __init__(self, engine: Engine, items: marisa_trie.Trie) -> None:
        if len(items) != engine.n_labels:
            raise InputError(f"{len(items)} items but the engine has {engine.n_labels} labels")
        self.engine = engine
        self.items = items

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
        return cls(engine, trie)

    def save(self, path: str | os.PathLike[str]) -> Path:
        return save_model_dir(path, KIND, self.engine.manifest_config(),
                              self.engine.arrays(), {"items": self.items})

    @classmethod
    def load(cls, path: str | os.PathLike[str], verify: bool = True) -> Retriever:
        """Load a model directory written by :meth:`save` (arrays memory-mapped)."""
        md = open_model_dir(path, kind=KIND, verify=verify)
        engine, items = Engine.from_model_dir(md), md.trie("items")
        if len(items) != engine.n_labels:  # found by tests/fuzz/fuzz_loader.py
            where = md.path / "items.keys.npy"
            raise ModelFormatError(f"{where}: {len(items)} items, the engine has "
                                   f"{engine.n_labels} labels", str(where))
        md.check_same()  # one whole model, not parts of two (a save swapped it)
        return cls(engine, items)

    def search(self, text: str | bytes, k: int = 10) -> list[tuple[str, float]]:
        """The top-k (item_id, score) for one query; empty text gives [].

        ``k``: an int in [1, 2**24] (InputError otherwise)."""
        XLinearModel.check_sizes(1, k)
        q = normalize(text)
        if not q:
            return []
        ids, scores = self.engine.search(q, k=k)
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
        ids, _ = self.engine.search_batch([q for q, _ in known], k=100, threads=threads)
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
