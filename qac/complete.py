"""Session-aware query completion on the shared XMR engine.

Input: the prefix typed so far and the previous query of the session; output: the
top-k full queries. Labels are the distinct normalized past queries, **sorted**, so a
label id is its rank in string order and "labels starting with the prefix" is one
id range [lo, hi) found by bisection. The C beam search takes that range and never
scores a tree node with no eligible label below it (prefix-constrained beam search:
exact on the trie levels of the trie and hybrid indexes), so every model answer
already starts with the prefix.

With ``longtail`` on (and long-tail statistics in the model, see
:mod:`qac.longtail`), every non-empty prefix instead gets one candidate pool -- the
XMR beam, the MPC list, and the word / ending / session generators, which can build
queries never seen before -- ordered by one fitted linear ranker; every answer still
starts with the prefix, passes the blocklist and appears once, and its ``source``
names the generator that made it.

Policy without long tail, in order: model answers (ranker score, optionally times popularity);
then, when fewer than k remain, most-popular completions (MPC) of the prefix;
no duplicates; blocked queries never become labels or MPC entries (the blocklist in
force at training), and a blocklist given at load time filters answers too.
Empty prefix with a previous query: next-query suggestions over all labels; empty
prefix and no previous query: the most popular queries.

Training instances: for every query q of the training log, prefixes of q of the
lengths in ``prefix_lengths`` (shorter than q) with the previous query of its
session as context (empty for the first query of a session) -> label q.
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from qac import _kernel
from qac.blocklist import Blocklist
from qac.engine import Engine, EngineConfig
from qac.errors import InputError, ModelFormatError
from qac.features import BlockConfig, Vectorizer
from qac.index.kmeans import build_kmeans_tree, pifa
from qac.index.tree import LabelTree
from qac.index.trie import build_hybrid_tree, build_trie_tree
from qac.logs import LogEvent
from qac.longtail import GENERATORS, SOURCES, LongTail
from qac.mpc import MostPopular
from qac.session import MAX_HISTORY
from qac.storage import open_model_dir, save_model_dir
from qac.text import normalize, normalize_prefix

log = logging.getLogger(__name__)

KIND = "completer"
INDEXES = ("hybrid", "trie", "tree")
_MAX_CHAR = "\U0010ffff"
_MPC = SOURCES.index("mpc")


def _check_history(history: Sequence[str]) -> Sequence[str]:
    if isinstance(history, str | bytes):
        raise InputError("history must be a sequence of queries, not one string")
    # entries are checked where they are read (LongTail.gen_history), not per call
    return history[:MAX_HISTORY]


@dataclass(frozen=True)
class Completion:
    """One suggestion: ``source`` is "model" (the XMR ranker), "mpc" (popularity), or
    with long tail on "word", "suffix", "session" or "history" (:data:`qac.longtail.SOURCES`)."""

    text: str
    score: float
    source: str


@dataclass(frozen=True)
class CompleterConfig:
    """How a completer is trained and how it answers.

    index:            "hybrid" (trie levels, then k-means), "trie" or "tree" (k-means).
    trie_depth:       trie levels (hybrid default 2; trie default 4).
    min_count:        fewest occurrences for a query to become a label.
    prefix_lengths:   training prefix lengths (those shorter than the query are used;
                      0, the empty prefix, only where there is a previous query: it
                      teaches next-query suggestion).
    prefix_weight:    weight of the prefix block (prefix-weighted char 1-3-grams).
    previous_weight:  weight of each previous-query block (word 1-2, char 3-grams).
    popularity:       answer score = ranker score * (1 + count) ** beta, with
                      beta = popularity + popularity_per_char * min(len(prefix), 10):
                      the longer the prefix, the fewer and more specific the
                      candidates, and the more their popularity says (tuned on a dev
                      split with sim/tune_completion.py).
    candidates:       labels fetched from the beam search before the policy.
    beam:             beam width of the search (the engine's default when None).
    longtail:         answer non-empty prefixes from the long-tail candidate pool and
                      its ranker (:mod:`qac.longtail`); training builds the word and
                      ending tables only when this is on.
    longtail_generators: which generators feed the pool ("word", "suffix",
                      "session", "history"); the XMR beam and the MPC list always do.
    """

    index: str = "hybrid"
    trie_depth: int | None = None
    min_count: int = 1
    prefix_lengths: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 8, 10, 13)
    prefix_weight: float = 1.0
    previous_weight: float = 0.5
    popularity: float = 0.5
    popularity_per_char: float = 0.3
    candidates: int = 50
    beam: int | None = None
    engine: EngineConfig | None = None
    blocklist: bool = True
    longtail: bool = False
    longtail_generators: tuple[str, ...] = GENERATORS

    def __post_init__(self) -> None:
        if self.index not in INDEXES:
            raise InputError(f"CompleterConfig.index: one of {INDEXES}, got {self.index!r}")
        if self.trie_depth is not None and self.trie_depth < 0:
            raise InputError(f"CompleterConfig.trie_depth: must be >= 0, got {self.trie_depth}")
        if self.min_count < 1:
            raise InputError(f"CompleterConfig.min_count: must be >= 1, got {self.min_count}")
        if not self.prefix_lengths or min(self.prefix_lengths) < 0:
            raise InputError("CompleterConfig.prefix_lengths: lengths >= 0 needed")
        if self.candidates < 1:
            raise InputError(f"CompleterConfig.candidates: must be >= 1, got {self.candidates}")
        if self.beam is not None and self.beam < 1:
            raise InputError(f"CompleterConfig.beam: must be >= 1, got {self.beam}")
        bad = set(self.longtail_generators) - set(GENERATORS)
        if bad:
            raise InputError(f"CompleterConfig.longtail_generators: unknown {sorted(bad)}")

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
        d = {k: v for k, v in asdict(self).items() if k != "engine"}
        d["prefix_lengths"] = list(self.prefix_lengths)
        d["longtail_generators"] = list(self.longtail_generators)
        d["engine"] = self.engine_config().to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompleterConfig:
        d = dict(d)
        d["prefix_lengths"] = tuple(d["prefix_lengths"])
        if "longtail_generators" in d:
            d["longtail_generators"] = tuple(d["longtail_generators"])
        d["engine"] = EngineConfig.from_dict(d["engine"])
        return cls(**d)


class LabelSet:
    """The sorted label strings; id = rank in string order.

    counts:     int64 [L], occurrences in the training log.
    popularity: int64 [L], counts in the MPC table (training log plus any background
                log): the popularity term of the answer score.
    """

    def __init__(self, labels: list[str], counts: np.ndarray,
                 popularity: np.ndarray | None = None) -> None:
        if len(labels) != len(counts):
            raise InputError(f"{len(labels)} labels but {len(counts)} counts")
        if popularity is not None and len(popularity) != len(labels):
            raise InputError(f"{len(labels)} labels but {len(popularity)} popularity counts")
        self.labels = labels
        self.counts = counts
        self.popularity = popularity
        self._index: dict[str, int] | None = None
        self._blob: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def range(self, prefix: str) -> tuple[int, int]:
        """Ids [lo, hi) of the labels starting with ``prefix``."""
        lo = bisect.bisect_left(self.labels, prefix)
        return lo, bisect.bisect_left(self.labels, prefix + _MAX_CHAR, lo)

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and self.id_of(text) is not None

    def id_of(self, text: str) -> int | None:
        if self._index is None:
            self._index = {s: i for i, s in enumerate(self.labels)}
        return self._index.get(text)

    def blob(self) -> np.ndarray:
        """The labels' UTF-8 joined by "\\n" (uint8): how they are saved, and what the
        C kernel reads them from."""
        if self._blob is None:
            self._blob = np.frombuffer("\n".join(self.labels).encode("utf-8"), dtype=np.uint8)
        return self._blob

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"text": self.blob(), "counts": self.counts}
        if self.popularity is not None:
            out["popularity"] = self.popularity
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> LabelSet:
        blob = np.asarray(arrays["text"], dtype=np.uint8)
        text = bytes(blob).decode("utf-8")
        labels = text.split("\n") if text else []
        out = cls(labels, np.asarray(arrays["counts"]), arrays.get("popularity"))
        out._blob = blob
        return out


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


class Completer:
    """``Completer.load(dir).complete(prefix, previous=None, k=10) -> list[Completion]``."""

    def __init__(self, config: CompleterConfig, engine: Engine, labels: LabelSet,
                 mpc: MostPopular, blocklist: Blocklist | None = None,
                 longtail: LongTail | None = None) -> None:
        if engine.n_labels != len(labels):
            raise InputError(f"engine has {engine.n_labels} labels, label set {len(labels)}")
        self.config = config
        self.engine = engine
        self.labels = labels
        self.mpc = mpc
        self.blocklist = blocklist
        self.longtail = longtail
        # generated queries pass the training blocklist too (labels and MPC already do)
        # (cached: the same generated texts come back keystroke after keystroke)
        self._gen_blocks = (functools.lru_cache(maxsize=65536)(
            Blocklist.default().blocks_normalized) if config.blocklist else None)
        if labels.popularity is None:  # computed once, then saved with the model
            labels.popularity = np.array([mpc.count(q) for q in labels.labels], dtype=np.int64)
        # log(1 + popularity) per label, for the popularity term of the answer score
        self._logpop_arr = np.log1p(labels.popularity.astype(np.float64))
        self._logpop = self._logpop_arr.tolist()
        # popularity of generated texts, which recur keystroke after keystroke
        self._count = functools.lru_cache(maxsize=65536)(mpc.count)
        # the C side of the long-tail pool (labels, popularity, weights), with and
        # without history, at load, not on the first keystroke
        self._pool_rankers: tuple[_kernel.PoolRanker, _kernel.PoolRanker] | None = None
        if config.longtail and longtail is not None:
            self._pool_rankers = (
                _kernel.PoolRanker(labels.blob(), len(labels), self._logpop_arr,
                                   longtail.ranker_no_history.weights),
                _kernel.PoolRanker(labels.blob(), len(labels), self._logpop_arr,
                                   longtail.ranker.weights))

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

        ``background`` adds query counts (e.g. from a larger query-only log) to the
        popularity used by the MPC fill and the popularity term, not to the labels.
        ``blocklist`` replaces the default list (``config.blocklist=False``: none);
        blocked queries never become labels, MPC entries or long-tail entries.
        """
        config = config or CompleterConfig()
        if blocklist is None:
            blocklist = Blocklist.default() if config.blocklist else Blocklist.empty()
        counts: Counter[str] = Counter(e.query for e in events)
        labels = sorted(q for q, c in counts.items()
                        if c >= config.min_count and not blocklist.blocks(q))
        if not labels:
            raise InputError("no queries to learn from (after min_count and the blocklist)")
        label_set = LabelSet(labels, np.array([counts[q] for q in labels], dtype=np.int64))
        ids = {q: i for i, q in enumerate(labels)}
        texts: list[str] = []
        contexts: list[str | None] = []
        rows: list[int] = []
        prev_session: str | None = None
        prev_query: str | None = None
        for e in events:
            previous = prev_query if e.session == prev_session else None
            prev_session, prev_query = e.session, e.query
            label = ids.get(e.query)
            if label is None:
                continue
            for n in config.prefix_lengths:
                if n >= len(e.query):
                    break
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
        pop = Counter({q: c for q, c in counts.items() if not blocklist.blocks(q)})
        if background:
            pop.update({q: c for q, c in background.items() if not blocklist.blocks(q)})
        longtail = LongTail.build(pop, blocklist) if config.longtail else None
        return cls(config, engine, label_set, MostPopular(pop), longtail=longtail)

    def with_longtail(self, longtail: LongTail) -> Completer:
        """This completer with long-tail statistics attached and switched on."""
        return Completer(replace(self.config, longtail=True), self.engine, self.labels,
                         self.mpc, self.blocklist, longtail)

    # -- persistence -------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        arrays = self.engine.arrays()
        arrays.update({f"labels.{k}": v for k, v in self.labels.arrays().items()})
        arrays.update({f"mpc.{k}": v for k, v in self.mpc.arrays().items()})
        config = {"completer": self.config.to_dict(), **self.engine.manifest_config()}
        tries = {"mpc": self.mpc.trie}
        if self.longtail is not None:
            arrays.update({f"longtail.{k}": v for k, v in self.longtail.arrays().items()})
            tries.update({f"longtail.{k}": v for k, v in self.longtail.tries().items()})
            config["longtail"] = self.longtail.manifest()
        return save_model_dir(path, KIND, config, arrays, tries)

    @classmethod
    def load(cls, path: str | os.PathLike[str], blocklist: Blocklist | None = None,
             verify: bool = True) -> Completer:
        """Load a model directory (arrays memory-mapped). ``blocklist``, if given,
        also filters answers at query time (the training blocklist always applies)."""
        md = open_model_dir(path, kind=KIND, verify=verify)
        try:
            config = CompleterConfig.from_dict(md.config["completer"])
            labels = LabelSet.from_arrays(md.arrays("labels."))
            mpc = MostPopular.from_parts(md.trie("mpc"), md.arrays("mpc."))
            longtail = None
            if "longtail" in md.config:
                longtail = LongTail.from_parts(
                    md.config["longtail"],
                    {n: md.trie(f"longtail.{n}") for n in ("words", "suffixes")},
                    md.arrays("longtail."))
        except ModelFormatError:
            raise
        except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
            raise ModelFormatError(f"{md.path}: completer data inconsistent ({exc})",
                                   str(md.path)) from exc
        return cls(config, Engine.from_model_dir(md), labels, mpc, blocklist, longtail)

    @property
    def uses_history(self) -> bool:
        """Whether :meth:`complete` looks at ``history`` (only the long-tail pool's
        "history" generator does), so a caller can skip fetching it."""
        cfg = self.config
        return bool(cfg.longtail and self.longtail is not None
                    and "history" in cfg.longtail_generators)

    def with_options(self, **changes: Any) -> Completer:
        """A view with other answer-time options (popularity, candidates, longtail)."""
        return Completer(replace(self.config, **changes), self.engine, self.labels,
                         self.mpc, self.blocklist, self.longtail)

    # -- answering (the per-keystroke path) ---------------------------------------
    def complete(self, prefix: str | bytes, previous: str | bytes | None = None,
                 k: int = 10, history: Sequence[str] = ()) -> list[Completion]:
        """Top-k completions of ``prefix`` given the session's previous query.

        ``history``: the user's recent distinct queries, most recent first, normalized
        (as :mod:`qac.session` keeps them; at most
        :data:`qac.session.MAX_HISTORY` are looked at).
        Only the long-tail pool uses it (its ``history`` generator).
        """
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}")
        p = normalize_prefix(prefix.decode("utf-8", "replace")
                             if isinstance(prefix, bytes) else prefix)
        prev = normalize(previous) if previous is not None else ""
        out: list[Completion] = []
        if p and self.config.longtail and self.longtail is not None:
            return self._ranked(p, prev, k, _check_history(history))
        if p or prev:
            lo, hi = self.labels.range(p)
            if lo < hi:
                out = self._model(p, prev, k, lo, hi)
        if len(out) < k:
            self._fill(out, p, k)
        return out

    def _model(self, p: str, prev: str, k: int, lo: int, hi: int) -> list[Completion]:
        n = max(k, self.config.candidates)
        ids, scores = self.engine.search(p, prev or None, k=n, beam=self.config.beam,
                                         lo=lo, hi=hi)
        beta = self.config.popularity + self.config.popularity_per_char * min(len(p), 10)
        if beta and ids:
            # score * (1 + count) ** beta, compared in log space
            logpop = self._logpop
            pairs = zip(ids, scores, strict=True)
            ranked = sorted(((math.log(max(s, 1e-30)) + beta * logpop[i], i) for i, s in pairs),
                            key=lambda t: -t[0])
            ids = [i for _, i in ranked]
            scores = [math.exp(c) for c, _ in ranked]
        labels, block = self.labels.labels, self.blocklist
        out = []
        for i, s in zip(ids, scores, strict=True):
            text = labels[i]
            if block is None or not block.blocks_normalized(text):
                out.append(Completion(text, s, "model"))
                if len(out) == k:
                    break
        return out

    def candidates(self, p: str, prev: str, k: int = 10, history: Sequence[str] = ()
                   ) -> tuple[list[str], list[str], np.ndarray]:
        """The long-tail candidate pool of a normalized prefix: (texts, sources, X).

        X holds the ranker's feature rows (:data:`qac.longtail.FEATURES`); the tuner
        fits the ranker on these. ``complete`` scores the same pool without them.
        """
        lt = self.longtail
        if lt is None:
            raise InputError("this completer has no long-tail statistics")
        return lt.pool(*self._pool_args(lt, p, prev, k, history))

    def _pool_args(self, lt: LongTail, p: str, prev: str, k: int, history: Sequence[str]
                   ) -> tuple[Any, ...]:
        """The arguments of ``LongTail.pool`` for one keystroke (the fitting path)."""
        texts: list[str] = []
        scores: list[float] = []
        pop: list[float] = []
        spaces: list[int] = []
        chars: list[int] = []
        lo, hi = self.labels.range(p)
        if lo < hi:
            ids, scores = self.engine.search(p, prev or None, k=max(k, lt.config.model),
                                             beam=self.config.beam, lo=lo, hi=hi)
            labels, logpop = self.labels.labels, self._logpop
            texts = [labels[i] for i in ids]
            pop = [logpop[i] for i in ids]
            spaces = [t.count(" ") for t in texts]
            chars = [len(t) for t in texts]
        return (p, prev, (texts, scores, pop, spaces, chars), self.mpc.top(p, lt.config.mpc),
                self._count, self._gen_blocks, self.config.longtail_generators, history,
                hi - lo)

    def with_history(self, history: Sequence[str]) -> bool:
        """Whether a keystroke with this history is ranked by the long-tail ranker
        with history (:meth:`qac.longtail.LongTail.ranker_for`): the history
        generator is on and the history is not empty."""
        return bool(history) and "history" in self.config.longtail_generators

    def scored(self, p: str, prev: str, k: int = 10, history: Sequence[str] = ()
               ) -> tuple[list[str], list[str], list[float]]:
        """The long-tail pool of a normalized prefix, best first: (texts, sources,
        ranker scores). The generators run here; the beam search, the merge, the
        features and the scores are one C call (``qac_complete_pool``)."""
        lt, rankers = self.longtail, self._pool_rankers
        if lt is None or rankers is None:
            raise InputError("this completer does not answer from the long-tail pool")
        ranker = rankers[1 if self.with_history(history) else 0]
        cfg = lt.config
        lo, hi = self.labels.range(p)
        texts, gens, nums = lt.extras(p, prev, self.mpc.top(p, cfg.mpc), self._gen_blocks,
                                      self.config.longtail_generators, history, hi - lo)
        # popularity of each text: MPC's come with theirs (they lead the list)
        n_mpc = gens.count(_MPC)
        count = self._count
        pops = nums[:n_mpc] + [count(t) for t in texts[n_mpc:]]
        refs, srcs, scores = self.engine.search_pool(
            ranker, p, prev, max(k, cfg.model), self.config.beam, lo, hi, texts, gens, nums, pops)
        labels = self.labels.labels
        return ([labels[r] if r >= 0 else texts[-1 - r] for r in refs],
                [SOURCES[s] for s in srcs], scores)

    def _ranked(self, p: str, prev: str, k: int, history: Sequence[str]) -> list[Completion]:
        texts, sources, scores = self.scored(p, prev, k, history)
        block = self.blocklist
        out = []
        for text, source, score in zip(texts, sources, scores, strict=True):
            if block is None or not block.blocks_normalized(text):
                out.append(Completion(text, score, source))
                if len(out) == k:
                    break
        return out

    def _fill(self, out: list[Completion], p: str, k: int) -> None:
        seen = {c.text for c in out}
        block = self.blocklist
        for text, count in self.mpc.top(p, k + len(out)):
            if text not in seen and (block is None or not block.blocks_normalized(text)):
                # below any model score: model scores are > 0, these are <= 0
                out.append(Completion(text, -1.0 / (1.0 + math.log1p(count)), "mpc"))
                seen.add(text)
                if len(out) == k:
                    return

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
    """Read a log (and an optional background query log), train, optionally save."""
    from qac.logs import query_counts, read_log

    events = read_log(log_path, until=until)
    bg = query_counts(read_log(background)) if background else None
    c = Completer.train(events, config, background=bg, progress=progress, blocklist=blocklist)
    if out is not None:
        c.save(out)
    return c
