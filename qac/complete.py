"""Session-aware query completion: one candidate pool and one ranker per keystroke.

Input: the prefix typed so far and what the session store knows of the user (the
previous query, this session's queries, the user's past queries with how often and
when). Output: the top-k full queries, each with the source that made it.

Every keystroke, the empty prefix included, takes one path (the C answerer,
``native/qac_answer.h``):

1. Python normalizes the prefix and gathers the candidates made outside C: the
   generated queries of :mod:`qac.sources`, and the most popular completions of the
   prefix when C cannot list them itself (a model trained with ``--background`` or
   ``min_count`` > 1; see ``_native_mpc``).
2. One C call: the labels that start with the prefix (one id range of the sorted
   labels), featurize + prefix-constrained beam search over the XMR tree, the user's
   past queries that start with the prefix, one pool of distinct texts, one feature
   row each, one score each from the ranker's trees (:mod:`qac.rank`), the k best.
3. Python turns the ids into texts.

Training (:meth:`Completer.train`): labels are the distinct normalized past queries,
sorted, so a label id is its rank in string order. Training instances are, for every
query of the log, its prefixes of ``prefix_lengths`` with the session's previous query
(:func:`qac.logs.previous_queries`, the one definition) -> the query. The ranker is
fitted on the last ``fit_days`` of the log, with a model trained on the rows before
them (so its engine scores are as out-of-sample as at serving time); then the final
model is trained on the whole log.

The blocklist is part of the model: no label, popular completion, table entry,
generated query or past query of the user that it matches is ever a candidate.

Live (:mod:`qac.live`): a completer may carry an overlay of what users submitted since
it was trained (:meth:`Completer.observe` in-process, or a stream tail in a server):
live decayed counts per label feed the ranker's recent_* features, and queries the
model never saw, once past the privacy floor, join the pool as "fresh" candidates. The
live blocklist filters every answer, beside the model's own.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from qac import _kernel
from qac.blocklist import Blocklist
from qac.engine import Engine, EngineConfig
from qac.errors import InputError, ModelFormatError, check_fields
from qac.features import BlockConfig, Vectorizer
from qac.history import Past, UserLog
from qac.index.kmeans import build_kmeans_tree, pifa
from qac.index.tree import LabelTree
from qac.index.trie import build_hybrid_tree, build_trie_tree
from qac.live import LiveBlocklist, LiveConfig, Overlay
from qac.logs import LogEvent, previous_queries
from qac.match import MatchConfig
from qac.mpc import LOOKUP_CACHE, MostPopular
from qac.rank import FEATURES, SOURCES, Forest
from qac.sources import GENERATORS, MPC, SourcesConfig, Tables, check_generators
from qac.storage import give_back_heap, open_model_dir, save_model_dir
from qac.text import normalize, normalize_prefix

log = logging.getLogger(__name__)

KIND = "completer"
FRESH = SOURCES.index("fresh")
INDEXES = ("hybrid", "trie", "tree")
#: most answers one keystroke may ask for
MAX_K = 1000
#: the longest previous query (characters) a keystroke conditions on
MAX_PREVIOUS = 1024
#: the user's past queries (with count and time, or plain queries most recent first),
#: or the same packed once for many keystrokes (:meth:`Completer.pack_history`)
HistoryLike = Iterable[Past | str] | _kernel.Texts
#: this session's queries, most recent first, as (query, Unix time) or plain queries,
#: or packed (:meth:`Completer.pack_session`)
SessionLike = Iterable[tuple[str, float] | str] | _kernel.Texts


@dataclass(frozen=True)
class Completion:
    """One suggestion. ``score`` is the ranker's (the same scale for every source);
    ``source`` the source it is shown with: "history" (a past query of the user),
    "model" (the XMR beam), "mpc" (most popular), "fresh" (a live query the model
    never saw), "session", "suffix" or "word" (generated), "words" (its successive
    words start with the typed words) or "typo" (a correction of the prefix).
    ``edits``: the typo corrections it took (0: none). ``spans``: the ``[start, end)``
    character ranges of ``text`` that match what was typed, computed by the kernel
    (see ``qac_answer`` in ``native/qac_answer.h``): the typed prefix, the start of
    each word the typed words began, or for a correction the characters equal to the
    typed ones they align with (the corrected ones are outside them)."""

    text: str
    score: float
    source: str
    edits: int = 0
    spans: tuple[tuple[int, int], ...] = ()


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (
            hi is not None and value > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise InputError(f"CompleterConfig.{name}: an int {bound}, got {value!r}")


@dataclass(frozen=True)
class CompleterConfig:
    """How a completer is trained and how it answers.

    index:           "hybrid" (trie levels, then k-means), "trie" or "tree" (k-means).
    trie_depth:      trie levels (hybrid default 2; trie default 4).
    min_count:       fewest occurrences for a query to become a label.
    prefix_lengths:  training prefix lengths (those shorter than the query are used;
                     0, the empty prefix, only where there is a previous query: it
                     teaches next-query suggestion).
    prefix_weight:   weight of the prefix block (prefix-weighted char 1-3-grams).
    previous_weight: weight of each previous-query block (word 1-2, char 3-grams).
    beam:            beam width of the search (the engine's default when None).
    generators:      the sources that may be switched off ("history", "session",
                     "suffix", "word"; the beam and MPC always feed the pool).
    sources:         how many candidates each source gives (:class:`SourcesConfig`).
    fit_days:        the ranker is fitted on the last this many days of the log (0:
                     use the forest shipped with qac, fitted on the AOL sessions).
    fit_lengths:     prefix lengths of the keystrokes it is fitted on.
    fit_no_context:  share of those keystrokes asked once more with no context at
                     all (no previous query, no history): how the ranker learns the
                     keystrokes of a visitor without a session (default: every one).
    min_fit:         fewer fitting keystrokes than this (with the submitted query in
                     their pool): the forest shipped with qac is used instead.
    recent_days:     a label's "recent" count is its count in the last this many days
                     of the training log (the ranker's recent_* features: what is
                     popular now beside what was popular overall).
    collapse:        near-duplicates ("woot" / "woot.com", "dress up" / "dressup",
                     "yahoo groups" / "yahoo group") are one answer, shown as the
                     user's own variant if they issued one, else the best-ranked
                     (``qac_variant_key`` in native/qac_answer.h).
    match:           typo and word-prefix matching (:class:`qac.match.MatchConfig`).
    """

    index: str = "hybrid"
    trie_depth: int | None = None
    min_count: int = 1
    prefix_lengths: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 8, 10, 13)
    prefix_weight: float = 1.0
    previous_weight: float = 0.5
    beam: int | None = None
    engine: EngineConfig | None = None
    generators: tuple[str, ...] = GENERATORS
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    fit_days: float = 7.0
    fit_lengths: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 8, 10)
    fit_no_context: float = 1.0
    min_fit: int = 2000
    recent_days: float = 7.0
    collapse: bool = True
    match: MatchConfig = field(default_factory=MatchConfig)

    def __post_init__(self) -> None:
        if self.index not in INDEXES:
            raise InputError(f"CompleterConfig.index: one of {INDEXES}, got {self.index!r}")
        if self.trie_depth is not None:
            _check_int("trie_depth", self.trie_depth, 0, 16)
        _check_int("min_count", self.min_count, 1)
        if not isinstance(self.prefix_lengths, tuple) or not self.prefix_lengths:
            raise InputError("CompleterConfig.prefix_lengths: a non-empty tuple needed")
        for n in (*self.prefix_lengths, *self.fit_lengths):
            _check_int("prefix_lengths/fit_lengths", n, 0, 1024)
        for name in ("prefix_weight", "previous_weight", "fit_days", "fit_no_context",
                     "recent_days"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
                    or v < 0:
                raise InputError(f"CompleterConfig.{name}: a finite number >= 0, got {v!r}")
        if self.fit_no_context > 1:
            raise InputError("CompleterConfig.fit_no_context: a share in 0..1, got "
                             f"{self.fit_no_context}")
        if self.beam is not None:
            _check_int("beam", self.beam, 1, 1000)
        _check_int("min_fit", self.min_fit, 0)
        if not isinstance(self.collapse, bool):
            raise InputError(f"CompleterConfig.collapse: a bool, got {self.collapse!r}")
        if not isinstance(self.match, MatchConfig):
            raise InputError("CompleterConfig.match: a MatchConfig needed")
        if not isinstance(self.sources, SourcesConfig):
            raise InputError("CompleterConfig.sources: a SourcesConfig needed")
        check_generators(self.generators)

    @property
    def depth(self) -> int:
        if self.trie_depth is not None:
            return self.trie_depth
        return 2 if self.index == "hybrid" else 4

    def engine_config(self) -> EngineConfig:
        if self.engine is not None:
            return self.engine
        blocks = (
            BlockConfig(kind="prefix_char", ngram_range=(1, 3), field=0,
                        weight=self.prefix_weight, open_end=True),
            BlockConfig(kind="word", ngram_range=(1, 2), field=1,
                        weight=self.previous_weight, min_df=2),
            BlockConfig(kind="char", ngram_range=(3, 3), field=1,
                        weight=self.previous_weight, min_df=2),
        )
        return EngineConfig(blocks=blocks)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["prefix_lengths"] = list(self.prefix_lengths)
        d["fit_lengths"] = list(self.fit_lengths)
        d["generators"] = list(self.generators)
        d["sources"] = asdict(self.sources)
        d["match"] = asdict(self.match)
        d["engine"] = self.engine_config().to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CompleterConfig:
        """The inverse of :meth:`to_dict`; unknown or missing keys and bad values
        raise :class:`InputError` naming them."""
        check_fields(cls, d, "completer config")
        out = dict(d)
        try:
            for key in ("prefix_lengths", "fit_lengths", "generators"):
                if key in out:
                    if not isinstance(out[key], list | tuple):
                        raise InputError(f"completer config: {key} must be a list")
                    out[key] = tuple(out[key])
            if "sources" in out:
                if not isinstance(out["sources"], Mapping):
                    raise InputError("completer config: sources must be a mapping")
                out["sources"] = SourcesConfig(**out["sources"])
            if "match" in out:
                out["match"] = MatchConfig.from_dict(out["match"])
            if "engine" in out:
                out["engine"] = EngineConfig.from_dict(out["engine"])
            return cls(**out)
        except TypeError as exc:
            raise InputError(f"completer config: {exc}") from None


class LabelSet:
    """The sorted labels as the kernel reads them (arrays may be memory maps).

    text:       uint8, the labels' UTF-8 joined by "\\n".
    offsets:    int64 [n+1]: label i is text[offsets[i] : offsets[i+1] - 1].
    counts:     int64 [n], occurrences in the training log.
    popularity: int64 [n], counts in the MPC table (training log plus any
                background log).
    popcum:     int64 [n+1], the running sum of popularity (the popularity of a
                prefix's labels is one subtraction).
    recent:     int64 [n], occurrences in the last ``recent_days`` of the training log
                (what is popular now, beside what was popular overall).
    word_label, word_off: int32, the word-start index (:func:`qac._kernel.words_index`:
                every word start of every label, sorted by the text from there on),
                built once with the labels and saved, so workers map one copy. The
                kernel checks it against the labels when an answerer is made.
    child_table: int32 [4 * (n+1)], the labels' child table (:func:`qac._kernel.child_table`:
                the typo search's trie), built, saved and checked likewise.
    """

    ARRAYS = ("text", "offsets", "counts", "popularity", "popcum", "recent", "word_label",
              "word_off", "child_table")

    def __init__(self, text: np.ndarray, offsets: np.ndarray, counts: np.ndarray,
                 popularity: np.ndarray, popcum: np.ndarray, recent: np.ndarray,
                 word_label: np.ndarray | None = None, word_off: np.ndarray | None = None,
                 child_table: np.ndarray | None = None) -> None:
        n = len(offsets) - 1
        for name, arr, size, kind in (("text", text, None, "u"), ("offsets", offsets, None, "i"),
                                      ("counts", counts, n, "i"),
                                      ("popularity", popularity, n, "i"),
                                      ("popcum", popcum, n + 1, "i"),
                                      ("recent", recent, n, "i")):
            if arr.ndim != 1 or arr.dtype.kind != kind or (size is not None and len(arr) != size):
                raise ModelFormatError(f"labels.{name}.npy: a 1-d array"
                                       f"{f' of {size}' if size else ''}"
                                       f" ({'uint8' if kind == 'u' else 'int64'}) needed, got "
                                       f"{arr.dtype} {arr.shape}", f"labels.{name}.npy")
        _check_labels(text, offsets, counts, popularity, popcum, recent)
        if word_label is None or word_off is None:
            word_label, word_off = _kernel.words_index(text, offsets)
        for name, arr in (("word_label", word_label), ("word_off", word_off)):
            if arr.ndim != 1 or arr.dtype != np.int32 or len(arr) != len(word_label):
                raise ModelFormatError(f"labels.{name}.npy: a 1-d int32 array of "
                                       f"{len(word_label)} needed, got {arr.dtype} {arr.shape}",
                                       f"labels.{name}.npy")
        if child_table is None:
            child_table = _kernel.child_table(text, offsets)
        if child_table.shape != (4 * (n + 1),) or child_table.dtype != np.int32:
            raise ModelFormatError(f"labels.child_table.npy: a 1-d int32 array of {4 * (n + 1)} "
                                   f"needed, got {child_table.dtype} {child_table.shape}",
                                   "labels.child_table.npy")
        self.text = text
        self.offsets = offsets
        self.counts = counts
        self.popularity = popularity
        self.popcum = popcum
        self.recent = recent
        self.word_label = word_label
        self.word_off = word_off
        self.child_table = child_table
        self._off = offsets.view(np.ndarray)
        self._text = text.view(np.ndarray)

    @classmethod
    def build(cls, labels: Sequence[str], counts: Sequence[int], popularity: Sequence[int],
              recent: Sequence[int] | None = None) -> LabelSet:
        """From sorted, distinct labels that hold no newline (``recent``: none by
        default)."""
        enc = [t.encode("utf-8") for t in labels]
        sizes = np.fromiter((len(b) + 1 for b in enc), dtype=np.int64, count=len(enc))
        offsets = np.zeros(len(enc) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        text = np.frombuffer(b"\n".join(enc), dtype=np.uint8)
        pop = np.asarray(popularity, dtype=np.int64)
        popcum = np.zeros(len(pop) + 1, dtype=np.int64)
        np.cumsum(pop, out=popcum[1:])
        rec = np.zeros(len(pop), dtype=np.int64) if recent is None else np.asarray(
            recent, dtype=np.int64)
        return cls(text, offsets, np.asarray(counts, dtype=np.int64), pop, popcum, rec)

    def __len__(self) -> int:
        return len(self._off) - 1

    def text_of(self, i: int) -> str:
        return bytes(self._text[self._off[i]:self._off[i + 1] - 1]).decode("utf-8")

    def texts(self) -> list[str]:
        """Every label (a list of n strings: for training and tools, not per keystroke)."""
        raw = bytes(self._text).decode("utf-8")
        return raw.split("\n") if raw else []

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in self.ARRAYS}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> LabelSet:
        missing = [n for n in cls.ARRAYS if n not in arrays]
        if missing:
            raise ModelFormatError(f"labels: arrays {missing} missing", "labels")
        return cls(*(arrays[n] for n in cls.ARRAYS))


def _check_labels(text: np.ndarray, offsets: np.ndarray, counts: np.ndarray,
                  popularity: np.ndarray, popcum: np.ndarray, recent: np.ndarray) -> None:
    """The values of a :class:`LabelSet` (issue 15: a saved one is checked at load, so
    a crafted array is a ModelFormatError naming its file, not an error per keystroke)."""
    def bad(name: str, what: str) -> ModelFormatError:
        return ModelFormatError(f"labels.{name}.npy: {what}", f"labels.{name}.npy")

    off = offsets.view(np.ndarray)
    if off.size == 0 or off[0] != 0 or (np.diff(off) < 1).any() or off[-1] != (
            len(text) + 1 if len(off) > 1 else 0):
        raise bad("offsets", "must start at 0, grow, and end one past the text")
    raw = text.view(np.ndarray)
    if len(off) > 2 and (raw[off[1:-1] - 1] != ord("\n")).any() or int(
            np.count_nonzero(raw == ord("\n"))) != max(len(off) - 2, 0):
        raise bad("text", "labels are not separated by newlines where offsets say")
    try:  # answers are decoded from it (tests/fuzz/fuzz_loader.py found this one)
        raw.tobytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad("text", f"not UTF-8 at byte {exc.start}") from None
    for name, arr in (("counts", counts), ("popularity", popularity), ("recent", recent)):
        if arr.size and int(arr.min()) < 0:
            raise bad(name, "a negative count")
    if popcum[0] != 0 or (np.diff(popcum.view(np.ndarray)) != popularity).any():
        raise bad("popcum", "not the running sum of popularity")


def _build_index(config: CompleterConfig, labels: list[str]) -> Any:
    ec = config.engine_config()

    def index(vec: Vectorizer, X: sp.csr_matrix, Y: sp.csr_matrix) -> LabelTree:
        if config.index == "trie":
            return build_trie_tree(labels, depth=config.depth)
        if config.index == "tree":
            return build_kmeans_tree(pifa(X, Y), branching=ec.branching,
                                     max_leaf_size=ec.max_leaf_size, seed=ec.seed,
                                     threads=ec.threads)
        # hybrid: k-means below the trie on the labels' own prefix-block features
        emb = vec.transform(labels, None, threads=ec.threads)
        return build_hybrid_tree(labels, emb, trie_depth=config.depth,
                                 branching=ec.branching, max_leaf_size=ec.max_leaf_size,
                                 seed=ec.seed, threads=ec.threads)

    return index


def _mpc_rows(top: Sequence[tuple[str, int]]
              ) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """MPC's list (text, count) as extras: (texts, sources, counts, popularity)."""
    texts = tuple(t for t, _ in top)
    counts = tuple(c for _, c in top)
    return texts, (MPC,) * len(texts), counts, counts


def _with_fresh(texts: Sequence[str], srcs: Sequence[int], counts: Sequence[int],
                pops: Sequence[int], fresh: list[str], live: list[float], n_mpc: int
                ) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """The extras with the fresh queries: merged into the most popular completions
    by their live counts (MPC over the training log and the live stream: a burst is
    popular now), then each once more as source "fresh" (its live count read by the
    recent_* features), last."""
    m = 0
    while m < len(srcs) and srcs[m] == MPC:
        m += 1
    merged = sorted([(c, i, t) for i, (t, c) in enumerate(zip(texts[:m], counts[:m],
                                                               strict=True))]
                    + [(int(c), -1 - j, t) for j, (t, c) in enumerate(zip(fresh, live,
                                                                           strict=True))],
                    key=lambda x: (-x[0], x[1] if x[1] >= 0 else m - x[1]))[:n_mpc]
    mt = [t for _, _, t in merged]
    mc = [c for c, _, _ in merged]
    fc = [int(c) for c in live]
    return ((*mt, *texts[m:], *fresh), (*[MPC] * len(mt), *srcs[m:], *[FRESH] * len(fresh)),
            (*mc, *counts[m:], *fc), (*mc, *pops[m:], *fc))


def _clean(text: Any) -> str | None:
    """A stored query as a candidate: a non-empty str without a newline that UTF-8 can
    encode (no lone surrogate: it would reach the answer, and no client could read
    it), else None."""
    if not isinstance(text, str) or not text or "\n" in text:
        return None
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return text


class Completer:
    """``Completer.load(dir).complete(prefix, previous=None, k=10, ...) -> [Completion]``."""

    def __init__(self, config: CompleterConfig, engine: Engine, labels: LabelSet,
                 mpc: MostPopular, tables: Tables, forest: Forest,
                 blocklist: Blocklist | None = None, extra_blocklist: Blocklist | None = None,
                 fit: Mapping[str, Any] | None = None,
                 stream: Mapping[str, str] | None = None) -> None:
        if engine.n_labels != len(labels):
            raise InputError(f"engine has {engine.n_labels} labels, label set {len(labels)}")
        self.config = config
        self.engine = engine
        self.labels = labels
        self.mpc = mpc
        self.tables = tables
        self.forest = forest
        self.blocklist = blocklist or Blocklist.empty()
        self.extra_blocklist = extra_blocklist
        self.fit = dict(fit or {})
        #: the last event-stream id per stream key this model learnt from
        #: (``qac train --log redis://...``), or None
        self.stream = dict(stream) if stream else None
        #: the live overlay the answers read (None: none; see :meth:`observe`)
        self.live: Overlay | None = None
        self.answerer = _kernel.Answerer(engine.vectorizer.handle, engine.model.handle,
                                         labels.arrays(), forest.arrays(), forest.base,
                                         keep=(engine, labels, forest))
        self._beam = config.beam or engine.config.beam
        both = [b for b in (self.blocklist, extra_blocklist) if b is not None and len(b)]
        # verdicts on the texts of past queries and generated ones, which recur
        self._blocks = (functools.lru_cache(maxsize=65536)(
            lambda t: any(b.blocks_normalized(t) for b in both)) if both else None)
        self._count = functools.lru_cache(maxsize=65536)(mpc.count)
        self._extras_of = functools.lru_cache(maxsize=4096)(self._extras)
        # MPC's table is the labels' popularity when every query it counts is a label
        # (no background log, min_count 1): then C lists the most popular completions
        # itself, and a generated text that is no label has popularity 0
        self._native_mpc = len(mpc) == len(labels)
        # whether a prefix is rare (fewer known queries than sources.rare) depends on
        # the prefix alone; the extras' cache also keys on the previous query
        self._rare = functools.lru_cache(maxsize=LOOKUP_CACHE)(
            lambda p: not mpc.at_least(p, config.sources.rare))

    # -- training -------------------------------------------------------------
    @classmethod
    def train(
        cls,
        events: Sequence[LogEvent],
        config: CompleterConfig | None = None,
        background: Counter[str] | None = None,
        progress: bool = False,
        blocklist: Blocklist | None = None,
    ) -> Completer:
        """Train on a session log (events in log order, queries normalized).

        The ranker is fitted on the events of the last ``config.fit_days`` (with a
        model trained on the events before them); the final model then learns from
        all events. A log without times, or too small to fit on, gets the forest
        shipped with qac (``fit`` in the manifest says which).
        ``background`` adds query counts (e.g. from a larger query-only log) to the
        popularity of the answers, not to the labels. ``blocklist`` replaces the
        default list (:meth:`Blocklist.default`).
        """
        config = config or CompleterConfig()
        blocklist = Blocklist.default() if blocklist is None else blocklist
        events = list(events)
        if not events:
            raise InputError("no queries to learn from: the log is empty")
        if all(e.time is not None for e in events):
            # one order whatever the log's (by user as the AOL files, or by time as a live
            # service writes it): each session's events keep theirs, so every previous
            # query is the same, and so are the instances and the ranker's data
            events.sort(key=lambda e: (e.time, e.session))
        forest, fit = cls._fit_forest(events, config, background, progress, blocklist)
        log.info("completer: the final model, on all %d events", len(events))
        return cls._build(events, config, background, progress, blocklist, forest, fit)

    @classmethod
    def _build(cls, events: Sequence[LogEvent], config: CompleterConfig,
               background: Counter[str] | None, progress: bool, blocklist: Blocklist,
               forest: Forest, fit: Mapping[str, Any]) -> Completer:
        counts: Counter[str] = Counter(e.query for e in events)
        labels = sorted(q for q, c in counts.items()
                        if c >= config.min_count and not blocklist.blocks_normalized(q))
        if not labels:
            raise InputError("no queries to learn from (after min_count and the blocklist)")
        ids = {q: i for i, q in enumerate(labels)}
        texts: list[str] = []
        contexts: list[str | None] = []
        rows: list[int] = []
        for e, previous in zip(events, previous_queries(events), strict=True):
            label = ids.get(e.query)
            if label is None:
                continue
            for n in config.prefix_lengths:
                if n >= len(e.query):
                    continue
                if n == 0 and previous is None:
                    continue
                texts.append(e.query[:n])
                contexts.append(previous)
                rows.append(label)
        if not texts:
            raise InputError("no training prefixes: every query is shorter than the "
                             "smallest prefix length")
        Y = sp.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), np.array(rows, dtype=np.int32),
             np.arange(len(rows) + 1, dtype=np.int64)),
            shape=(len(rows), len(labels)))
        log.info("completer: %d labels, %d training prefixes, index %s",
                 len(labels), len(rows), config.index)
        prefix_len = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        trie_layers = 0 if config.index == "tree" else config.depth

        def layer_rows(tree: LabelTree) -> list[np.ndarray | None]:
            # Trie layer t (1-based) only decides a ranking among its siblings for
            # prefixes shorter than t: a longer prefix admits one node there.
            return [prefix_len < t if t <= trie_layers else None
                    for t in range(1, tree.depth + 1)]

        engine = Engine.fit(texts, Y, config.engine_config(), contexts=contexts,
                            index=_build_index(config, labels), layer_rows=layer_rows,
                            progress=progress)
        pop: Counter[str] = Counter({q: c for q, c in counts.items()
                                     if not blocklist.blocks_normalized(q)})
        if background:
            pop.update({q: c for q, c in background.items() if not blocklist.blocks(q)})
        mpc = MostPopular(pop)
        recent: Counter[str] = Counter()
        times = [e.time for e in events if e.time is not None]
        if times:
            since = max(times) - timedelta(days=config.recent_days)
            recent.update(e.query for e in events if e.time is not None and e.time >= since)
        label_set = LabelSet.build(labels, [counts[q] for q in labels],
                                   [mpc.count(q) for q in labels],
                                   [recent[q] for q in labels])
        tables = Tables.build(pop, blocklist, config.sources)
        return cls(config, engine, label_set, mpc, tables, forest, blocklist, fit=fit)

    @classmethod
    def _fit_forest(cls, events: Sequence[LogEvent], config: CompleterConfig,
                    background: Counter[str] | None, progress: bool, blocklist: Blocklist
                    ) -> tuple[Forest, dict[str, Any]]:
        """The ranker: fitted on the last ``fit_days`` of ``events`` when they allow it,
        else the shipped forest; and what the manifest says of the fit."""
        if config.fit_days == 0:
            return Forest.default(), {"ranker": "shipped", "why": "fit_days is 0"}
        times = [e.time for e in events if e.time is not None]
        if len(times) != len(events) or not times:
            log.info("ranker: the log has no times; using the shipped ranker")
            return Forest.default(), {"ranker": "shipped", "why": "the log has no times"}
        end = max(times)
        start = end - timedelta(days=config.fit_days)
        before = [e for e in events if e.time is not None and e.time < start]
        n_fit = len(events) - len(before)
        if not before or n_fit == 0:
            log.info("ranker: the log spans less than %s days; using the shipped ranker",
                     config.fit_days)
            return Forest.default(), {"ranker": "shipped",
                                      "why": f"the log spans less than {config.fit_days} days"}
        log.info("ranker: a model on the %d events before %s, to fit on the %d after",
                 len(before), start.isoformat(sep=" "), n_fit)
        try:
            stage = cls._build(before, config, background, progress, blocklist,
                               Forest.empty(), {})
        except InputError as exc:
            log.info("ranker: no model before %s (%s); using the shipped ranker", start, exc)
            return Forest.default(), {"ranker": "shipped", "why": str(exc)}
        X, y, sizes = stage.fit_groups(events, start, progress=progress)
        if len(sizes) < max(config.min_fit, 10):
            log.info("ranker: %d fitting keystrokes (< %d); using the shipped ranker",
                     len(sizes), config.min_fit)
            return Forest.default(), {"ranker": "shipped",
                                      "why": f"{len(sizes)} fitting keystrokes"}
        forest = Forest.fit(X, y, sizes, threads=config.engine_config().threads)
        return forest, {"ranker": "fitted", "from": start.isoformat(sep=" "),
                        "until": end.isoformat(sep=" "), "keystrokes": len(sizes),
                        "rows": len(X), "trees": forest.n_trees}

    def fit_groups(self, events: Sequence[LogEvent], since: Any, progress: bool = False,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """The ranker's fitting data: replay ``events`` (in log order) and, for every
        event at or after ``since``, its prefixes of ``fit_lengths`` with the context a
        store would hold then; a share ``fit_no_context`` of them once more without
        any. Returns (X [rows, FEATURES], y (1: the submitted query), group sizes),
        keeping only keystrokes whose pool holds the submitted query."""
        from tqdm import tqdm

        cfg = self.config
        rng = np.random.default_rng(seed)
        users = UserLog(cfg.sources.history)
        Xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        sizes: list[int] = []
        todo = [e for e in events if e.time is not None and e.time >= since]
        bar = tqdm(total=len(todo), desc="ranker data", disable=not progress, leave=False)
        for e in events:
            t = e.time.timestamp() if e.time is not None else 0.0
            if e.time is not None and e.time >= since:
                bar.update()
                ctx = users.context(e.session, e.user)
                full = (ctx.previous, self.pack_history(ctx.history),
                        self.pack_session(ctx.session))
                variants = [full]
                if rng.random() < cfg.fit_no_context:
                    variants.append((None, self.pack_history(()), self.pack_session(())))
                for prev, hist, sess in variants:
                    for n in cfg.fit_lengths:
                        if n >= len(e.query) or (n == 0 and prev is None and not hist.n):
                            continue
                        texts, _, X = self.pool(e.query[:n], prev, hist, sess, now=t)
                        y = np.fromiter((x == e.query for x in texts), dtype=np.int32,
                                        count=len(texts))
                        if y.any():
                            Xs.append(X)
                            ys.append(y)
                            sizes.append(len(texts))
            users.add(e.session, e.user, e.query, t)
        bar.close()
        if not sizes:
            return np.zeros((0, len(FEATURES))), np.zeros(0, dtype=np.int32), []
        return np.vstack(Xs), np.concatenate(ys), sizes

    # -- persistence -------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        arrays = self.engine.arrays()
        arrays.update({f"labels.{k}": v for k, v in self.labels.arrays().items()})
        arrays.update({f"mpc.{k}": v for k, v in self.mpc.arrays().items()})
        arrays.update({f"tables.{k}": v for k, v in self.tables.arrays().items()})
        arrays.update({f"ranker.{k}": v for k, v in self.forest.arrays().items()})
        config = {"completer": self.config.to_dict(), **self.engine.manifest_config(),
                  "ranker": self.forest.manifest(), "fit": self.fit,
                  **({"stream": self.stream} if self.stream else {}),
                  "blocklist": {"words": sorted(self.blocklist.words),
                                "stems": sorted(self.blocklist.stems)}}
        tries = {"mpc": self.mpc.trie}
        tries.update({f"tables.{k}": v for k, v in self.tables.tries().items()})
        return save_model_dir(path, KIND, config, arrays, tries)

    @classmethod
    def load(cls, path: str | os.PathLike[str], blocklist: Blocklist | None = None,
             verify: bool = True) -> Completer:
        """Load a model directory (arrays memory-mapped). ``blocklist``, if given,
        filters answers too, beside the model's own."""
        md = open_model_dir(path, kind=KIND, verify=verify)
        where = str(md.path)
        try:
            config = md.parse_config("completer", CompleterConfig.from_dict)
            bl = md.config["blocklist"]
            if not isinstance(bl, Mapping):
                raise InputError("blocklist: a mapping needed")
            model_blocklist = Blocklist.from_entries(bl.get("words", []), bl.get("stems", []))
            labels = LabelSet.from_arrays(md.arrays("labels."))
            mpc = MostPopular.from_parts(md.trie("mpc"), md.arrays("mpc."))
            tables = Tables.from_parts(config.sources,
                                       {n: md.trie(f"tables.{n}") for n in ("words", "suffixes")},
                                       md.arrays("tables."))
            forest = Forest.from_parts(md.config["ranker"], md.arrays("ranker."))
            fit = md.config.get("fit", {})
            stream = md.config.get("stream")
            if stream is not None and (not isinstance(stream, Mapping) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in stream.items())):
                raise InputError("stream: a mapping of stream key -> last id needed")
            engine = Engine.from_model_dir(md)
            completer = cls(config, engine, labels, mpc, tables, forest, model_blocklist,
                            blocklist, fit if isinstance(fit, dict) else {}, stream)
            give_back_heap()
            md.check_same()  # one whole model, not parts of two (a save swapped it)
            return completer
        except ModelFormatError as exc:
            if where in str(exc):
                raise
            raise ModelFormatError(f"{where}: {exc}", exc.path if hasattr(exc, "path")
                                   else where) from exc
        except (KeyError, TypeError, ValueError, InputError, UnicodeDecodeError,
                _kernel.KernelError) as exc:  # the kernel checks the arrays once more
            raise ModelFormatError(f"{where}: completer data inconsistent ({exc})",
                                   where) from exc

    @property
    def history_limit(self) -> int:
        """How many of the user's past queries :meth:`complete` looks at (the most
        recent ``sources.history``; 0 when the "history" source is off), so a caller
        fetches no more than that."""
        return self.config.sources.history if "history" in self.config.generators else 0

    def with_options(self, **changes: Any) -> Completer:
        """A view with other answer-time options (beam, generators, sources, collapse,
        match)."""
        allowed = {"beam", "generators", "sources", "collapse", "match"}
        bad = sorted(set(changes) - allowed)
        if bad:
            raise InputError(f"with_options: only {sorted(allowed)} change at answer time, "
                             f"not {bad}")
        c = Completer(replace(self.config, **changes), self.engine, self.labels, self.mpc,
                      self.tables, self.forest, self.blocklist, self.extra_blocklist,
                      self.fit, self.stream)
        c.live = self.live
        return c

    def with_forest(self, forest: Forest) -> Completer:
        """The same model ranked by another forest."""
        c = Completer(self.config, self.engine, self.labels, self.mpc, self.tables,
                      forest, self.blocklist, self.extra_blocklist, self.fit, self.stream)
        c.live = self.live
        return c

    # -- live ----------------------------------------------------------------------
    def label_id(self, text: str) -> int:
        """The label id of a normalized text, or -1."""
        if not text:
            return -1
        lo, hi = self.answerer.label_range(text.encode("utf-8", "surrogatepass"))
        return lo if lo < hi and self.labels.text_of(lo) == text else -1

    def new_overlay(self, config: LiveConfig | None = None,
                    blocklist: LiveBlocklist | None = None) -> Overlay:
        """An empty live overlay bound to this model's labels (not attached)."""
        config = config or LiveConfig()
        return Overlay(self.label_id, len(self.labels), config, blocklist,
                       config.weight_for(self.config.recent_days), self.labels.text_of)

    def observe(self, query: str, session: str | None = None, time: float | None = None
                ) -> bool:
        """Feed one submitted query to this completer's live overlay (made on first use
        with :class:`~qac.live.LiveConfig` defaults): embedded use without a stream.
        ``time``: Unix seconds (default now). False when the query is not one (empty
        after normalization, too long)."""
        if self.live is None:
            self.live = self.new_overlay()
        return self.live.add(query, session or "", time)

    def __contains__(self, text: object) -> bool:
        """Whether ``text`` (normalized) is a label."""
        return isinstance(text, str) and self.label_id(text) >= 0

    # -- the user's context, packed for the kernel -------------------------------
    def pack_history(self, history: HistoryLike) -> _kernel.Texts:
        """The user's past queries as the kernel reads them: ``Past`` entries (or plain
        queries, most recent first, count 1, time unknown); blocked, empty and
        malformed entries dropped; at most ``sources.history`` (most recent first)."""
        if isinstance(history, _kernel.Texts):
            return history
        if isinstance(history, str | bytes):
            raise InputError("history must be a sequence of past queries, not one string")
        blocks = self._blocks
        texts: list[str] = []
        counts: list[int] = []
        times: list[float] = []
        for h in history:
            if isinstance(h, Past):
                q, c, t = _clean(h.query), h.count, h.last
            else:
                q, c, t = _clean(h), 1, 0.0
            if q is None or (blocks is not None and blocks(q)):
                continue
            texts.append(q)
            counts.append(max(1, min(int(c), 1 << 30)) if isinstance(c, int) else 1)
            times.append(float(t) if isinstance(t, int | float) and math.isfinite(t) else 0.0)
        cap = self.config.sources.history
        if len(texts) > cap:
            order = sorted(range(len(texts)), key=lambda i: -times[i])[:cap]
            order.sort()
            texts = [texts[i] for i in order]
            counts = [counts[i] for i in order]
            times = [times[i] for i in order]
        return _kernel.Texts(texts, counts, times)

    def pack_session(self, session: SessionLike) -> _kernel.Texts:
        """This session's queries, most recent first: (query, Unix time) or plain
        queries (time unknown)."""
        if isinstance(session, _kernel.Texts):
            return session
        if isinstance(session, str | bytes):
            raise InputError("session must be a sequence of queries, not one string")
        blocks = self._blocks
        texts: list[str] = []
        times: list[float] = []
        for s in session:
            raw, t = (s, 0.0) if isinstance(s, str) else (s[0], s[1])
            q = _clean(raw)
            if q is None or (blocks is not None and blocks(q)):
                continue
            texts.append(q)
            times.append(float(t) if isinstance(t, int | float) and math.isfinite(t) else 0.0)
        return _kernel.Texts(texts, None, times)

    # -- answering (the per-keystroke path) ---------------------------------------
    def _extras(self, p: str, prev: str, generators: tuple[str, ...]
                ) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """The candidates made in Python for (prefix, previous query): MPC's first
        (unless C lists them, see ``_native_mpc``), then the generated ones; (texts,
        sources, counts, popularity).

        Tuples, as ``_extras_of`` caches them: a tuple of strs and ints drops out of
        the garbage collector's reach at its first collection, where a list stays in
        it; four lists per cached keystroke kept 4-11 thousand lists in the young
        generations under load, and a gen1 collection took up to 8 ms of the event
        loop (a ``gc.callbacks`` probe in ``qac serve``'s workers)."""
        cfg = self.config.sources
        gen = self.tables.generated
        if self._native_mpc:
            gt, gs, gc = gen(p, prev, generators, self._rare(p), self._blocks)
            return tuple(gt), tuple(gs), tuple(gc), (0,) * len(gt)
        top = self._mpc_top(p)
        texts, srcs, counts, pops = _mpc_rows(top[:cfg.mpc])
        gt, gs, gc = gen(p, prev, generators, len(top) < cfg.rare, self._blocks)
        count = self._count
        return (texts + tuple(gt), srcs + tuple(gs), counts + tuple(gc),
                pops + tuple(count(t) for t in gt))

    def _mpc_top(self, p: str) -> tuple[tuple[str, int], ...]:
        cfg = self.config.sources
        return self.mpc.top(p, max(cfg.mpc, cfg.rare))

    def _match(self, typos: int | None) -> MatchConfig:
        m = self.config.match
        if typos is None or typos == m.typos:
            return m
        if isinstance(typos, bool) or not isinstance(typos, int) or not 0 <= typos <= 2:
            raise InputError(f"typos must be an int in 0..2, got {typos!r}")
        return replace(m, typos=typos)

    def history_prefix(self, prefix: str, typos: int | None = None) -> str:
        """What a session store selects the user's past queries by for this keystroke
        (those that start with it): the prefix itself when only its own completions
        count; its first character when past queries may match with typos or by word
        prefix (a correction keeps the first character); all of them ("") when the
        first character may be corrected too. Word-prefix matches of a later word
        ("york": "new york times") then come from the labels only."""
        m = self._match(typos)
        if not (m.words or m.typos):
            return prefix
        if m.first_char:
            return ""
        return normalize_prefix(prefix)[:1]

    def _answer(self, prefix: str | bytes, previous: str | bytes | None, k: int,
                history: Any, session: Any, now: float | None, features: bool,
                typos: int | None = None) -> tuple[str, _kernel.Answer]:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise InputError(f"k must be an int in 1..{MAX_K}, got {k!r}")
        match = None if features else self._match(typos)
        if isinstance(prefix, bytes):
            prefix = prefix.decode("utf-8", "replace")
        p = normalize_prefix(prefix)
        prev = normalize(previous, max_chars=4 * MAX_PREVIOUS) if previous else ""
        if len(prev) > MAX_PREVIOUS:
            prev = prev[:MAX_PREVIOUS]
        gens = self.config.generators
        hist = self.pack_history(history if "history" in gens else ())
        sess = self.pack_session(session)
        texts, srcs, counts, pops = self._extras_of(p, prev, gens)
        at = time.time() if now is None else float(now)
        cfg = self.config.sources
        n_mpc = cfg.mpc if self._native_mpc else 0
        live = self.live
        label_live = extra_live = None
        scale = 1.0
        filtered = self.extra_blocklist is not None
        if live is not None:
            label_live, scale = live.label_view(at)
            ft, fc = live.fresh(p, live.config.fresh, at, self._blocks)
            if ft:
                if n_mpc:
                    # the fresh queries join MPC's list: made here, as without native MPC
                    mt, ms, mc, mp = _mpc_rows(self._mpc_top(p)[:n_mpc])
                    texts, srcs, counts, pops = mt + texts, ms + srcs, mc + counts, mp + pops
                    n_mpc = 0
                texts, srcs, counts, pops = _with_fresh(texts, srcs, counts, pops, ft, fc,
                                                        cfg.mpc)
                extra_live = [0.0] * (len(texts) - len(ft)) + fc
            filtered = filtered or live.blocklist.blocklist is not None
        want = 2 * k + 10 if filtered else k
        return p, self.answerer.answer(
            p.encode("utf-8", "surrogatepass"), prev.encode("utf-8", "surrogatepass"),
            sess, hist, texts, srcs, counts, pops, at, self._beam, cfg.model, want, features,
            self.config.collapse, match, extra_live, label_live, scale, n_mpc)

    def _blocked(self, text: str) -> bool:
        """Whether the blocklists applied to answers (the extra one and the live one)
        block a normalized text."""
        if self.extra_blocklist is not None and self.extra_blocklist.blocks_normalized(text):
            return True
        live = self.live
        bl = live.blocklist.blocklist if live is not None else None
        return bl is not None and bl.blocks_normalized(text)

    def complete(self, prefix: str | bytes, previous: str | bytes | None = None, k: int = 10,
                 history: HistoryLike = (), session: SessionLike = (),
                 now: float | None = None, typos: int | None = None) -> list[Completion]:
        """Top-k completions of ``prefix`` (the empty prefix too) for the user's context.

        previous: the session's last query. history: the user's past queries
        (:class:`qac.history.Past` with count and last time, or plain queries most
        recent first); a store that holds many hands over those that start with the
        prefix. session: this session's queries, most recent first, as (query, Unix
        time) or plain queries. now: the Unix time of the keystroke (default: now).
        typos: the most typo corrections for this call (0: none; default: the
        model's ``match.typos``).
        """
        p, a = self._answer(prefix, previous, k, history, session, now, False, typos)
        out = [Completion(t, s, SOURCES[g], e, h) for t, g, s, e, h in
               zip(a.texts, a.sources, a.scores, a.edits, a.spans, strict=True)]
        if len(out) > k or self.extra_blocklist is not None or self.live is not None:
            out = [c for c in out if not self._blocked(c.text)][:k]
        return out

    def pool(self, prefix: str, previous: str | None = None, history: HistoryLike = (),
             session: SessionLike = (), now: float | None = None
             ) -> tuple[list[str], list[str], np.ndarray]:
        """Every candidate of a keystroke's pool, in pool order, with its source and its
        feature row (X float64 [n, len(FEATURES)]): what the ranker is fitted on."""
        _, a = self._answer(prefix, previous, 1, history, session, now, True)
        assert a.features is not None
        return a.texts, [SOURCES[g] for g in a.sources], a.features

    def complete_batch(self, prefixes: Iterable[str], previous: Iterable[str | None] | None
                       = None, k: int = 10) -> list[list[Completion]]:
        """``complete`` over many (prefix, previous) pairs."""
        prefixes = list(prefixes)
        prevs = list(previous) if previous is not None else [None] * len(prefixes)
        if len(prevs) != len(prefixes):
            raise InputError(f"{len(prefixes)} prefixes but {len(prevs)} previous queries")
        return [self.complete(p, q, k) for p, q in zip(prefixes, prevs, strict=True)]


def train_completer(log_path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                    config: CompleterConfig | None = None, until: Any = None,
                    background: str | os.PathLike[str] | None = None,
                    progress: bool = False, blocklist: Blocklist | None = None) -> Completer:
    """Read a log (and an optional background query log), train, optionally save.
    ``log_path`` may be a Redis URL (``redis://host:port/db``, ``redis+cluster://``):
    the event stream (default key) is the log, and the manifest records its last ids."""
    from qac.live import is_stream_url, read_stream_log
    from qac.logs import query_counts, read_log

    stream = None
    if is_stream_url(log_path):
        # the live event stream as the log; the model records the last ids it saw, so
        # a server's overlay counts only the events after them
        events, stream = read_stream_log(str(log_path), until=until)
        if not events:
            raise InputError(f"{log_path}: the event stream holds no events")
    else:
        events = read_log(log_path, until=until)
    bg = query_counts(read_log(background)) if background else None
    c = Completer.train(events, config, background=bg, progress=progress, blocklist=blocklist)
    c.stream = stream
    if out is not None:
        c.save(out)
    return c
