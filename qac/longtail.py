"""Long-tail completion: candidates beyond the label set, and one ranker over all of them.

About two thirds of next week's queries were never issued before, so a ranker that
only picks among past queries (the XMR labels, the MPC table) cannot produce them.
Beside the beam search, cheap generators build new queries from the typed prefix:

* ``word``: the partial last word is completed from a word vocabulary with counts,
  and each of the best completed words is extended by popular query endings that
  start with it (Mitra & Craswell 2015, "Query auto-completion for rare prefixes").
* ``suffix``: the prefix's last one to three words (the last one partial) are
  matched against popular query endings -- the last one to three words of past
  queries, with counts -- and the matching ending replaces them.
* ``session``: the previous query, when the prefix agrees with it, extended by its
  popular endings; and the previous query's words that complete the partial word.
* ``history``: the user's own recent queries (the session store keeps the last 200
  distinct ones by default, most recent first) that start with the prefix. Heavy users
  repeat themselves: in the AOL evaluation week a third of next queries are one of
  the user's earlier queries, a fifth one of the last ten distinct ones.

Every candidate (these, the XMR beam and the MPC list) gets a short feature row
(:data:`FEATURES`) and one linear :class:`Ranker` orders them; its weights are
fitted on a dev split with a listwise softmax loss (``sim/tune_completion.py``),
once with the users' history and once without (a keystroke that comes without
history is ranked by the second).
:meth:`LongTail.pool` builds the rows (for the fit). On the per-keystroke path the
generators run here (:meth:`LongTail.extras`) and the C kernel merges their texts
with the beam's answers, computes the same features and scores and orders the pool,
in the same call as the beam search (``native/longtail.c``; the tests hold its scores
equal to ``pool``'s rows times the weights). The word and suffix generators run only
after a rare prefix (:attr:`LongTailConfig.rare`).

Statistics: both tables are :class:`qac.mpc.MostPopular` instances (a marisa-trie
plus precomputed top lists of heavy prefixes), so every lookup is one trie prefix
walk with a cap, and the per-keystroke cost does not grow with the vocabulary.
Blocked words and endings are left out at build time; a candidate's typed head is
checked once per head, so every generated query passes the training blocklist.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import marisa_trie
import numpy as np

from qac import _kernel
from qac.blocklist import Blocklist
from qac.errors import InputError, ModelFormatError, QacError
from qac.mpc import MostPopular

log = logging.getLogger(__name__)

#: generators, in the order that names a candidate's ``source`` when several made it
SOURCES = ("model", "mpc", "session", "suffix", "word", "history")
#: the ranker's features, in column order (L = min(len(prefix), 10) / 10); the first
#: len(SOURCES) columns are "made by this generator" flags, in SOURCES order
FEATURES = (
    "is_model", "is_mpc", "is_session", "is_suffix", "is_word", "is_history",
    "model_logscore", "model_logscore*L", "model_rank",
    "logpop", "logpop*L", "seen",
    "gen_logcount", "gen_logcount*L",
    "prev_overlap", "extends_prev",
    "added_words", "added_chars",
    "hist_recency", "hist_recency*L",
)
_NF = len(FEATURES)
#: features added after the first release of the ranker (weight 0 when absent)
_NEWER = ("is_history", "hist_recency", "hist_recency*L")
_COL = {f: i for i, f in enumerate(FEATURES)}
_MODEL, _MPC, _SESSION, _SUFFIX, _WORD, _HISTORY = range(len(SOURCES))
if (_kernel.LT_NF, _kernel.LT_NSRC, _kernel.LT_MPC, _kernel.LT_HISTORY) != (
        _NF, len(SOURCES), _MPC, _HISTORY):  # pragma: no cover - stale build
    raise QacError("qac._native ranks other long-tail features: rebuild it")
(_LOGSCORE, _LOGSCORE_L, _RANK, _LOGPOP, _LOGPOP_L, _SEEN, _GEN, _GEN_L, _OVERLAP,
 _EXTENDS, _WORDS, _CHARS, _HREC, _HREC_L) = (_COL[f] for f in FEATURES[len(SOURCES):])
#: the beam's answers in a pool: texts, engine scores, log(1 + popularity), spaces and
#: characters of each text (lists, best first)
_Model = tuple[Sequence[str], Sequence[float], Sequence[float], Sequence[int], Sequence[int]]


def _overlap(prev_words: set[str], cut: int, t: str) -> float:
    """Share of the words of ``t[cut:]`` (from the prefix's last word on) that are
    words of the previous query (``prev_words``)."""
    new = t[cut:].split(" ")
    return len(prev_words.intersection(new)) / len(new)


#: the generators a completer may switch on or off (the beam and MPC always feed)
GENERATORS = ("word", "suffix", "session", "history")


@dataclass(frozen=True)
class LongTailConfig:
    """Caps of the generators (candidates per lookup) and how the tables are built.

    words:          completions of the partial last word.
    word_ext:       how many of those completed words are extended by endings.
    ext:            endings per extended word (and per extended previous query).
    suffixes:       endings per tail (the prefix's last 1..max_suffix_words words).
    max_suffix_words: longest ending mined from past queries (1-3 words).
    min_count:      fewest occurrences for a word or an ending to be kept.
    min_tail:       shortest tail (characters) an ending lookup starts from.
    model:          beam answers put into the candidate pool.
    mpc:            MPC completions put into the candidate pool.
    rare:           the word and suffix generators run only for a rare prefix: one
                    that fewer than this many labels (past queries) start with
                    (Mitra & Craswell's "rare prefix"; 0: never, a huge number:
                    always). Past a common prefix the beam, MPC and history already
                    hold more good candidates than are shown, and building new
                    queries there costs time and changes little (tuned on the dev
                    split with ``sim/tune_completion.py``).
    """

    words: int = 5
    word_ext: int = 2
    ext: int = 3
    suffixes: int = 4
    max_suffix_words: int = 3
    min_count: int = 2
    min_tail: int = 2
    model: int = 10
    mpc: int = 10
    rare: int = 10

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 0:
                raise InputError(f"LongTailConfig.{name}: must be >= 0, got {value}")
        if not 1 <= self.max_suffix_words <= 3:
            raise InputError("LongTailConfig.max_suffix_words: 1..3, got "
                             f"{self.max_suffix_words}")
        if self.min_count < 1:
            raise InputError(f"LongTailConfig.min_count: must be >= 1, got {self.min_count}")


class Ranker:
    """A linear scorer over :data:`FEATURES`: score = X @ weights."""

    def __init__(self, weights: Sequence[float] | np.ndarray) -> None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (_NF,) or not np.all(np.isfinite(w)):
            raise InputError(f"Ranker: {_NF} finite weights needed, got shape {w.shape}")
        self.weights = w

    def score(self, X: np.ndarray) -> np.ndarray:
        """Scores of feature rows X (float [n, len(FEATURES)])."""
        return np.asarray(X @ self.weights)

    def to_dict(self) -> dict[str, float]:
        return {f: float(v) for f, v in zip(FEATURES, self.weights, strict=True)}

    @classmethod
    def from_dict(cls, d: Mapping[str, float]) -> Ranker:
        """Weights by feature name; features newer than the weights (models saved
        before the history generator) weigh 0, so those models ignore history."""
        d = {**dict.fromkeys(_NEWER, 0.0), **d}
        missing = [f for f in FEATURES if f not in d]
        if missing:
            raise InputError(f"Ranker: weights for {missing} missing")
        return cls([float(d[f]) for f in FEATURES])

    @classmethod
    def fit(cls, groups: Sequence[tuple[np.ndarray, int]], l2: float = 1e-3,
            init: np.ndarray | None = None, max_iter: int = 300) -> Ranker:
        """Listwise softmax fit: each group is (X [n_i, F], index of the target row).

        Minimizes mean_i -log softmax(X_i w)[t_i] + l2 |w|^2 with L-BFGS. Groups
        whose target is not among the candidates say nothing and are left out by the
        caller.
        """
        from scipy.optimize import minimize

        if not groups:
            raise InputError("Ranker.fit: no groups")
        X = np.concatenate([g for g, _ in groups]).astype(np.float64)
        if X.ndim != 2 or X.shape[1] != _NF:
            raise InputError(f"Ranker.fit: rows of {_NF} features needed, got {X.shape}")
        sizes = np.array([len(g) for g, _ in groups], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        tgt = np.array([t for _, t in groups], dtype=np.int64)
        if np.any(tgt < 0) or np.any(tgt >= sizes):
            raise InputError("Ranker.fit: a target index is outside its group")
        gid = np.repeat(np.arange(len(groups)), sizes)
        rows_t = starts + tgt
        n = len(groups)

        def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
            s = X @ w
            m = np.full(n, -np.inf)
            np.maximum.at(m, gid, s)
            e = np.exp(s - m[gid])
            z = np.bincount(gid, weights=e, minlength=n)
            lse = m + np.log(z)
            val = float(np.mean(lse - s[rows_t])) + l2 * float(w @ w)
            p = e / z[gid]
            grad = (X.T @ p - X[rows_t].sum(axis=0)) / n + 2 * l2 * w
            return val, grad

        w0 = np.zeros(_NF) if init is None else np.asarray(init, dtype=np.float64)
        res = minimize(loss, w0, jac=True, method="L-BFGS-B",
                       options={"maxiter": max_iter})
        log.info("ranker fit: %d groups, %d rows, loss %.4f (%s)", n, len(X), res.fun,
                 res.message)
        return cls(res.x)


#: fitted on the AOL dev week (2006-05-11..17, model trained on rows before 05-11,
#: each case with its user's history) with ``sim/tune_completion.py --fit-ranker``;
#: used when nothing else is given
DEFAULT_WEIGHTS: dict[str, float] = {
    "is_model": 1.717, "is_mpc": 0.4188, "is_session": 0.8997, "is_suffix": 1.0226,
    "is_word": -0.6094, "is_history": 4.3556, "model_logscore": 0.1327,
    "model_logscore*L": 0.1072, "model_rank": 1.0377, "logpop": 0.1859, "logpop*L": 0.833,
    "seen": -0.1567, "gen_logcount": 0.0269, "gen_logcount*L": -0.1262,
    "prev_overlap": 2.2882, "extends_prev": 0.3815, "added_words": -0.1111,
    "added_chars": -0.2887, "hist_recency": 4.2418, "hist_recency*L": 0.6202,
}
#: the same fit with no history in any case (``--history 0``): the weights used when
#: a keystroke comes with no history (a new user, a store without the history list,
#: or the history generator off). The history weights above, applied without history,
#: rank below the engine without long tail (evaluation week 0.2132 against 0.2141);
#: these reach 0.2217.
DEFAULT_WEIGHTS_NO_HISTORY: dict[str, float] = {
    "is_model": 4.7694, "is_mpc": 0.3904, "is_session": 1.0178, "is_suffix": 1.0242,
    "is_word": -0.4227, "is_history": 0.0, "model_logscore": 0.3889,
    "model_logscore*L": 0.152, "model_rank": 2.118, "logpop": 0.1527, "logpop*L": 0.8592,
    "seen": 0.821, "gen_logcount": -0.0706, "gen_logcount*L": 0.0131,
    "prev_overlap": 2.6082, "extends_prev": 0.5432, "added_words": -0.0239,
    "added_chars": -0.3082, "hist_recency": 0.0, "hist_recency*L": 0.0,
}


class LongTail:
    """Word and ending tables, the generators over them, and the rankers.

    ``words`` maps words to counts, ``suffixes`` maps query endings (last 1..3
    words of past queries) to counts; both are :class:`MostPopular` tables.
    ``ranker`` orders the pool of a keystroke that comes with the user's history,
    ``ranker_no_history`` one that comes without (each fitted on such cases).
    """

    def __init__(self, words: MostPopular, suffixes: MostPopular,
                 config: LongTailConfig | None = None, ranker: Ranker | None = None,
                 ranker_no_history: Ranker | None = None) -> None:
        self.words = words
        self.suffixes = suffixes
        self.config = config or LongTailConfig()
        self.ranker = ranker or Ranker.from_dict(DEFAULT_WEIGHTS)
        self.ranker_no_history = ranker_no_history or Ranker.from_dict(
            DEFAULT_WEIGHTS_NO_HISTORY)

    def ranker_for(self, history: bool) -> Ranker:
        """The ranker of a keystroke with (True) or without the user's history."""
        return self.ranker if history else self.ranker_no_history

    # -- building ------------------------------------------------------------------
    @classmethod
    def build(cls, counts: Mapping[str, int], blocklist: Blocklist | None = None,
              config: LongTailConfig | None = None, ranker: Ranker | None = None,
              ranker_no_history: Ranker | None = None) -> LongTail:
        """Mine word and ending counts from query -> count (normalized queries)."""
        config = config or LongTailConfig()
        blocks = (blocklist or Blocklist.empty()).blocks
        words: Counter[str] = Counter()
        ends: Counter[str] = Counter()
        jmax = config.max_suffix_words
        for q, c in counts.items():
            toks = q.split(" ")
            for w in toks:
                words[w] += c
            for j in range(1, min(jmax, len(toks)) + 1):
                ends[" ".join(toks[-j:])] += c
        keep = config.min_count

        def table(counter: Counter[str]) -> MostPopular:
            kept = {k: c for k, c in counter.items() if c >= keep and k and not blocks(k)}
            return MostPopular(kept if kept else {"": 0})

        lt = cls(table(words), table(ends), config, ranker, ranker_no_history)
        log.info("long tail: %d words, %d endings", len(lt.words), len(lt.suffixes))
        return lt

    def with_ranker(self, ranker: Ranker | None = None,
                    ranker_no_history: Ranker | None = None) -> LongTail:
        """The same tables with other rankers (None: keep this one's)."""
        return LongTail(self.words, self.suffixes, self.config, ranker or self.ranker,
                        ranker_no_history or self.ranker_no_history)

    # -- persistence (through qac.storage, as part of a completer directory) ---------
    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"words.{k}": v for k, v in self.words.arrays().items()}
        out.update({f"suffixes.{k}": v for k, v in self.suffixes.arrays().items()})
        return out

    def tries(self) -> dict[str, marisa_trie.Trie]:
        return {"words": self.words.trie, "suffixes": self.suffixes.trie}

    def manifest(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "ranker": self.ranker.to_dict(),
                "ranker_no_history": self.ranker_no_history.to_dict()}

    @classmethod
    def from_parts(cls, manifest: Mapping[str, Any], tries: Mapping[str, marisa_trie.Trie],
                   arrays: Mapping[str, np.ndarray]) -> LongTail:
        try:
            words = MostPopular.from_parts(
                tries["words"], {k[6:]: v for k, v in arrays.items() if k.startswith("words.")})
            ends = MostPopular.from_parts(
                tries["suffixes"],
                {k[9:]: v for k, v in arrays.items() if k.startswith("suffixes.")})
            # models saved before the no-history ranker get the default one
            nohist = manifest.get("ranker_no_history")
            return cls(words, ends, LongTailConfig(**manifest["config"]),
                       Ranker.from_dict(manifest["ranker"]),
                       Ranker.from_dict(nohist) if nohist is not None else None)
        except (KeyError, TypeError, InputError) as exc:
            raise ModelFormatError(f"long-tail data inconsistent ({exc})", "longtail") from exc

    # -- generators ------------------------------------------------------------------
    def _ends(self, tail: str, n: int) -> Sequence[tuple[str, int]]:
        if n <= 0 or len(tail) < self.config.min_tail:
            return ()
        return self.suffixes.top(tail, n)

    def gen_word(self, p: str, blocks: Any = None) -> list[tuple[str, int]]:
        """Complete the partial last word; extend the best ones by popular endings."""
        cut = p.rfind(" ") + 1
        head, part = p[:cut], p[cut:]
        if not part or (blocks is not None and head and blocks(head)):
            return []
        cfg = self.config
        words = self.words.top(part, cfg.words)
        out = [(head + w, c) for w, c in words]
        if cfg.word_ext and cfg.ext:
            # the word before the partial one narrows the endings ("of am" -> "of america ...")
            cut2 = p.rfind(" ", 0, cut - 1) + 1 if cut else 0
            prev_word = p[cut2:cut]
            for w, _ in words[:cfg.word_ext]:
                if prev_word:
                    out += [(p[:cut2] + e, c) for e, c in
                            self._ends(prev_word + w + " ", cfg.ext)]
                out += [(head + e, c) for e, c in self._ends(w + " ", cfg.ext)]
        return out

    def gen_suffix(self, p: str, blocks: Any = None) -> list[tuple[str, int]]:
        """Replace the prefix's last 1..3 words (the last partial) by popular endings."""
        out: list[tuple[str, int]] = []
        cut = len(p)
        n = self.config.suffixes
        for _ in range(self.config.max_suffix_words):
            cut = p.rfind(" ", 0, cut - 1) + 1 if cut > 1 else 0
            head, tail = p[:cut], p[cut:]
            if tail.strip() and not (blocks is not None and head and blocks(head)):
                out += [(head + e, c) for e, c in self._ends(tail, n)]
            if cut == 0:
                break
        return out

    def gen_session(self, p: str, prev: str, blocks: Any = None) -> list[tuple[str, int]]:
        """The previous query extended by its popular endings, when the prefix agrees
        with it; the previous query's words that complete the partial word."""
        if not prev:
            return []
        out: list[tuple[str, int]] = []
        n = self.config.ext
        if prev.startswith(p) or p.startswith(prev + " "):
            cut = prev.rfind(" ") + 1
            out += [(prev[:cut] + e, c) for e, c in self._ends(prev[cut:] + " ", n)
                    if len(prev[:cut]) + len(e) > len(prev)]
        cut = p.rfind(" ") + 1
        head, part = p[:cut], p[cut:]
        if part:
            for w in dict.fromkeys(prev.split(" ")):
                if w.startswith(part) and w != part:
                    out.append((head + w, self.words.count(w)))
                    out += [(head + e, c) for e, c in self._ends(w + " ", n)]
        if blocks is not None:
            out = [(t, c) for t, c in out if not blocks(t)]
        return out

    def gen_history(self, p: str, history: Sequence[str], blocks: Any = None
                    ) -> list[tuple[str, int]]:
        """The user's recent queries that start with ``p``: (text, recency rank).

        One C-level scan of the joined history instead of a Python loop over it
        (normalized queries hold no newline; if one does, the plain loop runs).
        """
        if not history:
            return []
        try:
            blob = "\n" + "\n".join(history)
        except TypeError:
            raise InputError("history must hold str queries") from None
        out: list[tuple[str, int]]
        if blob.count("\n") != len(history):
            # an entry with a newline is no normalized query (and could not pass
            # through the pool's newline-joined texts): it is never a candidate
            out = [(t, r) for r, t in enumerate(history) if t.startswith(p) and "\n" not in t]
            return [(t, r) for t, r in out if not (blocks is not None and blocks(t))]
        out = []
        needle = "\n" + p
        i = blob.find(needle)
        r = at = 0
        while i >= 0:
            r += blob.count("\n", at, i)  # entries before this one: its rank
            j = blob.find("\n", i + 1)
            t = blob[i + 1:] if j < 0 else blob[i + 1:j]
            if history[r] == t and not (blocks is not None and blocks(t)):
                out.append((t, r))
            if j < 0:
                break
            at = i
            i = blob.find(needle, j)
        return out

    # -- the candidate pool, its features and its scores --------------------------------
    #
    # ``model`` is (texts, engine scores, log(1 + popularity), spaces, characters) of
    # the beam's answers, best first, as lists; ``mpc`` (text, count); ``count(text)``
    # the popularity of a full query (the MPC table's); ``history`` the user's recent
    # distinct queries, most recent first (normalized, as the session store keeps
    # them); ``n_labels`` how many labels start with ``p`` (the word and suffix
    # generators run only below ``config.rare``). The previous query itself is never
    # a candidate: a session does not repeat its last query (the log reader drops
    # such repeats). :meth:`pool` returns the feature rows (what the ranker is fitted
    # on); ``qac_rank_pool`` in the C kernel computes the same rows' scores on the
    # per-keystroke path (a test holds the two equal).

    def extras(self, p: str, prev: str, mpc: Sequence[tuple[str, int]], blocks: Any,
               generators: Sequence[str], history: Sequence[str], n_labels: int
               ) -> tuple[list[str], list[int], list[int]]:
        """The generated candidates of one keystroke, MPC's first: (texts, generator
        of each (an index into SOURCES), its number: a count, for history the
        recency rank). Texts may repeat and may equal ``prev``; the pool merges
        them."""
        texts = [t for t, _ in mpc]
        nums = [c for _, c in mpc]
        gens = [_MPC] * len(texts)

        def add(g: int, made: list[tuple[str, int]]) -> None:
            texts.extend([t for t, _ in made])
            nums.extend([c for _, c in made])
            gens.extend([g] * len(made))

        if "history" in generators and history:
            add(_HISTORY, self.gen_history(p, history, blocks))
        if "session" in generators:
            add(_SESSION, self.gen_session(p, prev, blocks))
        rare = n_labels < self.config.rare
        if rare and "suffix" in generators:
            add(_SUFFIX, self.gen_suffix(p, blocks))
        if rare and "word" in generators:
            add(_WORD, self.gen_word(p, blocks))
        return texts, gens, nums

    def _gather(self, p: str, prev: str, mtexts: Sequence[str],
                mpc: Sequence[tuple[str, int]], blocks: Any, generators: Sequence[str],
                history: Sequence[str], n_labels: int
                ) -> tuple[int | None, list[str], list[tuple[int, int]],
                           list[tuple[int, int, int]]]:
        """(index of ``prev`` among the beam's texts or None, texts of the new rows,
        (generator, number) that first made each new row, every (row, generator,
        number) made). Rows count the beam's texts first, without ``prev``."""
        at = {t: i for i, t in enumerate(mtexts)}
        drop = at.pop(prev, None) if prev else None
        if drop is not None:
            at = {t: i - (i > drop) for t, i in at.items()}
        nm = len(at)
        texts, gens, nums = self.extras(p, prev, mpc, blocks, generators, history, n_labels)
        # texts the beam did not return get new rows, named after the first
        # generator that made them
        new: dict[str, int] = {}
        first: list[tuple[int, int]] = []
        made: list[tuple[int, int, int]] = []
        for g, t, c in zip(gens, texts, nums, strict=True):
            if t == prev or not t.startswith(p):
                continue
            i = at.get(t)
            if i is None:
                i = new.get(t)
                if i is None:
                    i = new[t] = nm + len(first)
                    first.append((g, c))
            made.append((i, g, c))
        return drop, list(new), first, made

    def pool(self, p: str, prev: str, model: _Model, mpc: Sequence[tuple[str, int]],
             count: Any, blocks: Any = None, generators: Sequence[str] = GENERATORS,
             history: Sequence[str] = (), n_labels: int = 0
             ) -> tuple[list[str], list[str], np.ndarray]:
        """(texts, sources, X [n, len(FEATURES)]) of every distinct candidate starting
        with ``p`` (see the comment above for the arguments)."""
        mtexts, mscores, mpop, mspaces, mchars = model
        drop, ntexts, first, made = self._gather(p, prev, mtexts, mpc, blocks, generators,
                                                 history, n_labels)
        if drop is not None:
            keep = [i for i in range(len(mtexts)) if i != drop]
            mtexts = [mtexts[i] for i in keep]
            mscores = [mscores[i] for i in keep]
            mpop = [mpop[i] for i in keep]
            mspaces = [mspaces[i] for i in keep]
            mchars = [mchars[i] for i in keep]
        nm = len(mtexts)
        L = min(len(p), 10) / 10.0
        X = np.zeros((nm + len(ntexts), _NF))
        lp, pw = len(p), p.count(" ")
        if nm:
            M = X[:nm]
            ls = np.maximum(np.log(np.maximum(np.asarray(mscores, dtype=np.float64), 1e-30)),
                            -10.0)
            M[:, _MODEL] = 1.0
            M[:, _LOGSCORE] = ls
            M[:, _LOGSCORE_L] = ls * L
            M[:, _RANK] = 1.0 / np.arange(1, nm + 1)
            M[:, _LOGPOP] = mpop
            M[:, _WORDS] = mspaces
            M[:, _CHARS] = mchars
        if ntexts:
            N = X[nm:]
            # MPC's number is the popularity itself; the others' is looked up
            N[:, _LOGPOP] = [c if g == _MPC else count(t)
                             for t, (g, c) in zip(ntexts, first, strict=True)]
            np.log1p(N[:, _LOGPOP], out=N[:, _LOGPOP])
            if prev:
                prev_words, cut = set(prev.split(" ")), p.rfind(" ") + 1
                N[:, _OVERLAP] = [_overlap(prev_words, cut, t) for t in ntexts]
                N[:, _EXTENDS] = [t.startswith(prev) for t in ntexts]
            N[:, _WORDS] = [t.count(" ") for t in ntexts]
            N[:, _CHARS] = [len(t) for t in ntexts]
        X[:, _LOGPOP_L] = X[:, _LOGPOP] * L
        X[:, _SEEN] = X[:, _LOGPOP] > 0
        X[:, _WORDS] -= pw
        X[:, _CHARS] -= lp
        X[:, _CHARS] /= 10.0
        # generators' counts (words, endings) are a feature, history's number is its
        # recency rank; a row made several times keeps the largest
        for i, g, c in made:
            X[i, g] = 1.0
            if g == _HISTORY:
                X[i, _HREC] = max(X[i, _HREC], 1.0 / (1.0 + c))
            elif g != _MPC:
                X[i, _GEN] = max(X[i, _GEN], math.log1p(c))
        X[:, _GEN_L] = X[:, _GEN] * L
        X[:, _HREC_L] = X[:, _HREC] * L
        return [*mtexts, *ntexts], ["model"] * nm + [SOURCES[g] for g, _ in first], X
