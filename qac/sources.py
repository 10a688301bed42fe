"""Candidate sources that run before the answerer's C call, and their tables.

Every keystroke's pool (see :mod:`qac.complete`) is fed by:

* ``model``: the XMR beam over the labels that start with the prefix (in C);
* ``mpc``: the most popular completions of the prefix (in C, off the labels'
  popularity, when every query the model counts is a label; else listed by
  :class:`qac.mpc.MostPopular` here and handed over);
* ``history``: the user's past queries that start with the prefix (in C, from the
  context the session store hands over);
* ``session``: the previous query, when the prefix agrees with it, extended by its
  popular endings or cut after one of its words; the previous query's words that
  complete the partial word; and, when the words typed so far are its first ones,
  its next word swapped for a completion of the partial one;
* ``suffix`` (rare prefixes): the prefix's last one to three words (the last one
  partial) replaced by popular query endings that start with them;
* ``word`` (rare prefixes): the partial last word completed from a word table, and
  the best completed words extended by popular endings (Mitra & Craswell 2015,
  "Query auto-completion for rare prefixes").

The last three build queries nobody issued before. Their tables (:class:`Tables`)
are :class:`qac.mpc.MostPopular` instances (a marisa-trie plus precomputed top lists
of heavy prefixes), so a lookup is one trie walk with a cap whatever the vocabulary.
Blocked words and endings are left out when the tables are built, and a generated
query's typed head is checked once, so every generated query passes the blocklist.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import marisa_trie
import numpy as np

from qac.blocklist import Blocklist
from qac.errors import InputError, ModelFormatError
from qac.mpc import MostPopular
from qac.rank import SOURCES

log = logging.getLogger(__name__)

#: the sources a completer may switch off (the beam and MPC always feed the pool)
GENERATORS = ("history", "session", "suffix", "word")
MPC, HISTORY, SESSION, SUFFIX, WORD = (SOURCES.index(s) for s in
                                        ("mpc", "history", "session", "suffix", "word"))

Blocks = Callable[[str], bool] | None

#: characters of a first word typed before the session source swaps it into the
#: previous query ("yose" after "yellowstone national park"); fewer are too little
#: evidence ("pl" after "game console" is no "pleasure console")
SWAP_FIRST = 4


@dataclass(frozen=True)
class SourcesConfig:
    """How many candidates each source puts into the pool, and how tables are built.

    model:          beam answers put into the pool.
    mpc:            most popular completions put into the pool.
    history:        the user's past queries with the prefix a keystroke looks at.
    words:          completions of the partial last word.
    word_ext:       how many of those completed words are extended by endings.
    ext:            endings per extended word (and per extended previous query).
    suffixes:       endings per tail (the prefix's last 1..max_suffix_words words).
    max_suffix_words: longest ending mined from past queries (1-3 words).
    min_count:      fewest occurrences for a word or an ending to be kept.
    min_tail:       shortest tail (characters) an ending lookup starts from.
    rare:           the word and suffix sources run only for a rare prefix: one
                    that fewer than this many known queries start with (Mitra &
                    Craswell's "rare prefix"). Past a common prefix the beam, MPC
                    and history already hold more good candidates than are shown.
    """

    model: int = 10
    mpc: int = 10
    history: int = 200
    words: int = 5
    word_ext: int = 2
    ext: int = 3
    suffixes: int = 4
    max_suffix_words: int = 3
    min_count: int = 2
    min_tail: int = 2
    rare: int = 10

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"SourcesConfig.{name}: an int >= 0, got {value!r}")
        if not 1 <= self.max_suffix_words <= 3:
            raise InputError("SourcesConfig.max_suffix_words: 1..3, got "
                             f"{self.max_suffix_words}")
        if self.min_count < 1:
            raise InputError(f"SourcesConfig.min_count: must be >= 1, got {self.min_count}")
        if self.model > 1000 or self.mpc > 1000 or self.history > 10000:
            raise InputError("SourcesConfig: model and mpc at most 1000, history at most "
                             "10000")


class Tables:
    """Word and query-ending counts, and the generators over them.

    ``words`` maps words to counts, ``suffixes`` maps query endings (the last 1..3
    words of past queries) to counts.
    """

    def __init__(self, words: MostPopular, suffixes: MostPopular,
                 config: SourcesConfig | None = None) -> None:
        self.words = words
        self.suffixes = suffixes
        self.config = config or SourcesConfig()

    @classmethod
    def build(cls, counts: Mapping[str, int], blocklist: Blocklist | None = None,
              config: SourcesConfig | None = None) -> Tables:
        """Mine word and ending counts from query -> count (normalized queries)."""
        config = config or SourcesConfig()
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

        t = cls(table(words), table(ends), config)
        log.info("tables: %d words, %d endings", len(t.words), len(t.suffixes))
        return t

    # -- persistence (through qac.storage, as part of a completer directory) -----------
    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"words.{k}": v for k, v in self.words.arrays().items()}
        out.update({f"suffixes.{k}": v for k, v in self.suffixes.arrays().items()})
        return out

    def tries(self) -> dict[str, marisa_trie.Trie]:
        return {"words": self.words.trie, "suffixes": self.suffixes.trie}

    @classmethod
    def from_parts(cls, config: SourcesConfig, tries: Mapping[str, marisa_trie.Trie],
                   arrays: Mapping[str, np.ndarray]) -> Tables:
        try:
            words = MostPopular.from_parts(
                tries["words"], {k[6:]: v for k, v in arrays.items() if k.startswith("words.")},
                "tables.words")
            ends = MostPopular.from_parts(
                tries["suffixes"],
                {k[9:]: v for k, v in arrays.items() if k.startswith("suffixes.")},
                "tables.suffixes")
        except KeyError as exc:
            raise ModelFormatError(f"tables: {exc} missing", "tables") from exc
        return cls(words, ends, config)

    # -- generators ----------------------------------------------------------------
    def _ends(self, tail: str, n: int) -> Sequence[tuple[str, int]]:
        if n <= 0 or len(tail) < self.config.min_tail:
            return ()
        return self.suffixes.top(tail, n)

    def gen_word(self, p: str, blocks: Blocks = None) -> list[tuple[str, int]]:
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

    def gen_suffix(self, p: str, blocks: Blocks = None) -> list[tuple[str, int]]:
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

    def gen_session(self, p: str, prev: str, blocks: Blocks = None) -> list[tuple[str, int]]:
        """Reformulations of the previous query: extended by its popular endings,
        and cut after one of its words, when the prefix agrees with it; its words
        that complete the partial word, alone and with the rest of the previous query
        after them (unless that is the previous query again); and, when the words
        typed so far are its first ones, its next word swapped for a popular
        completion of the partial one."""
        if not prev:
            return []
        out: list[tuple[str, int]] = []
        n = self.config.ext
        if prev.startswith(p) or p.startswith(prev + " "):
            cut = prev.rfind(" ") + 1
            out += [(prev[:cut] + e, c) for e, c in self._ends(prev[cut:] + " ", n)
                    if len(prev[:cut]) + len(e) > len(prev)]
        words = prev.split(" ")
        if prev.startswith(p):
            # its first words, cut after any but the last: "washington cemetery" at
            # "wa" after "washington cemetery ny"
            for j in range(1, len(words)):
                first = " ".join(words[:j])
                if len(first) > len(p):
                    out.append((first, self.words.count(words[j - 1])))
        cut = p.rfind(" ") + 1
        head, part = p[:cut], p[cut:]
        if part:
            seen: set[str] = set()
            for i, w in enumerate(words):
                if not w.startswith(part):
                    continue
                rest = head + " ".join(words[i:])
                if i + 1 < len(words) and rest != prev:
                    # a reformulation keeps the rest of the previous query: "family d"
                    # after "drive-in stephens city va"
                    out.append((rest, self.words.count(w)))
                if w != part and w not in seen:
                    seen.add(w)
                    out.append((head + w, self.words.count(w)))
                    out += [(head + e, c) for e, c in self._ends(w + " ", n)]
            j = head.count(" ")
            if (j + 1 < len(words) and len(part) >= (self.config.min_tail if j else SWAP_FIRST)
                    and head == " ".join(words[:j]) + " " * (j > 0)):
                # a reformulation that swaps one word: the words typed so far are the
                # previous query's first ones and the partial word replaces the next
                # ("hack my" after "hack user accounts": "hack myspace accounts")
                rest = " " + " ".join(words[j + 1:])
                out += [(head + w + rest, c) for w, c in self.words.top(part, self.config.words)
                        if w != words[j]]
        if blocks is not None:
            out = [(t, c) for t, c in out if not blocks(t)]
        return out

    def generated(self, p: str, prev: str, generators: Sequence[str], rare: bool,
                  blocks: Blocks = None) -> tuple[list[str], list[int], list[int]]:
        """The queries the session, suffix and word sources build for one keystroke:
        (texts, source of each, count of each). Texts may repeat; the pool merges
        them."""
        texts: list[str] = []
        srcs: list[int] = []
        counts: list[int] = []

        def add(g: int, made: list[tuple[str, int]]) -> None:
            texts.extend([t for t, _ in made])
            counts.extend([c for _, c in made])
            srcs.extend([g] * len(made))

        if "session" in generators:
            add(SESSION, self.gen_session(p, prev, blocks))
        if rare and "suffix" in generators:
            add(SUFFIX, self.gen_suffix(p, blocks))
        if rare and "word" in generators:
            add(WORD, self.gen_word(p, blocks))
        return texts, srcs, counts


def check_generators(generators: Sequence[str]) -> tuple[str, ...]:
    bad = sorted(set(generators) - set(GENERATORS))
    if bad:
        raise InputError(f"generators: unknown {bad}; known: {list(GENERATORS)}")
    return tuple(generators)

