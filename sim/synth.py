"""Deterministic synthetic XMR data for scale tests (1M labels, 2M training instances).

Model of the data, chosen to look like query -> item retrieval:

- ``n_labels`` labels with Zipf-like popularity (exponent ``zipf_a``, ranks shuffled so a
  label's id says nothing about its popularity);
- labels fall into topics of ``topic_size`` labels; each topic has ``topic_pool`` tokens;
- each label owns ``label_tokens`` characteristic tokens drawn from a large vocabulary
  (``vocab_per_label`` x n_labels tokens) plus ``label_topic_tokens`` from its topic pool;
- ``n_common`` shared common tokens with their own Zipf popularity;
- a query picks a label by popularity, then 1..6 tokens: each one of the label's own tokens
  (p_label), one of its topic's tokens (p_topic) or a common token (the rest);
- every label gets one "title" instance (its own + topic tokens), so each label is seen in
  training, and the remaining ``n_train - n_labels`` instances are queries;
- the test set is drawn from the same generator with its own random stream.

Tokens are written ``t<id>``. ``python sim/synth.py --scale 0.01`` prints a summary.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as smat


@dataclass(frozen=True)
class SynthConfig:
    n_labels: int = 1_000_000
    n_train: int = 2_000_000
    n_test: int = 20_000
    zipf_a: float = 1.0
    topic_size: int = 64
    topic_pool: int = 24
    label_tokens: int = 3
    label_topic_tokens: int = 2
    vocab_per_label: float = 2.0
    n_common: int = 500
    p_label: float = 0.6
    p_topic: float = 0.25
    max_len: int = 6
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_labels < 1 or self.n_train < self.n_labels or self.n_test < 1:
            raise ValueError(f"need 1 <= n_labels <= n_train and n_test >= 1: {self}")
        if not 0 <= self.p_label + self.p_topic <= 1:
            raise ValueError("p_label + p_topic must lie in [0, 1]")

    @classmethod
    def scaled(cls, scale: float, seed: int = 0) -> SynthConfig:
        """Labels and train instances times ``scale``; the test set shrinks more slowly."""
        return cls(n_labels=max(100, int(1_000_000 * scale)),
                   n_train=max(200, int(2_000_000 * scale)),
                   n_test=max(1000, int(20_000 * min(1.0, scale * 4))), seed=seed)

    def as_dict(self) -> dict:
        return asdict(self)


def _zipf_p(n: int, a: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** a
    return p / p.sum()


def generate(
    cfg: SynthConfig, log: Callable[[str], None] = lambda s: None
) -> tuple[list[str], smat.csr_matrix, list[str], smat.csr_matrix]:
    """Return (train texts, Y_train csr, test texts, Y_test csr); one label per row."""
    rng = np.random.default_rng(cfg.seed)
    L = cfg.n_labels
    n_topics = max(1, L // cfg.topic_size)
    n_vocab = cfg.n_common + n_topics * cfg.topic_pool + int(cfg.vocab_per_label * L)
    # Token id ranges: [0, n_common) common, then topic pools, then the label vocabulary.
    topic_base = cfg.n_common
    label_base = topic_base + n_topics * cfg.topic_pool
    pop = _zipf_p(L, cfg.zipf_a)[rng.permutation(L)]
    common_p = _zipf_p(cfg.n_common, 1.0)
    topic_of = rng.integers(0, n_topics, size=L)
    own = rng.integers(label_base, n_vocab, size=(L, cfg.label_tokens))
    own_topic = topic_base + topic_of[:, None] * cfg.topic_pool + rng.integers(
        0, cfg.topic_pool, size=(L, cfg.label_topic_tokens))
    names = np.array([f"t{i}" for i in range(n_vocab)], dtype=object)
    log(f"synth: {L} labels, {n_topics} topics, vocab {n_vocab}")

    def queries(n: int, r: np.random.Generator) -> tuple[list[str], np.ndarray]:
        lab = r.choice(L, size=n, p=pop)
        length = 1 + r.binomial(cfg.max_len - 1, 0.4, size=n)
        u = r.random((n, cfg.max_len))
        tok_own = own[lab[:, None], r.integers(0, cfg.label_tokens, size=(n, cfg.max_len))]
        tok_topic = (topic_base + topic_of[lab][:, None] * cfg.topic_pool
                     + r.integers(0, cfg.topic_pool, size=(n, cfg.max_len)))
        tok_common = r.choice(cfg.n_common, size=(n, cfg.max_len), p=common_p)
        tok = np.where(u < cfg.p_label, tok_own,
                       np.where(u < cfg.p_label + cfg.p_topic, tok_topic, tok_common))
        words = names[tok]
        texts = [" ".join(words[i, : length[i]]) for i in range(n)]
        return texts, lab

    titles_tok = names[np.concatenate([own, own_topic], axis=1)]
    titles = [" ".join(row) for row in titles_tok]
    q_texts, q_lab = queries(cfg.n_train - L, rng)
    log(f"synth: {len(titles)} titles + {len(q_texts)} queries")
    trn = titles + q_texts
    trn_lab = np.concatenate([np.arange(L), q_lab])
    tst, tst_lab = queries(cfg.n_test, np.random.default_rng([cfg.seed, 1]))

    def onehot(lab: np.ndarray) -> smat.csr_matrix:
        n = lab.shape[0]
        return smat.csr_matrix((np.ones(n, np.float32), lab.astype(np.int32),
                                np.arange(n + 1, dtype=np.int64)), shape=(n, L))

    return trn, onehot(trn_lab), tst, onehot(tst_lab)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    cfg = SynthConfig.scaled(a.scale, a.seed)
    trn, Y, tst, Yt = generate(cfg, log=print)
    counts = np.asarray(Y.sum(axis=0)).ravel()
    print(f"train {len(trn)} test {len(tst)}; label counts max {counts.max():.0f}, "
          f"median {np.median(counts):.0f}; mean words "
          f"{np.mean([t.count(' ') + 1 for t in trn]):.2f}")


if __name__ == "__main__":
    main()
